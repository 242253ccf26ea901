//! `cargo bench -p geoip-tests --bench poller`: the exporter and the
//! polling design it replaces, side by side in one run, against the real
//! kernel.
//!
//! The peer is `tests/bench/poller.py`: every 10 s it lists all TCP
//! connections with psutil (as the original tool did with gopsutil) and
//! looks each remote address up with the maxminddb reader (a stand-in for
//! the original's web API, which cannot be reached here). It runs in a
//! virtual environment under `target/bench-venv` with pinned packages,
//! created on the first run.
//!
//! One exporter, started first with its defaults (so it reconciles every
//! 60 s), runs throughout. At [`STAGES`] connections held (to DE and JP
//! test hosts, by child processes: see `geoip_tests::hold`), a fresh
//! poller is started and both are measured over the same [`WINDOW`]:
//! - CPU seconds (user + system, `/proc/PID/stat`) per minute of each,
//!   and, on the exporter's side, its kernel program's run time (kernel
//!   run-time statistics, on for the run only), which no process is
//!   charged for;
//! - a churn of [`CHURN_COUNT`] short-lived connections to BR test hosts,
//!   lifetimes spread uniformly over 0.1–5 s: how many of them each
//!   counted as opened (the exporter: `geoip_connections_opened_total`
//!   for BR; the poller: its opened total for BR).
//!
//! Before the stages, the exporter's CPU time alone (no connections, no
//! poller) over [`IDLE_FOR`] gives its floor. The poller's first poll is at
//! the window's start: six polls fall inside it.
//!
//! The exporter reconciles (dumps every socket of every namespace) only
//! after the kernel lost or skipped events, and otherwise every
//! [`SCHEDULED_RECONCILE`] (its default `--reconcile.max-interval`): a
//! window holds a reconcile only if something was lost. The target counts
//! the exporter's window plus its share of the scheduled reconcile: the
//! CPU one costs at that scale, measured as what `geoip-exporter --check`
//! (attach, snapshot of every namespace, merge) costs more than at the
//! start with no test connections, times window / [`SCHEDULED_RECONCILE`].
//!
//! Needs root and python3. Prints a Markdown table for BENCHMARKS.md,
//! then one tab-separated `TARGET` line per target: what, target,
//! measured, met or missed.

use std::{
    io,
    net::TcpStream,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, parse, temp_dir},
    fixtures::{BR_V4, BR_V6, DE_V4, JP_V4, JP_V6, write_database},
    hold::{Holders, run_if_holder},
    load::{cpu_seconds, report_target, require_root, server, settle, target, value},
    netns::TestNet,
    peer::{self, Poller},
};
use geoip_user as _;
use maxminddb as _;
use serde as _;

/// Connections held in each stage.
const STAGES: [usize; 3] = [10_000, 50_000, 100_000];
/// The stage whose CPU ratio the target is about.
const TARGET_STAGE: usize = 50_000;
/// The measured window of each stage, and the poller's interval.
const WINDOW: Duration = Duration::from_mins(1);
const POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The poller's polls that begin inside the window: at 0, 10, ... 50 s.
const POLLS_IN_WINDOW: u64 = 6;
/// How long the exporter's idle floor is measured.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// The exporter's default `--reconcile.max-interval`, left as it is.
const SCHEDULED_RECONCILE: Duration = Duration::from_mins(15);
/// `--check` runs per measurement of a reconcile's cost (the least is
/// taken).
const CHECK_RUNS: usize = 3;
/// Held connections go to these (DE, JP)...
const HELD_HOSTS: [&str; 3] = [DE_V4, JP_V4, JP_V6];
/// ...and short-lived ones to these (BR): nothing else goes there.
const CHURN_HOSTS: [&str; 2] = [BR_V4, BR_V6];
/// Short-lived connections per stage, one every [`CHURN_SPACING`], with
/// lifetimes from [`LIFETIME_MIN`] to [`LIFETIME_MAX`]: all are closed
/// before the window ends.
const CHURN_COUNT: usize = 2_700;
const CHURN_SPACING: Duration = Duration::from_millis(20);
const LIFETIME_MIN: f64 = 0.1;
const LIFETIME_MAX: f64 = 5.0;
/// The holders' ports in the namespace (one per child) start here.
const FIRST_PORT: u16 = 21_000;
/// How long the exporter may take to count the held connections.
const COUNT_WITHIN: Duration = Duration::from_mins(1);

/// The targets.
const CPU_RATIO_TARGET: f64 = 50.0;

