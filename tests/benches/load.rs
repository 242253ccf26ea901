//! `cargo xtask bench`: the kernel program and the exporter under churn,
//! against the real kernel.
//!
//! Two client threads open and close TCP connections to test hosts in a
//! network namespace as fast as they can, in [`ROUNDS`] rounds of at most
//! `CHURN_MAX` connections or `CHURN_SECONDS` each, while the exporter
//! counts them and an empty program on the same tracepoint gives the
//! kernel's floor. Reports connections/s, kernel events/s the exporter
//! read, events lost, the program's and the floor's nanoseconds per run
//! (`kernel.bpf_stats_enabled`) in each round (the targets take the
//! median round: a round's figures move by a fifth with what else the VM's
//! host does), the exporter's CPU time, and whether the counts were still
//! exact afterwards. (Memory at scale: `scale.rs`.)
//!
//! Needs root. Prints a Markdown table for BENCHMARKS.md and `TARGET` lines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, temp_dir},
    fixtures::{BR_V6, DE_V4, JP_V4, write_database},
    load::{
        BPF_STATS, HOSTS, churn_round, cpu_seconds, events, program_stats, report_target,
        require_root, server, settle, target, value,
    },
    netns::TestNet,
};
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

const CHURN_SECONDS: u64 = 10;
const CHURN_MAX: u64 = 200_000;
const CHURN_THREADS: usize = 2;
/// Rounds of churn; the kernel targets take the median one.
const ROUNDS: usize = 3;

/// The exporter's program.
const PROGRAM: &str = "inet_sock_set_state";
/// The empty program on the same tracepoint: the floor.
const EMPTY: &str = "inet_sock_set_state_empty";

/// One round's kernel figures: the program's and the floor's nanoseconds
/// per run.
#[derive(Clone, Copy, Debug)]
struct Round {
    per_run: f64,
    floor: f64,
    runs: f64,
}

impl Round {
    fn ratio(self) -> f64 {
        self.per_run / self.floor.max(f64::EPSILON)
    }
}

fn churn(net: &TestNet, exporter: &Exporter) -> Vec<(String, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let srv = server(net, &HOSTS, false, &stop, Duration::from_mins(3));
    let targets = HOSTS.map(target);
    for t in &targets {
        net.check_route(t.ip());
    }
    let before = settle(exporter);
    // The floor: an empty program on the same tracepoint, run by the
    // same events, in the same statistics.
    let empty = geoip_user::bench::EmptyProgram::attach().expect("attach the empty program");
    let stats_were = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    let cpu0 = cpu_seconds(exporter.pid());
    let started = Instant::now();
    let mut conns = 0;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let (time0, runs0) = program_stats(PROGRAM);
        let (floor_time0, floor_runs0) = program_stats(EMPTY);
        conns += churn_round(
            &targets,
            CHURN_THREADS,
            Duration::from_secs(CHURN_SECONDS),
            CHURN_MAX,
        );
        let (time1, runs1) = program_stats(PROGRAM);
        let (floor_time1, floor_runs1) = program_stats(EMPTY);
        rounds.push(Round {
            per_run: (time1 - time0) / (runs1 - runs0).max(1.0),
            floor: (floor_time1 - floor_time0) / (floor_runs1 - floor_runs0).max(1.0),
            runs: runs1 - runs0,
        });
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = std::fs::write(BPF_STATS, stats_were.trim());
    drop(empty);
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    let after = settle(exporter);
    let cpu = cpu_seconds(exporter.pid()) - cpu0;
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let conns_f = conns as f64;
    let read = events(&after) - events(&before);
    let lost = value(&after, "geoip_exporter_events_lost_total")
        - value(&before, "geoip_exporter_events_lost_total");
    let missed = value(&after, "geoip_exporter_events_missed_total")
        - value(&before, "geoip_exporter_events_missed_total");
    let (opened, open_now) = test_hosts_counts(&before, &after);
    let mut by_ratio = rounds.clone();
    by_ratio.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let median = by_ratio[by_ratio.len() / 2];
    let cpu_share = cpu / wall;
    let per_10k = cpu_share / (conns_f / wall / 10_000.0);
    let exact = (0.0..=missed).contains(&(conns_f - opened)) && open_now == 0.0;
    churn_targets(median, lost, conns_f / wall, per_10k);
    let each = |f: fn(&Round) -> String| rounds.iter().map(f).collect::<Vec<_>>().join(" / ");
    vec![
        (
            "connections opened and closed".into(),
            format!(
                "{conns} in {wall:.1} s ({:.0}/s), {ROUNDS} rounds",
                conns_f / wall
            ),
        ),
        (
            "kernel events read by the exporter".into(),
            format!("{read:.0} ({:.0}/s)", read / wall),
        ),
        (
            "events lost (ring buffer full) / program runs the kernel skipped (nested)".into(),
            format!("{lost:.0} / {missed:.0}"),
        ),
        (
            "kernel program cost (kernel.bpf_stats_enabled), each round".into(),
            each(|r| format!("{:.0} ns per run ({:.0} runs)", r.per_run, r.runs)),
        ),
        (
            "empty program on the same tracepoint (the floor), each round".into(),
            each(|r| format!("{:.0} ns per run", r.floor)),
        ),
        (
            "program ÷ floor, each round (the median is the target's)".into(),
            each(|r| format!("{:.2}x", r.ratio())),
        ),
        (
            "exporter CPU time".into(),
            format!(
                "{cpu:.2} s: {:.2}% of one core, {:.2}% per 10,000 connections/s ({:.2} s per million events)",
                cpu_share * 100.0,
                per_10k * 100.0,
                cpu / read * 1e6
            ),
        ),
        (
            "exact afterwards".into(),
            format!(
                "{} (opened_total rose by {opened:.0} for {conns} connections, at most one short per skipped run; {open_now:.0} still counted open)",
                if exact { "yes" } else { "NO" }
            ),
        ),
    ]
}

