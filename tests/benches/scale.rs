//! `cargo bench -p geoip-tests --bench scale`: the exporter at 100,000
//! concurrent established connections, against the real kernel.
//!
//! 1. An exporter starts with no test connections. Its ring buffer is
//!    warmed first (short connections until its 4 MiB have all been
//!    written and read, as on any busy host), so its pages are resident
//!    before the baseline. Baseline: RSS, tracked connections, and
//!    `/metrics` latency with [`SCRAPERS`] concurrent scrapers, each
//!    sending [`REQUESTS_EACH`] requests over one keep-alive HTTP/1.1
//!    connection: in rounds [`ROUND`] apart, all scrapers at the same
//!    instant (the target's measure: ten scrapes at once), and back to
//!    back (a saturation test on two cores shared with the scrapers),
//!    with the exporter's CPU time per request.
//! 2. [`HELD`] connections are opened to DE, JP and BR test hosts in a
//!    network namespace and held by child processes (the open-files limit
//!    is 20,000 per process; see `geoip_tests::hold`). Measured: RSS growth
//!    per tracked connection, the same latency again, and whether the
//!    exporter tracks exactly the connections held.
//! 3. A second exporter starts while they exist: the time from spawning
//!    it until it answers, its `geoip_exporter_snapshot_duration_seconds`
//!    from its first scrape, and whether it tracks them all; then a third
//!    with `--labels service`, whose snapshot also finds the process of
//!    each outbound connection in `/proc`.
//!
//! Needs root. Prints a Markdown table for BENCHMARKS.md, then one
//! tab-separated `TARGET` line per target: what, target, measured,
//! met or missed.

use std::{
    io::Read as _,
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, parse, temp_dir},
    fixtures::write_database,
    hold::{Holders, run_if_holder},
    load::{
        HOSTS, cpu_seconds, report_target, require_root, rss_bytes, server, settle, target, value,
    },
    netns::TestNet,
    scrape::{self, Latencies, Pace},
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

/// Connections held at the top.
const HELD: usize = 100_000;
/// Concurrent scrapers, and requests each sends.
const SCRAPERS: usize = 10;
const REQUESTS_EACH: usize = 200;
const ROUND: Duration = Duration::from_millis(50);
/// Short connections that warm the ring buffer (each is four records of
/// 64 bytes: open and close of both ends; 16,384 fill 4 MiB), and the
/// longest the warm-up takes.
const WARM_CONNECTIONS: usize = 25_000;
const WARM_WITHIN: Duration = Duration::from_secs(15);
/// The holders' ports in the namespace (one per child) start here.
const FIRST_PORT: u16 = 20_000;
/// How long the exporter may take to count every held connection.
const COUNT_WITHIN: Duration = Duration::from_mins(1);

/// The targets.
const BYTES_PER_CONNECTION_TARGET: f64 = 64.0;
const P99_TARGET: Duration = Duration::from_millis(2);
const SNAPSHOT_TARGET_SECONDS: f64 = 0.5;

const TRACKED: &str = "geoip_exporter_connections_tracked";

/// Open and close short connections to the test hosts (the server closes
/// first) until `count` are made or `within` has passed.
fn warm_ring(net: &TestNet, count: usize, within: Duration) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let srv = server(net, &HOSTS, false, &stop, within + Duration::from_secs(5));
    let targets = HOSTS.map(target);
    let started = Instant::now();
    let mut made = 0;
    while made < count && started.elapsed() < within {
        // A blocking connect either establishes or never does.
        if let Ok(mut s) = TcpStream::connect(targets[made % targets.len()]) {
            made += 1;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 1]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    made
}

/// The calling thread's network namespace's TCP sockets: IPv4 and IPv6
/// in use, and in `TIME_WAIT` (`/proc/net/sockstat` and `sockstat6`).
fn tcp_sockets() -> u64 {
    let field = |file: &str, line: &str, name: &str| -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
        let Some(fields) = text.lines().find_map(|l| l.strip_prefix(line)) else {
            return 0;
        };
        let words: Vec<&str> = fields.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0)
    };
    field("sockstat", "TCP: ", "inuse")
        + field("sockstat", "TCP: ", "tw")
        + field("sockstat6", "TCP6: ", "inuse")
}

/// Outbound connections now counted for the test hosts' countries.
fn test_hosts_open(s: &Samples) -> f64 {
    ["DE", "JP", "BR"]
        .iter()
        .map(|c| value(s, &format!("geoip_connections{}", cd(c, "outbound"))))
        .sum()
}