const TRACKED: &str = "geoip_exporter_connections_tracked";
const RECONCILES: &str = "geoip_exporter_reconciles_total{result=\"success\"}";

/// The kernel's run-time statistics of BPF programs, kept while this is
/// held (`BPF_ENABLE_STATS`: they stop when the descriptor closes, even
/// if the benchmark is killed; `kernel.bpf_stats_enabled` is untouched).
struct BpfStats {
    _enabled: OwnedFd,
}

impl BpfStats {
    fn enable() -> io::Result<Self> {
        /// `BPF_ENABLE_STATS` in `enum bpf_cmd`.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // `union bpf_attr` with `enable_stats.type` = BPF_STATS_RUN_TIME (0).
        let mut attr = [0u8; 128];
        // SAFETY: bpf(2) with a zeroed attribute buffer of the size given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                attr.len(),
            )
        };
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just gave us.
        let enabled = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { _enabled: enabled })
    }

    /// Run time (seconds) and runs of the newest program named
    /// `inet_sock_set_state` (the exporter's), from bpftool.
    fn exporter_program() -> (f64, f64) {
        let out = std::process::Command::new("bpftool")
            .args(["--json", "prog", "show", "name", "inet_sock_set_state"])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        let mut programs = Vec::new();
        for v in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<serde_json::Value>()
        {
            match v {
                Ok(serde_json::Value::Array(a)) => programs.extend(a),
                Ok(one) => programs.push(one),
                Err(_) => break,
            }
        }
        programs
            .iter()
            .max_by_key(|p| p["id"].as_u64().unwrap_or(0))
            .map_or((0.0, 0.0), |p| {
                (
                    p["run_time_ns"].as_f64().unwrap_or(0.0) / 1e9,
                    p["run_cnt"].as_f64().unwrap_or(0.0),
                )
            })
    }
}

/// The `i`th short-lived connection's lifetime: a golden-ratio sequence,
/// evenly spread over [`LIFETIME_MIN`]..[`LIFETIME_MAX`] in any stretch.
#[expect(clippy::cast_precision_loss, reason = "i is at most a few thousand")]
fn lifetime(i: usize) -> Duration {
    let spread = (i as f64 * 0.618_033_988_749_895).fract();
    Duration::from_secs_f64(LIFETIME_MIN + (LIFETIME_MAX - LIFETIME_MIN) * spread)
}

/// What a churn made: connections established, connect failures.
struct Churned {
    made: usize,
    failed: usize,
}

/// Open `count` connections to the churn hosts, one every
/// [`CHURN_SPACING`] (none after `open_until`), each closed after its
/// [`lifetime`].
fn churn(count: usize, open_until: Instant) -> JoinHandle<Churned> {
    let targets = CHURN_HOSTS.map(target);
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut open: Vec<(Instant, TcpStream)> = Vec::new();
        let (mut made, mut failed, mut next) = (0, 0, 0);
        let next_open = |i: usize| start + CHURN_SPACING * u32::try_from(i).unwrap_or(u32::MAX);
        loop {
            let now = Instant::now();
            // Dropping a stream closes it.
            open.retain(|(due, _)| *due > now);
            let opening = next < count && now < open_until;
            if opening && now >= next_open(next) {
                match TcpStream::connect_timeout(
                    &targets[next % targets.len()],
                    Duration::from_secs(5),
                ) {
                    Ok(s) => {
                        made += 1;
                        open.push((Instant::now() + lifetime(next), s));
                    }
                    Err(_) => failed += 1,
                }
                next += 1;
                continue;
            }
            if !opening && open.is_empty() {
                return Churned { made, failed };
            }
            let mut wake = open.iter().map(|(due, _)| *due).min();
            if opening {
                wake = Some(wake.map_or(next_open(next), |w| w.min(next_open(next))));
            }
            let nap = wake.map_or(Duration::from_millis(5), |w| {
                w.saturating_duration_since(now)
            });
            std::thread::sleep(nap.min(Duration::from_millis(50)));
        }
    })
}

