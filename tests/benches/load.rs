//! `cargo xtask bench`: the exporter under load, against the real kernel.
//!
//! 1. Churn: two client threads open and close TCP connections to test
//!    hosts in a network namespace as fast as they can (at most
//!    `CHURN_MAX` connections or `CHURN_SECONDS`), while the exporter
//!    counts them. Reports connections/s, kernel events/s the exporter
//!    read, events lost, the exporter's CPU time per million events, and
//!    whether the counts were still exact afterwards.
//! 2. Memory: `HOLD` connections held open; reports the exporter's
//!    resident memory before and after, per tracked connection.
//!
//! Needs root. Prints a Markdown table for BENCHMARKS.md.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use geoip_tests::{
    exporter::{Exporter, Samples, cd, temp_dir},
    fixtures::{BR_V6, DE_V4, JP_V4, write_database},
    netns::TestNet,
};
use maxminddb as _;
use serde as _;
use serde_json as _;

const PORT: u16 = 9000;
const CHURN_SECONDS: u64 = 10;
const CHURN_MAX: u64 = 200_000;
const CHURN_THREADS: usize = 2;
const HOLD: usize = 8_000;

fn sock(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("address"), PORT)
}

/// A server in the namespace that accepts with a 100 ms timeout (so it can
/// stop) and either closes each connection at once or holds it.
fn server(net: &TestNet, hold: bool, stop: &Arc<AtomicBool>) -> JoinHandle<Vec<TcpStream>> {
    let listeners: Vec<TcpListener> = net.run_in(|| {
        [DE_V4, JP_V4, BR_V6]
            .iter()
            .map(|a| {
                let l = TcpListener::bind(sock(a)).expect("bind in netns");
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                // SAFETY: setsockopt with a valid timeval; accept(2) honours SO_RCVTIMEO.
                unsafe {
                    libc::setsockopt(
                        l.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const timeout).cast(),
                        u32::try_from(size_of::<libc::timeval>()).expect("size"),
                    )
                };
                l
            })
            .collect()
    });
    let deadline = Instant::now() + Duration::from_mins(2);
    let threads: Vec<JoinHandle<Vec<TcpStream>>> = listeners
        .into_iter()
        .map(|l| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((s, _)) = l.accept()
                        && hold
                    {
                        kept.push(s);
                    }
                }
                kept
            })
        })
        .collect();
    std::thread::spawn(move || {
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    })
}

fn value(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

fn events(s: &Samples) -> f64 {
    value(s, "geoip_exporter_events_read_total{kind=\"open\"}")
        + value(s, "geoip_exporter_events_read_total{kind=\"close\"}")
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is [0], utime [11], stime [12].
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(
        clippy::cast_precision_loss,
        reason = "clock ticks per second is small"
    )]
    let hz = hz as f64;
    ticks / hz
}

/// Resident memory of a process in bytes, from /proc/PID/status.
fn rss_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Sum of every opened and closed counter: what the table has done.
fn table_work(s: &Samples) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            k.starts_with("geoip_connections_opened_total{")
                || k.starts_with("geoip_connections_closed_total{")
        })
        .map(|(_, v)| v)
        .sum()
}

/// Wait (at most 30 s) until the table stops changing. (Each scrape is a
/// loopback connection, so the raw event count never stands still.)
fn settle(exporter: &Exporter) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = exporter.wait_for(|_| true);
        if (table_work(&s) - last).abs() < f64::EPSILON || Instant::now() > deadline {
            return s;
        }
        last = table_work(&s);
    }
}