/// The outbound connections to the test hosts counted under a process
/// name (with `--labels service`), not `unknown`.
fn holder_named(s: &Samples) -> f64 {
    s.iter()
        .filter(|(series, _)| {
            series.starts_with("geoip_connections{")
                && series.contains("direction=\"outbound\"")
                && !series.contains("service=\"unknown\"")
                && ["DE", "JP", "BR"]
                    .iter()
                    .any(|c| series.contains(&format!("country=\"{c}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Scrape until the exporter tracks `want` connections (or `within` has
/// passed); the last samples either way.
fn wait_tracked(exporter: &Exporter, want: f64, within: Duration) -> Samples {
    let deadline = Instant::now() + within;
    loop {
        let s = parse(&exporter.scrape());
        if value(&s, TRACKED) >= want || Instant::now() > deadline {
            // One more settle: nothing still arriving.
            return settle(exporter);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a sample's value is exactly `count`.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn is(sample: f64, count: usize) -> bool {
    (sample - count as f64).abs() < 0.5
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency_row(l: &Latencies) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests, {} body bytes)",
        ms(l.quantile(0.5)),
        ms(l.quantile(0.99)),
        ms(l.max()),
        l.count(),
        l.body_bytes
    )
}

/// `/metrics` latency in rounds and back to back, and the exporter's CPU
/// time per request back to back.
struct Scrapes {
    rounds: Latencies,
    back_to_back: Latencies,
    cpu_per_request: Duration,
}

fn scrapes(exporter: &Exporter) -> Scrapes {
    let measure = |pace| {
        scrape::measure(exporter.addr, "/metrics", SCRAPERS, REQUESTS_EACH, pace)
            .expect("concurrent scrapes")
    };
    let rounds = measure(Pace::Rounds(ROUND));
    let cpu0 = cpu_seconds(exporter.pid());
    let back_to_back = measure(Pace::BackToBack);
    let cpu = cpu_seconds(exporter.pid()) - cpu0;
    #[expect(clippy::cast_precision_loss, reason = "a few thousand requests")]
    let cpu_per_request = Duration::from_secs_f64(cpu / back_to_back.count().max(1) as f64);
    Scrapes {
        rounds,
        back_to_back,
        cpu_per_request,
    }
}

#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn main() {
    run_if_holder();
    require_root();
    let dir = temp_dir("scale");
    let db = dir.join("scale.mmdb");
    write_database(&db);
    let db_arg = db.to_str().expect("temporary path is UTF-8").to_owned();
    let net = TestNet::create("scale", &HOSTS);
    // The warm-up's server closes first: without this its 25,000 sockets
    // would wait in TIME_WAIT in the kernel's socket hash, which every
    // snapshot walks, for a minute.
    net.run_in(|| std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0"))
        .expect("no TIME_WAIT sockets in the test namespace");
    let mut holders = Holders::new(&net, &HOSTS, FIRST_PORT).expect("holders");
    let exporter = Exporter::start(&dir, &["--geoip.database", &db_arg]);

    let warmed = warm_ring(&net, WARM_CONNECTIONS, WARM_WITHIN);
    let base = settle(&exporter);
    let rss0 = rss_bytes(exporter.pid());
    let idle = scrapes(&exporter);

    let started = Instant::now();
    holders.resize(HELD).expect("hold the connections");
    let connect_seconds = started.elapsed().as_secs_f64();
    let full = wait_tracked(&exporter, value(&base, TRACKED) + HELD as f64, COUNT_WITHIN);
    let rss1 = rss_bytes(exporter.pid());
    let loaded = scrapes(&exporter);
    let tracked = value(&full, TRACKED) - value(&base, TRACKED);
    let counted = test_hosts_open(&full) - test_hosts_open(&base);
    let exact = is(tracked, HELD) && is(counted, HELD);
    let per_connection = (rss1 - rss0) / tracked.max(1.0);

    let in_hash = tcp_sockets() + net.run_in(tcp_sockets);
    let spawned = Instant::now();
    let second = Exporter::start(&dir, &["--geoip.database", &db_arg]);
    let answered = spawned.elapsed().as_secs_f64();
    let first = parse(&second.scrape());
    let second_rss = rss_bytes(second.pid());
    drop(second);
    let snapshot = value(&first, "geoip_exporter_snapshot_duration_seconds");
    // The second exporter sees the machine's other connections too, as
    // the first one did at its baseline.
    let second_tracked = value(&first, TRACKED) - value(&base, TRACKED);
    let second_counted = test_hosts_open(&first) - test_hosts_open(&base);
    let second_exact = is(second_tracked, HELD) && is(second_counted, HELD);
    // A third with --labels service: its snapshot also names each
    // outbound connection after the process holding it, from /proc.
    let third = Exporter::start(&dir, &["--geoip.database", &db_arg, "--labels=service"]);
    let named = parse(&third.scrape());
    drop(third);
    let named_snapshot = value(&named, "geoip_exporter_snapshot_duration_seconds");
    let named_held = holder_named(&named);

    let processes = holders.processes();
    drop(holders);
    let after = settle(&exporter);
    let left = value(&after, TRACKED) - value(&base, TRACKED);
    let lost = value(&after, "geoip_exporter_events_lost_total")
        - value(&base, "geoip_exporter_events_lost_total");
    let missed = value(&after, "geoip_exporter_events_missed_total")
        - value(&base, "geoip_exporter_events_missed_total");

    let mib = |b: f64| b / 1_048_576.0;
    let rows = [
        (
            "ring buffer warm-up (before the baseline)".to_owned(),
            format!("{warmed} short connections"),
        ),
        (
            "connections held".to_owned(),
            format!(
                "{HELD} to DE, JP and BR test hosts, by {processes} processes, opened in {connect_seconds:.1} s"
            ),
        ),
        (
            "tracked by the exporter (started before them)".to_owned(),
            format!(
                "{tracked:.0}; DE+JP+BR outbound gauges {counted:.0}: {}",
                if exact { "exact" } else { "NOT exact" }
            ),
        ),
        (
            "exporter RSS before / after".to_owned(),
            format!("{:.1} MiB / {:.1} MiB", mib(rss0), mib(rss1)),
        ),
        (
            "RSS per tracked connection".to_owned(),
            format!("{per_connection:.0} bytes"),
        ),
        (
            format!(
                "/metrics latency, {SCRAPERS} scrapers at once every {} ms, {REQUESTS_EACH} rounds, keep-alive HTTP/1.1: at ~0 tracked",
                ROUND.as_millis()
            ),
            latency_row(&idle.rounds),
        ),
        (
            format!("the same at {HELD} tracked"),
            latency_row(&loaded.rounds),
        ),
        (
            format!(
                "/metrics latency, {SCRAPERS} scrapers back to back, {REQUESTS_EACH} requests each (saturation): at ~0 / {HELD} tracked"
            ),
            format!(
                "{} / {}",
                latency_row(&idle.back_to_back),
                latency_row(&loaded.back_to_back)
            ),
        ),
        (
            "exporter CPU per request (back to back): at ~0 / 100000 tracked".to_owned(),
            format!(
                "{:.0} µs / {:.0} µs",
                idle.cpu_per_request.as_secs_f64() * 1e6,
                loaded.cpu_per_request.as_secs_f64() * 1e6
            ),
        ),
        (
            format!("second exporter started while {HELD} exist: spawn until it answers"),
            format!("{answered:.2} s (polled every 50 ms)"),
        ),
        (
            "its start-up snapshot (geoip_exporter_snapshot_duration_seconds, first scrape)"
                .to_owned(),
            format!(
                "{snapshot:.3} s (both namespaces: {} connected sockets; the kernel's TCP hash, which each namespace's dump walks, held {} sockets, TIME_WAIT included)",
                2 * HELD,
                in_hash
            ),
        ),
        (
            "its first scrape".to_owned(),
            format!(
                "tracked {second_tracked:.0}; DE+JP+BR outbound gauges {second_counted:.0}: {}; RSS {:.1} MiB",
                if second_exact {
                    "all of them"
                } else {
                    "NOT all of them"
                },
                mib(second_rss)
            ),
        ),
        (
            "a third one with --labels service: its start-up snapshot, which also names each outbound connection's process from /proc".to_owned(),
            format!(
                "{named_snapshot:.3} s; test-host connections named after their holder process: {named_held:.0} of {HELD}"
            ),
        ),
        (
            "after the holders exit (first exporter)".to_owned(),
            format!(
                "{left:.0} still tracked; events lost {lost:.0} (ring full), runs missed {missed:.0}"
            ),
        ),
    ];
    println!("| measure | result |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    println!();
    let p99 = loaded.rounds.quantile(0.99);
    report_target(
        "memory per tracked connection beyond the database",
        &format!("≤ {BYTES_PER_CONNECTION_TARGET:.0} bytes"),
        &format!("{per_connection:.0} bytes"),
        exact && per_connection <= BYTES_PER_CONNECTION_TARGET,
    );
    report_target(
        &format!("/metrics p99 at {HELD} tracked connections, {SCRAPERS} scrapers at once"),
        &format!("≤ {:.0} ms", ms(P99_TARGET)),
        &format!(
            "{:.2} ms (at ~0 tracked: {:.2} ms)",
            ms(p99),
            ms(idle.rounds.quantile(0.99))
        ),
        exact && p99 <= P99_TARGET,
    );
    report_target(
        &format!("start-up snapshot of {HELD} existing connections"),
        &format!("≤ {SNAPSHOT_TARGET_SECONDS} s"),
        &format!("{snapshot:.3} s"),
        second_exact && snapshot <= SNAPSHOT_TARGET_SECONDS,
    );
    drop((exporter, net));
}