/// CPU seconds (user + system) of `geoip-exporter --check` on `db`: load
/// and attach, a snapshot of every namespace merged into an empty table
/// (and the check's other items, whose cost is the same with no test
/// connections, so the difference leaves them out); the least of
/// [`CHECK_RUNS`] runs.
fn check_cpu(db: &Path) -> f64 {
    (0..CHECK_RUNS)
        .map(|_| {
            #[expect(
                clippy::zombie_processes,
                reason = "reaped by wait4 below, which also gives its resource usage"
            )]
            let child = std::process::Command::new(geoip_tests::exporter::bin())
                .args(["--check", "--web.listen-address", "127.0.0.1:0"])
                .arg("--geoip.database")
                .arg(db)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start geoip-exporter --check");
            let pid = i32::try_from(child.id()).expect("pid");
            let mut status = 0;
            // SAFETY: rusage is plain data, filled by wait4.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 on our own child, with valid out-pointers; the
            // child is reaped here (std's handle is never waited on).
            let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
            assert_eq!(reaped, pid, "wait4 on --check");
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "geoip-exporter --check failed ({status})"
            );
            #[expect(clippy::cast_precision_loss, reason = "microseconds of a short run")]
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            seconds(usage.ru_utime) + seconds(usage.ru_stime)
        })
        .fold(f64::INFINITY, f64::min)
}

fn opened(s: &Samples, country: &str) -> f64 {
    value(
        s,
        &format!("geoip_connections_opened_total{}", cd(country, "outbound")),
    )
}

fn open_now(s: &Samples, countries: &[&str]) -> f64 {
    countries
        .iter()
        .map(|c| value(s, &format!("geoip_connections{}", cd(c, "outbound"))))
        .sum()
}

/// A JSON object's number at `key`, 0 when absent.
fn json_count(v: &serde_json::Value, object: &str, key: &str) -> f64 {
    v[object][key].as_f64().unwrap_or(0.0)
}

/// The poller's per-poll figures `key` for the polls that began inside
/// the window.
fn poll_series(status: &serde_json::Value, key: &str) -> Vec<f64> {
    status[key]
        .as_array()
        .map(|a| {
            a.iter()
                .take(usize::try_from(POLLS_IN_WINDOW).unwrap_or(usize::MAX))
                .filter_map(serde_json::Value::as_f64)
                .collect()
        })
        .unwrap_or_default()
}

#[expect(clippy::cast_precision_loss, reason = "a handful of values")]
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// One stage's measurements.
struct Stage {
    held: usize,
    exporter_tracked: f64,
    poller_seen: f64,
    window: f64,
    exporter_cpu: f64,
    program: f64,
    poller_cpu: f64,
    polls: u64,
    /// Seconds per poll inside the window: wall clock (mean, max), CPU (mean).
    poll_wall: (f64, f64),
    poll_cpu: f64,
    reconciles: f64,
    snapshot: f64,
    /// CPU seconds of one reconcile at this scale (see [`check_cpu`]).
    reconcile_cpu: f64,
    churned: Churned,
    exporter_counted: f64,
    poller_counted: f64,
}

impl Stage {
    fn per_minute(&self, cpu: f64) -> f64 {
        cpu / self.window * 60.0
    }

    /// The poller's CPU over the exporter's, its kernel program included.
    fn ratio(&self) -> f64 {
        self.poller_cpu / (self.exporter_cpu + self.program).max(f64::EPSILON)
    }

    /// The exporter's share, in the window, of the reconcile it runs every
    /// [`SCHEDULED_RECONCILE`].
    fn scheduled_share(&self) -> f64 {
        self.reconcile_cpu * self.window / SCHEDULED_RECONCILE.as_secs_f64()
    }

    /// [`Self::ratio`] with the exporter's [`Self::scheduled_share`] added.
    fn ratio_with_share(&self) -> f64 {
        self.poller_cpu
            / (self.exporter_cpu + self.program + self.scheduled_share()).max(f64::EPSILON)
    }
}

/// What every stage shares.
struct Bench<'a> {
    net: &'a TestNet,
    exporter: &'a Exporter,
    base: Samples,
    /// [`check_cpu`] with no test connections.
    check_idle: f64,
    python: PathBuf,
    db: PathBuf,
    dir: PathBuf,
}

