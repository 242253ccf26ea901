//! Exact counts through faults, as root against the real kernel: lost
//! events repaired by the reconcile, connections inside other network
//! namespaces (containers), database reloads under scrapes, and shutdown
//! in the middle of a burst.
#![expect(
    clippy::float_cmp,
    reason = "sample values are integers, compared exactly"
)]

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, http_get, nonzero, setpriv, temp_dir, world_readable},
    fixtures::{DE_V4, JP_V4, write_asn_database, write_database},
    mmdb::{Value, Writer},
    netns::{Container, TestNet, sock},
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn conns(samples: &Samples, country: &str, direction: &str) -> f64 {
    value(
        samples,
        &format!("geoip_connections{}", cd(country, direction)),
    )
}

fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: kill(2) on the test's own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// Two containers holding the same 4-tuple, found at start-up by entering
/// their namespaces, kept apart in the table, and left alone (no false
/// correction) by the reconcile.
#[test]
fn connections_in_other_namespaces_are_counted_apart() {
    let dir = temp_dir("containers");
    let db = dir.join("test.mmdb");
    write_database(&db);
    // 192.0.2.60/61 are DE in the test database.
    let server = sock("192.0.2.60", 8080);
    let client = sock("192.0.2.61", 40000);
    let c1 = Container::create("c1", &["192.0.2.60", "192.0.2.61"]);
    let c2 = Container::create("c2", &["192.0.2.60", "192.0.2.61"]);
    let (l1, l2) = (c1.listen(server), c2.listen(server));
    let first_c1 = c1.connect(client, &l1);
    let first_c2 = c2.connect(client, &l2);

    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8 path"),
            // Reconcile every second whether or not events are lost.
            "--reconcile.interval=1s",
            "--reconcile.max-interval=1s",
        ],
    );
    let at_start = exporter.wait_for(|_| true);
    assert_eq!(
        (
            conns(&at_start, "DE", "outbound"),
            conns(&at_start, "DE", "inbound")
        ),
        (2.0, 2.0),
        "the same 4-tuple in two containers is two connections each way, found at start-up:\n{:#?}",
        nonzero(&at_start, "geoip_connections")
    );
    assert!(
        value(
            &at_start,
            "geoip_exporter_network_namespaces{state=\"scanned\"}"
        ) >= 3.0,
        "own namespace and two containers scanned"
    );

    // Opened while running: seen through events, tagged with c1.
    let second_c1 = c1.connect(sock("192.0.2.61", 40001), &l1);
    let live = exporter.wait_for(|s| conns(s, "DE", "outbound") == 3.0);
    assert_eq!(
        (
            conns(&live, "DE", "outbound"),
            conns(&live, "DE", "inbound")
        ),
        (3.0, 3.0)
    );

    // Two reconciles later the counts stand and nothing was "corrected".
    let reconciled = exporter
        .wait_for(|s| value(s, "geoip_exporter_reconciles_total{result=\"success\"}") >= 2.0);
    assert!(
        value(
            &reconciled,
            "geoip_exporter_reconciles_total{result=\"success\"}"
        ) >= 2.0
    );
    assert_eq!(
        (
            conns(&reconciled, "DE", "outbound"),
            conns(&reconciled, "DE", "inbound")
        ),
        (3.0, 3.0)
    );
    for action in ["added", "removed"] {
        assert_eq!(
            value(
                &reconciled,
                &format!("geoip_exporter_reconcile_corrections_total{{action=\"{action}\"}}")
            ),
            0.0,
            "a correct table needs no correction ({action})"
        );
    }

    // Closing in one container uncounts that container's connection only.
    drop(first_c2);
    let closed = exporter.wait_for(|s| conns(s, "DE", "outbound") == 2.0);
    assert_eq!(
        (
            conns(&closed, "DE", "outbound"),
            conns(&closed, "DE", "inbound")
        ),
        (2.0, 2.0),
        "c2's close uncounts c2's pair, not c1's identical one"
    );
    drop((first_c1, second_c1));
    let done = exporter.wait_for(|s| conns(s, "DE", "outbound") == 0.0);
    assert_eq!(
        (
            conns(&done, "DE", "outbound"),
            conns(&done, "DE", "inbound")
        ),
        (0.0, 0.0)
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// No reconcile while nothing is lost; then a ring buffer of one page and
/// a frozen exporter: events are lost for sure (opens and closes), and the
/// reconcile that follows makes every count exact.
#[test]
fn lost_events_are_counted_and_repaired_by_the_reconcile() {
    const KEPT: usize = 20;
    const CLOSED_WHILE_FROZEN: usize = 10;
    const OPENED_WHILE_FROZEN: usize = 300;
    let dir = temp_dir("lost");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("lost", &[JP_V4]);
    let server = net.serve(9100);
    let target = sock(JP_V4, 9100);
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8 path"),
            "--ringbuf.size-bytes=4096",
            "--reconcile.interval=1s",
        ],
    );
    let mut held: Vec<TcpStream> = (0..KEPT).map(|_| net.connect_to(target)).collect();
    let before = exporter.wait_for(|s| conns(s, "JP", "outbound") == 20.0);
    assert_eq!(conns(&before, "JP", "outbound"), 20.0);
    // Three checks with nothing lost: the table is exact, no dump is made.
    std::thread::sleep(Duration::from_millis(3_500));
    let quiet = exporter.wait_for(|_| true);
    let lost_or_missed = value(&quiet, "geoip_exporter_events_lost_total")
        + value(&quiet, "geoip_exporter_events_missed_total");
    // (A kernel that cannot count skipped runs, before 6.7, reconciles
    // at every check instead.)
    if lost_or_missed == 0.0 && geoip_tests::kernel::counts_skipped_runs() {
        assert_eq!(
            value(
                &quiet,
                "geoip_exporter_reconciles_total{result=\"success\"}"
            ),
            0.0,
            "nothing was lost, yet the exporter reconciled"
        );
    }

    // Frozen, the exporter reads nothing: one page holds 56 events, the
    // opens fill it, the closes after them are lost.
    signal(exporter.pid(), libc::SIGSTOP);
    let opened_while_frozen: Vec<TcpStream> = (0..OPENED_WHILE_FROZEN)
        .map(|_| net.connect_to(target))
        .collect();
    held.drain(..CLOSED_WHILE_FROZEN);
    held.extend(opened_while_frozen);
    std::thread::sleep(Duration::from_millis(100));
    signal(exporter.pid(), libc::SIGCONT);

    let open_now = KEPT - CLOSED_WHILE_FROZEN + OPENED_WHILE_FROZEN;
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let (open_now, opened, closed) = (
        open_now as f64,
        (KEPT + OPENED_WHILE_FROZEN) as f64,
        CLOSED_WHILE_FROZEN as f64,
    );
    let repaired = exporter.wait_for(|s| {
        conns(s, "JP", "outbound") == open_now
            && value(s, "geoip_exporter_reconciles_total{result=\"success\"}") >= 1.0
    });
    assert!(
        value(&repaired, "geoip_exporter_events_lost_total") > 0.0,
        "the test must lose events to test their repair: {:?}",
        repaired
            .iter()
            .filter(|(k, _)| k.starts_with("geoip_exporter_"))
            .collect::<Vec<_>>()
    );
    assert_eq!(conns(&repaired, "JP", "outbound"), open_now);
    assert_eq!(
        value(
            &repaired,
            &format!("geoip_connections_opened_total{}", cd("JP", "outbound"))
        ),
        opened,
        "every connection counted opened exactly once, by its event or by the reconcile"
    );
    assert_eq!(
        value(
            &repaired,
            &format!("geoip_connections_closed_total{}", cd("JP", "outbound"))
        ),
        closed
    );
    let added = value(
        &repaired,
        "geoip_exporter_reconcile_corrections_total{action=\"added\"}",
    );
    let removed = value(
        &repaired,
        "geoip_exporter_reconcile_corrections_total{action=\"removed\"}",
    );
    assert!(
        added > 0.0 && removed > 0.0,
        "added {added}, removed {removed}"
    );
    assert_eq!(
        value(&repaired, "geoip_exporter_connections_tracked"),
        open_now
    );
    drop(held);
    let after = exporter.wait_for(|s| conns(s, "JP", "outbound") == 0.0);
    assert_eq!(conns(&after, "JP", "outbound"), 0.0);
    drop(server);
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// A country database mapping the test's DE range to `code`.
fn write_single(path: &Path, database_type: &str, code: &str) {
    let mut w = Writer::new(database_type, 6);
    w.insert(
        "192.0.2.0/24",
        Value::map([("country", Value::map([("iso_code", Value::str(code))]))]),
    )
    .expect("insert");
    w.write(path).expect("write database");
}