/// For the test hosts' countries: how many connections were opened
/// between the two scrapes, and how many are counted open after.
fn test_hosts_counts(before: &Samples, after: &Samples) -> (f64, f64) {
    let opened: f64 = ["DE", "JP", "BR"]
        .iter()
        .map(|c| {
            let k = format!("geoip_connections_opened_total{}", cd(c, "outbound"));
            value(after, &k) - value(before, &k)
        })
        .sum();
    let open_now: f64 = ["DE", "JP", "BR"]
        .iter()
        .map(|c| value(after, &format!("geoip_connections{}", cd(c, "outbound"))))
        .sum();
    (opened, open_now)
}

/// The target-vs-measured lines of the churn; the kernel's from the
/// median round.
fn churn_targets(median: Round, lost: f64, rate: f64, per_10k: f64) {
    let Round { per_run, floor, .. } = median;
    report_target(
        "kernel: ns per program run (median round)",
        "<= 60 ns",
        &format!(
            "{per_run:.0} ns ({:.0} ns above the floor)",
            per_run - floor
        ),
        per_run <= 60.0,
    );
    report_target(
        "kernel: program run vs empty program (floor), median round",
        "<= 2x floor",
        &format!("{:.2}x ({floor:.0} ns floor)", median.ratio()),
        per_run <= 2.0 * floor,
    );
    report_target(
        "churn: events lost at the machine's top rate, default ring",
        "0",
        &format!("{lost:.0} at {rate:.0} connections/s"),
        lost == 0.0,
    );
    report_target(
        "churn: exporter CPU per 10,000 connections/s",
        "<= 2% of one core",
        &format!("{:.2}%", per_10k * 100.0),
        per_10k <= 0.02,
    );
}

fn main() {
    require_root();
    let dir = temp_dir("bench");
    let db = dir.join("bench.mmdb");
    write_database(&db);
    let net = TestNet::create("bench", &[DE_V4, JP_V4, BR_V6]);
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let rows = churn(&net, &exporter);
    println!("| measure | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