impl Bench<'_> {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn stage(&self, holders: &mut Holders, held: usize) -> Stage {
        holders.resize(held).expect("hold the connections");
        let want = value(&self.base, TRACKED) + held as f64;
        let deadline = Instant::now() + COUNT_WITHIN;
        while value(&parse(&self.exporter.scrape()), TRACKED) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let counted = settle(self.exporter);
        let exporter_tracked = value(&counted, TRACKED) - value(&self.base, TRACKED);

        let stop = Arc::new(AtomicBool::new(false));
        let srv = server(self.net, &CHURN_HOSTS, true, &stop, WINDOW * 3);
        let status = self.dir.join(format!("poller-{held}.json"));
        let mut poller = Poller::start(&self.python, &self.db, &status, POLL_INTERVAL)
            .expect("start the poller");

        let s0 = parse(&self.exporter.scrape());
        let (e0, p0) = (cpu_seconds(self.exporter.pid()), cpu_seconds(poller.pid()));
        let (k0, _) = BpfStats::exporter_program();
        let t0 = Instant::now();
        poller.go().expect("start the poller's polls");
        let churning = churn(
            CHURN_COUNT,
            t0 + WINDOW.saturating_sub(Duration::from_secs(6)),
        );
        std::thread::sleep(WINDOW.saturating_sub(t0.elapsed()));
        let (e1, p1) = (cpu_seconds(self.exporter.pid()), cpu_seconds(poller.pid()));
        let (k1, _) = BpfStats::exporter_program();
        let window = t0.elapsed().as_secs_f64();
        // A poll that began inside the window counts, whenever it ends
        // (its CPU time inside the window is in the figure already).
        let last_status = match poller.wait_polls(POLLS_IN_WINDOW, POLL_INTERVAL * 2) {
            Ok(status) => status,
            Err(err) => {
                eprintln!("poller bench: {err}; using its last status");
                poller
                    .status()
                    .expect("the poller's status")
                    .expect("the poller polled")
            }
        };
        let churned = churning.join().expect("the churn thread");
        let s1 = parse(&self.exporter.scrape());
        drop(poller);
        stop.store(true, Ordering::Relaxed);
        let _ = srv.join();
        let reconcile_cpu = (check_cpu(&self.db) - self.check_idle).max(0.0);

        Stage {
            held,
            exporter_tracked,
            poller_seen: json_count(&last_status, "counts", "DE")
                + json_count(&last_status, "counts", "JP"),
            window,
            exporter_cpu: e1 - e0,
            program: k1 - k0,
            poller_cpu: p1 - p0,
            polls: last_status["polls"].as_u64().unwrap_or(0),
            poll_wall: (
                mean(&poll_series(&last_status, "poll_seconds")),
                poll_series(&last_status, "poll_seconds")
                    .into_iter()
                    .fold(0.0, f64::max),
            ),
            poll_cpu: mean(&poll_series(&last_status, "poll_cpu_seconds")),
            reconciles: value(&s1, RECONCILES) - value(&s0, RECONCILES),
            snapshot: value(&s1, "geoip_exporter_snapshot_duration_seconds"),
            reconcile_cpu,
            churned,
            exporter_counted: opened(&s1, "BR") - opened(&s0, "BR"),
            poller_counted: json_count(&last_status, "opened_by_country", "BR"),
        }
    }
}

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv")
}

fn percent(part: f64, whole: f64) -> f64 {
    part / whole.max(1.0) * 100.0
}