fn write_garbage(path: &Path) {
    fs::write(path, b"not a database at all").expect("write");
}

/// Replace `target` by atomic rename, as geoipupdate does.
fn replace(target: &Path, write: impl FnOnce(&Path)) {
    let staged = target.with_extension("staged");
    write(&staged);
    fs::rename(&staged, target).expect("rename");
}

fn reloads(samples: &Samples, result: &str) -> f64 {
    value(
        samples,
        &format!("geoip_exporter_database_reloads_total{{result=\"{result}\"}}"),
    )
}

/// Scrapes `/metrics` in a loop until stopped; counts failures and the
/// slowest answer.
struct ScrapeLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64, Duration)>>,
}

impl ScrapeLoop {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_mins(2) {
                let t = Instant::now();
                match http_get(addr, "/metrics") {
                    Ok((200, body)) if body.contains("geoip_exporter_build_info") => ok += 1,
                    _ => failed += 1,
                }
                slowest = slowest.max(t.elapsed());
            }
            (ok, failed, slowest)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("scrape loop")
    }
}

/// The database file replaced (good, corrupt, wrong type, many times in a
/// row) and SIGHUP, while scrapes run in a loop: no scrape fails or
/// stalls; open connections keep their country, new ones use the new
/// database; a bad file keeps the old one serving.
#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "a, b, c, d: the connections in order"
)]
fn database_reloads_without_a_failed_scrape() {
    let dir = temp_dir("reload");
    let db = dir.join("country.mmdb");
    write_single(&db, "Test-Country-A", "DE");
    let net = TestNet::create(
        "reload",
        &["192.0.2.41", "192.0.2.42", "192.0.2.43", "192.0.2.44"],
    );
    let _server = net.serve(9200);
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let scrapes = ScrapeLoop::start(exporter.addr);
    let database_type = || -> String {
        let (_, body) = exporter.get("/api/v1/countries").expect("countries api");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        json["database"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(database_type(), "Test-Country-A");

    let a = net.connect_to(sock("192.0.2.41", 9200));
    exporter.wait_for(|s| conns(s, "DE", "outbound") == 1.0);

    // A good replacement, by rename.
    replace(&db, |p| write_single(p, "Test-Country-B", "FR"));
    let s = exporter.wait_for(|s| reloads(s, "success") == 1.0);
    assert_eq!(reloads(&s, "success"), 1.0, "{}", exporter.log());
    assert_eq!(database_type(), "Test-Country-B");
    let b = net.connect_to(sock("192.0.2.42", 9200));
    let s = exporter.wait_for(|s| conns(s, "FR", "outbound") == 1.0);
    assert_eq!(
        (conns(&s, "DE", "outbound"), conns(&s, "FR", "outbound")),
        (1.0, 1.0),
        "the open connection keeps DE, the new one is FR"
    );

    // Corrupt, then the wrong type: both refused, B keeps serving.
    replace(&db, write_garbage);
    let s = exporter.wait_for(|s| reloads(s, "failure") == 1.0);
    assert_eq!(reloads(&s, "failure"), 1.0, "{}", exporter.log());
    assert_eq!(
        value(&s, "geoip_exporter_database_last_reload_successful"),
        0.0
    );
    replace(&db, write_asn_database);
    let s = exporter.wait_for(|s| reloads(s, "failure") == 2.0);
    assert_eq!(reloads(&s, "failure"), 2.0);
    let c = net.connect_to(sock("192.0.2.43", 9200));
    let s = exporter.wait_for(|s| conns(s, "FR", "outbound") == 2.0);
    assert_eq!(conns(&s, "FR", "outbound"), 2.0, "B still in use");
    assert_eq!(database_type(), "Test-Country-B");

    // Many replacements in a row, ending with A (DE).
    for i in 0..10 {
        let (kind, code) = if i % 2 == 0 {
            ("Test-Country-B", "FR")
        } else {
            ("Test-Country-A", "DE")
        };
        replace(&db, |p| write_single(p, kind, code));
        std::thread::sleep(Duration::from_millis(37));
    }
    let s = exporter.wait_for(|s| {
        value(s, "geoip_exporter_database_last_reload_successful") == 1.0
            && reloads(s, "success") >= 2.0
    });
    assert!(reloads(&s, "success") >= 2.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while database_type() != "Test-Country-A" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(database_type(), "Test-Country-A", "the last file wins");
    let d = net.connect_to(sock("192.0.2.44", 9200));
    let s = exporter.wait_for(|s| conns(s, "DE", "outbound") == 2.0);
    assert_eq!(
        (conns(&s, "DE", "outbound"), conns(&s, "FR", "outbound")),
        (2.0, 2.0)
    );

    // SIGHUP reloads the same file again.
    let before = reloads(&s, "success");
    signal(exporter.pid(), libc::SIGHUP);
    let s = exporter.wait_for(|s| reloads(s, "success") == before + 1.0);
    assert_eq!(reloads(&s, "success"), before + 1.0);

    // Closes uncount what their opens counted.
    drop((a, b, c, d));
    let s = exporter.wait_for(|s| nonzero(s, "geoip_connections").is_empty());
    assert!(nonzero(&s, "geoip_connections").is_empty(), "{s:#?}");

    let (ok, failed, slowest) = scrapes.finish();
    assert_eq!(failed, 0, "{failed} of {} scrapes failed", ok + failed);
    assert!(ok > 50, "only {ok} scrapes ran");
    assert!(
        slowest < Duration::from_millis(500),
        "a scrape took {slowest:?}"
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// What `bpftool <what> show` lists: each object's id and its text
/// (the first line and the indented ones after it).
fn bpftool(what: &str) -> Vec<(u32, String)> {
    let out = Command::new("bpftool")
        .args([what, "show"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bpftool (cargo xtask setup installs it): {e}"));
    assert!(out.status.success(), "bpftool {what} show failed");
    let mut objects: Vec<(u32, String)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let id = line.split_once(':').and_then(|(id, _)| id.parse().ok());
        match (id, objects.last_mut()) {
            (Some(id), _) if !line.starts_with(char::is_whitespace) => {
                objects.push((id, line.to_owned()));
            }
            (_, Some((_, text))) => {
                text.push(' ');
                text.push_str(line.trim());
            }
            _ => {}
        }
    }
    objects
}

/// Whether a link of the kernel's attaches program `id`.
fn linked(id: u32) -> bool {
    let id = id.to_string();
    bpftool("link").iter().any(|(_, text)| {
        let words: Vec<&str> = text.split_whitespace().collect();
        words.windows(2).any(|w| w[0] == "prog" && w[1] == id)
    })
}

/// The ids a program line lists after `map_ids`.
fn map_ids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .skip_while(|w| *w != "map_ids")
        .nth(1)
        .map(|ids| ids.split(',').filter_map(|i| i.parse().ok()).collect())
        .unwrap_or_default()
}

fn pinned() -> Vec<String> {
    fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM while connections churn and scrapes run: exit 0 within a
/// second, and the program, its link and its maps are gone.
#[test]
fn sigterm_during_a_burst_exits_fast_and_leaves_nothing() {
    let dir = temp_dir("shutdown");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("stop", &[DE_V4]);
    let _server = net.serve(9300);
    let before: Vec<u32> = bpftool("prog").iter().map(|(id, _)| *id).collect();
    let pinned_before = pinned();
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let ours: Vec<(u32, String)> = bpftool("prog")
        .into_iter()
        .filter(|(id, text)| !before.contains(id) && text.contains("name inet_sock_set_state"))
        .collect();
    assert_eq!(ours.len(), 1, "the exporter's program is loaded: {ours:?}");
    let (program, text) = &ours[0];
    let maps = map_ids(text);
    assert!(maps.len() >= 2, "its maps: {text}");
    assert!(linked(*program), "its link to the tracepoint");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, opened) = (stop.clone(), opened.clone());
        let target = sock(DE_V4, 9300);
        net.check_route(target.ip());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                if TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let scrapes = ScrapeLoop::start(exporter.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(opened.load(Ordering::Relaxed) >= 500, "the burst runs");
    let signalled = Instant::now();
    let status = exporter.stop(libc::SIGTERM);
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("churn");
    let _ = scrapes.finish();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert!(
        bpftool("prog").iter().all(|(id, _)| id != program),
        "the program is unloaded"
    );
    assert!(!linked(*program), "the link is gone");
    // The kernel frees a map on a work queue once its last reference
    // (the exit of the process unmapped the ring buffer) is gone: soon
    // after the exit, not at it.
    let freed_by = Instant::now() + Duration::from_secs(2);
    let mut maps_after: Vec<u32> = bpftool("map").iter().map(|(id, _)| *id).collect();
    while maps.iter().any(|m| maps_after.contains(m)) && Instant::now() < freed_by {
        std::thread::sleep(Duration::from_millis(20));
        maps_after = bpftool("map").iter().map(|(id, _)| *id).collect();
    }
    for map in &maps {
        assert!(!maps_after.contains(map), "map {map} is gone");
    }
    assert_eq!(pinned(), pinned_before, "nothing pinned in /sys/fs/bpf");
}

/// Per thread of process `pid`: (name, effective, permitted capabilities).
fn thread_caps(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).expect("capability mask");
        out.push((field("Name:"), hex("CapEff:"), hex("CapPrm:")));
    }
    out
}

/// As an unprivileged user with exactly `CAP_BPF`, `CAP_PERFMON`,
/// `CAP_DAC_READ_SEARCH` (tracefs), `CAP_SYS_ADMIN` and `CAP_SYS_PTRACE`
/// (other namespaces): it counts a container's connections from start-up,
/// and after start-up no thread but the snapshot thread holds any
/// capability, that one only the last two. Without them it still runs,
/// says what it misses, and counts from events.
#[test]
fn minimal_capabilities_then_dropped_after_start_up() {
    const SYS_PTRACE: u64 = 1 << 19;
    const SYS_ADMIN: u64 = 1 << 21;
    let (exe, db) = world_readable("minimal-caps");
    let dir = exe.parent().expect("dir").to_owned();
    let server = sock("192.0.2.60", 8080);
    let c = Container::create("capc", &["192.0.2.60", "192.0.2.61"]);
    let listener = c.listen(server);
    let before = c.connect(sock("192.0.2.61", 40000), &listener);

    let minimal: Vec<String> = [
        "bpf",
        "perfmon",
        "dac_read_search",
        "sys_admin",
        "sys_ptrace",
    ]
    .map(String::from)
    .to_vec();
    let mut cmd = setpriv(65_534, &minimal);
    cmd.arg(&exe).args([
        "--geoip.database",
        db.to_str().expect("utf-8"),
        "--reconcile.interval=1s",
    ]);
    let exporter = Exporter::start_command(&dir, cmd, |addr| http_get(addr, "/metrics").is_ok());
    let s = exporter
        .wait_for(|s| value(s, "geoip_exporter_reconciles_total{result=\"success\"}") >= 1.0);
    assert_eq!(
        (conns(&s, "DE", "outbound"), conns(&s, "DE", "inbound")),
        (1.0, 1.0),
        "the container's connection, found at start-up: {}",
        exporter.log()
    );
    assert_eq!(
        value(
            &s,
            "geoip_exporter_network_namespaces{state=\"unreadable\"}"
        ),
        0.0
    );
    let threads = thread_caps(exporter.pid());
    assert!(threads.len() > 2, "{threads:?}");
    for (name, effective, permitted) in &threads {
        if name == "geoip-snapshot" {
            assert_eq!(
                (*effective, *permitted),
                (SYS_ADMIN | SYS_PTRACE, SYS_ADMIN | SYS_PTRACE)
            );
        } else {
            assert_eq!(
                (*effective, *permitted),
                (0, 0),
                "thread {name} keeps capabilities"
            );
        }
    }
    assert!(
        threads.iter().any(|t| t.0 == "geoip-snapshot"),
        "{threads:?}"
    );
    let live = c.connect(sock("192.0.2.61", 40001), &listener);
    let s = exporter.wait_for(|s| conns(s, "DE", "outbound") == 2.0);
    assert_eq!(conns(&s, "DE", "outbound"), 2.0, "events still read");
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));

    // Without CAP_SYS_ADMIN and CAP_SYS_PTRACE: it says so, the container
    // cannot be read, and its connections count from events only.
    let fewer: Vec<String> = minimal[..3].to_vec();
    let mut cmd = setpriv(65_534, &fewer);
    cmd.arg(&exe)
        .args(["--geoip.database", db.to_str().expect("utf-8")]);
    let degraded = Exporter::start_command(&dir, cmd, |addr| http_get(addr, "/metrics").is_ok());
    let s = degraded.wait_for(|_| true);
    assert!(
        degraded.log().contains("CAP_SYS_ADMIN") && degraded.log().contains("CAP_SYS_PTRACE"),
        "{}",
        degraded.log()
    );
    assert!(
        value(
            &s,
            "geoip_exporter_network_namespaces{state=\"unreadable\"}"
        ) >= 1.0
    );
    assert_eq!(
        conns(&s, "DE", "outbound"),
        0.0,
        "not seen without entering"
    );
    let third = c.connect(sock("192.0.2.61", 40002), &listener);
    let s = degraded.wait_for(|s| conns(s, "DE", "outbound") == 1.0);
    assert_eq!(conns(&s, "DE", "outbound"), 1.0, "from its event");
    assert_eq!(degraded.stop(libc::SIGTERM).code(), Some(0));
    drop((before, live, third));
}
