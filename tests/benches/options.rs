//! `cargo xtask bench`: what each opt-in option costs, against the real
//! kernel. For each set of options an exporter is started alone and
//! measured the same way:
//! - churn: two client threads open and close connections to test hosts
//!   for [`CHURN`], while an empty program on the same tracepoint gives
//!   the floor: the kernel program's nanoseconds per run (and ÷ floor),
//!   the exporter's CPU per 10,000 connections a second, and the
//!   ring-buffer records per connection;
//! - memory: [`HELD`] connections held by child processes, the exporter's
//!   RSS per tracked connection.
//!
//! The ASN and city databases are the tests' generated ones (a few
//! networks): the lookup in a full-size database is not in these figures.
//! Needs root. Prints a Markdown table for BENCHMARKS.md.

use std::time::{Duration, Instant};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, parse, temp_dir},
    fixtures::{write_asn_labels_database, write_city_database, write_database},
    hold::{Holders, run_if_holder},
    load::{
        BPF_STATS, HOSTS, churn_round, cpu_seconds, events, program_stats, require_root, rss_bytes,
        server, settle, target, value,
    },
    netns::TestNet,
};
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

const CHURN: Duration = Duration::from_secs(5);
const CHURN_MAX: u64 = 100_000;
const HELD: usize = 20_000;
const FIRST_PORT: u16 = 23_000;
const TRACKED: &str = "geoip_exporter_connections_tracked";

/// The exporter's program and the empty one (the floor).
const PROGRAM: &str = "inet_sock_set_state";
const EMPTY: &str = "inet_sock_set_state_empty";

/// One option set's figures.
struct Row {
    options: &'static str,
    per_run: f64,
    floor: f64,
    cpu_per_10k: f64,
    records_per_conn: f64,
    bytes_per_conn: f64,
}

fn measure(
    net: &TestNet,
    holders: &mut Holders,
    dir: &std::path::Path,
    args: &[String],
    options: &'static str,
) -> Row {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exporter = Exporter::start(dir, &args);
    let before = settle(&exporter);

    // Churn, with the floor beside it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let srv = server(net, &HOSTS, false, &stop, Duration::from_mins(1));
    let targets = HOSTS.map(target);
    let empty = geoip_user::bench::EmptyProgram::attach().expect("attach the empty program");
    let stats_were = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    let (t0, r0) = program_stats(PROGRAM);
    let (f0, fr0) = program_stats(EMPTY);
    let cpu0 = cpu_seconds(exporter.pid());
    let started = Instant::now();
    let conns = churn_round(&targets, 2, CHURN, CHURN_MAX);
    let wall = started.elapsed().as_secs_f64();
    let (t1, r1) = program_stats(PROGRAM);
    let (f1, fr1) = program_stats(EMPTY);
    let _ = std::fs::write(BPF_STATS, stats_were.trim());
    drop(empty);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = srv.join();
    let after = settle(&exporter);
    let cpu = cpu_seconds(exporter.pid()) - cpu0;
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let conns = conns as f64;
    let rate = conns / wall;

    // Memory.
    let rss0 = rss_bytes(exporter.pid());
    let base = value(&after, TRACKED);
    holders.resize(HELD).expect("hold the connections");
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let want = base + HELD as f64;
    let deadline = Instant::now() + Duration::from_mins(1);
    while value(&parse(&exporter.scrape()), TRACKED) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let held = settle(&exporter);
    let rss1 = rss_bytes(exporter.pid());
    let tracked = value(&held, TRACKED) - base;
    holders.resize(0).expect("let the connections go");
    drop(exporter);
    Row {
        options,
        per_run: (t1 - t0) / (r1 - r0).max(1.0),
        floor: (f1 - f0) / (fr1 - fr0).max(1.0),
        cpu_per_10k: cpu / wall / (rate / 10_000.0),
        records_per_conn: (events(&after) - events(&before)) / conns.max(1.0),
        bytes_per_conn: (rss1 - rss0) / tracked.max(1.0),
    }
}

fn main() {
    run_if_holder();
    require_root();
    let dir = temp_dir("options");
    let (country, asn, city) = (
        dir.join("country.mmdb"),
        dir.join("asn.mmdb"),
        dir.join("city.mmdb"),
    );
    write_database(&country);
    write_asn_labels_database(&asn);
    write_city_database(&city);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let net = TestNet::create("options", &HOSTS);
    let mut holders = Holders::new(&net, &HOSTS, FIRST_PORT).expect("holders");
    let sets: [(&'static str, &[&str]); 6] = [
        ("none", &[]),
        ("--labels service", &["--labels=service"]),
        ("--metrics.duration", &["--metrics.duration"]),
        ("--metrics.bytes", &["--metrics.bytes"]),
        ("--labels asn,city", &["--labels=asn,city"]),
        (
            "all of them",
            &[
                "--labels=service,asn,city",
                "--metrics.duration",
                "--metrics.bytes",
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (options, flags) in sets {
        let mut args = vec!["--geoip.database".to_owned(), path(&country)];
        if flags.iter().any(|f| f.contains("asn")) {
            args.extend(["--geoip.database".to_owned(), path(&asn)]);
            args.extend(["--geoip.database".to_owned(), path(&city)]);
        }
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let row = measure(&net, &mut holders, &dir, &args, options);
        eprintln!(
            "options bench: {options}: {:.0} ns per run, {:.2}% per 10k/s, {:.0} bytes per connection",
            row.per_run,
            row.cpu_per_10k * 100.0,
            row.bytes_per_conn
        );
        rows.push(row);
    }
    drop(holders);
    println!(
        "| options | kernel program, ns per run (floor; ratio) | exporter CPU per 10,000 connections/s | ring-buffer records per connection | memory per tracked connection |\n|---|---|---|---|---|"
    );
    for r in &rows {
        println!(
            "| {} | {:.0} ({:.0}; {:.2}x) | {:.2}% | {:.2} | {:.0} bytes |",
            r.options,
            r.per_run,
            r.floor,
            r.per_run / r.floor.max(f64::EPSILON),
            r.cpu_per_10k * 100.0,
            r.records_per_conn,
            r.bytes_per_conn
        );
    }
    println!(
        "\nEach set: one exporter alone, {} s of churn (two client threads) with an empty program beside it for the floor, then {HELD} connections held by child processes. The ASN and city databases are the tests' generated ones.",
        CHURN.as_secs()
    );
}