fn churn(net: &TestNet, exporter: &Exporter) -> Vec<(String, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let srv = server(net, false, &stop);
    let targets = [sock(DE_V4), sock(JP_V4), sock(BR_V6)];
    for t in &targets {
        net.check_route(t.ip());
    }
    let before = settle(exporter);
    let cpu0 = cpu_seconds(exporter.pid());
    let made = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<JoinHandle<()>> = (0..CHURN_THREADS)
        .map(|i| {
            let made = made.clone();
            std::thread::spawn(move || {
                let mut n = i;
                while started.elapsed() < Duration::from_secs(CHURN_SECONDS)
                    && made.load(Ordering::Relaxed) < CHURN_MAX
                {
                    let target = targets[n % targets.len()];
                    n += 1;
                    if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                        made.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        // The server closes first: no TIME_WAIT on this side.
                        let _ = s.read(&mut [0u8; 1]);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    let after = settle(exporter);
    let cpu = cpu_seconds(exporter.pid()) - cpu0;
    let conns = made.load(Ordering::Relaxed);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let conns_f = conns as f64;
    let read = events(&after) - events(&before);
    let lost = value(&after, "geoip_exporter_events_lost_total")
        - value(&before, "geoip_exporter_events_lost_total");
    let opened: f64 = ["DE", "JP", "BR"]
        .iter()
        .map(|c| {
            let k = format!("geoip_connections_opened_total{}", cd(c, "outbound"));
            value(&after, &k) - value(&before, &k)
        })
        .sum();
    let open_now: f64 = ["DE", "JP", "BR"]
        .iter()
        .map(|c| value(&after, &format!("geoip_connections{}", cd(c, "outbound"))))
        .sum();
    vec![
        (
            "connections opened and closed".into(),
            format!("{conns} in {wall:.1} s ({:.0}/s)", conns_f / wall),
        ),
        (
            "kernel events read by the exporter".into(),
            format!("{read:.0} ({:.0}/s)", read / wall),
        ),
        (
            "events lost (ring buffer full)".into(),
            format!("{lost:.0}"),
        ),
        (
            "exporter CPU time".into(),
            format!("{cpu:.2} s ({:.2} s per million events)", cpu / read * 1e6),
        ),
        (
            "exact afterwards".into(),
            format!(
                "{} (opened_total rose by {opened:.0} for {conns} connections; {open_now:.0} still counted open)",
                if (opened - conns_f).abs() < 0.5 && open_now == 0.0 {
                    "yes"
                } else {
                    "NO"
                }
            ),
        ),
    ]
}

fn memory(net: &TestNet, exporter: &Exporter) -> Vec<(String, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let srv = server(net, true, &stop);
    let targets = [sock(DE_V4), sock(JP_V4), sock(BR_V6)];
    let before = settle(exporter);
    let rss0 = rss_bytes(exporter.pid());
    let mut held = Vec::with_capacity(HOLD);
    for i in 0..HOLD {
        held.push(
            TcpStream::connect_timeout(&targets[i % targets.len()], Duration::from_secs(2))
                .expect("connect"),
        );
    }
    let after = settle(exporter);
    let rss1 = rss_bytes(exporter.pid());
    let tracked = value(&after, "geoip_exporter_connections_tracked")
        - value(&before, "geoip_exporter_connections_tracked");
    drop(held);
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    vec![
        (
            "connections held open".into(),
            format!("{HOLD} (tracked: {tracked:.0})"),
        ),
        (
            "exporter RSS before / after".into(),
            format!(
                "{:.1} MiB / {:.1} MiB",
                rss0 / 1_048_576.0,
                rss1 / 1_048_576.0
            ),
        ),
        (
            "RSS per tracked connection".into(),
            format!("{:.0} bytes", (rss1 - rss0) / tracked.max(1.0)),
        ),
    ]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the benchmark needs root (eBPF, network namespaces): run `cargo xtask bench` as root"
        );
        std::process::exit(2);
    }
    let dir = temp_dir("bench");
    let db = dir.join("bench.mmdb");
    write_database(&db);
    let net = TestNet::create("bench", &[DE_V4, JP_V4, BR_V6]);
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let mut rows = churn(&net, &exporter);
    rows.extend(memory(&net, &exporter));
    println!("| measure | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