fn main() {
    run_if_holder();
    require_root();
    let python = peer::venv(&venv_dir()).expect("the poller's Python environment");
    let _stats = BpfStats::enable().expect("kernel BPF run-time statistics (BPF_ENABLE_STATS)");
    let dir = temp_dir("poller");
    let db = dir.join("poller.mmdb");
    write_database(&db);
    let mut all_hosts = HELD_HOSTS.to_vec();
    all_hosts.extend(CHURN_HOSTS);
    let net = TestNet::create("poll", &all_hosts);
    for t in CHURN_HOSTS.map(target) {
        net.check_route(t.ip());
    }
    let mut holders = Holders::new(&net, &HELD_HOSTS, FIRST_PORT).expect("holders");
    let check_idle = check_cpu(&db);
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("temporary path is UTF-8"),
        ],
    );
    let base = settle(&exporter);
    let idle0 = cpu_seconds(exporter.pid());
    let idle_from = Instant::now();
    std::thread::sleep(IDLE_FOR);
    let idle = (cpu_seconds(exporter.pid()) - idle0) / idle_from.elapsed().as_secs_f64() * 60.0;
    let bench = Bench {
        net: &net,
        base,
        exporter: &exporter,
        check_idle,
        python,
        db,
        dir: dir.clone(),
    };
    let stages: Vec<Stage> = STAGES
        .iter()
        .map(|&held| {
            let s = bench.stage(&mut holders, held);
            eprintln!(
                "poller bench: {held} held: exporter {:.2} s, poller {:.2} s CPU in {:.0} s",
                s.exporter_cpu, s.poller_cpu, s.window
            );
            s
        })
        .collect();
    let still_open = open_now(&parse(&exporter.scrape()), &["BR"]) - open_now(&bench.base, &["BR"]);
    drop(holders);

    report(&stages, idle, still_open);
    drop(bench);
    drop((exporter, net));
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn print_table(stages: &[Stage]) {
    println!(
        "| connections held | tracked by the exporter / seen by the poller | exporter CPU s/min | its kernel program s/min | poller CPU s/min | poller ÷ exporter (with its program) | a full reconcile at this scale: CPU s; ratio with 1/15 of one a minute | poller: polls in the window, s per poll (wall mean / max, CPU mean) | exporter reconciles in the window (its last snapshot took) | short-lived made | counted by the exporter | counted by the poller |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in stages {
        let made = s.churned.made as f64;
        println!(
            "| {} | {:.0} / {:.0} | {:.3} | {:.4} | {:.2} | {:.0}× | {:.3} s; {:.0}× | {} ({:.2} / {:.2}, {:.2}) | {:.0} ({:.3} s) | {}{} | {:.0} ({:.1} %) | {:.0} ({:.1} %) |",
            s.held,
            s.exporter_tracked,
            s.poller_seen,
            s.per_minute(s.exporter_cpu),
            s.per_minute(s.program),
            s.per_minute(s.poller_cpu),
            s.ratio(),
            s.reconcile_cpu,
            s.ratio_with_share(),
            s.polls.min(POLLS_IN_WINDOW),
            s.poll_wall.0,
            s.poll_wall.1,
            s.poll_cpu,
            s.reconciles,
            s.snapshot,
            s.churned.made,
            if s.churned.failed > 0 {
                format!(" ({} connects failed)", s.churned.failed)
            } else {
                String::new()
            },
            s.exporter_counted,
            percent(s.exporter_counted, made),
            s.poller_counted,
            percent(s.poller_counted, made),
        );
    }
}

/// The Markdown table, a note on the method, and the `TARGET` lines.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn report(stages: &[Stage], idle: f64, still_open: f64) {
    print_table(stages);
    println!(
        "\nWindow: {:.0} s per stage, one exporter throughout with its defaults (a reconcile after lost or skipped events, and every {} min); a fresh poller per stage, polling every {} s from the window's start. A full reconcile's CPU is what `geoip-exporter --check` costs at that stage more than with no test connections (least of {CHECK_RUNS} runs). The exporter alone (no test connections, no poller) used {idle:.3} s of CPU per minute. Short-lived connections afterwards still counted open by the exporter: {still_open:.0}.\n",
        stages.first().map_or(0.0, |s| s.window),
        SCHEDULED_RECONCILE.as_secs() / 60,
        POLL_INTERVAL.as_secs()
    );
    let at_target = stages.iter().find(|s| s.held == TARGET_STAGE);
    report_target(
        &format!(
            "CPU, poller ÷ exporter, at {TARGET_STAGE} connections (a minute, plus the exporter's share of its reconcile every {} min)",
            SCHEDULED_RECONCILE.as_secs() / 60
        ),
        &format!("≥ {CPU_RATIO_TARGET:.0}×"),
        &at_target.map_or_else(
            || "not measured".to_owned(),
            |s| {
                format!(
                    "{:.0}× ({:.0}× for the minute alone, {:.0} reconciles in it; a full reconcile {:.3} s CPU)",
                    s.ratio_with_share(),
                    s.ratio(),
                    s.reconciles,
                    s.reconcile_cpu
                )
            },
        ),
        at_target.is_some_and(|s| s.ratio_with_share() >= CPU_RATIO_TARGET),
    );
    let made: f64 = stages.iter().map(|s| s.churned.made as f64).sum();
    let by_exporter: f64 = stages.iter().map(|s| s.exporter_counted).sum();
    let by_poller: f64 = stages.iter().map(|s| s.poller_counted).sum();
    report_target(
        "short-lived connections (0.1–5 s) counted by the exporter",
        "100 %",
        &format!(
            "{:.1} % ({by_exporter:.0} of {made:.0})",
            percent(by_exporter, made)
        ),
        made > 0.0 && (by_exporter - made).abs() < 0.5,
    );
    report_target(
        "short-lived connections (0.1–5 s) counted by the poller",
        "misses most (< 50 %)",
        &format!(
            "{:.1} % ({by_poller:.0} of {made:.0})",
            percent(by_poller, made)
        ),
        by_poller < made / 2.0,
    );
}
