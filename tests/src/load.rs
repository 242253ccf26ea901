//! Load generation shared by `cargo xtask bench` and `cargo xtask soak`:
//! a server in a test namespace, the exporter's CPU time and memory, and
//! waiting until its table stands still.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    exporter::{Exporter, Samples},
    fixtures::{BR_V6, DE_V4, JP_V4},
    netns::TestNet,
};

/// The port the load servers listen on.
pub const PORT: u16 = 9000;
/// The test hosts load goes to (DE, JP, BR in the test database).
pub const HOSTS: [&str; 3] = [DE_V4, JP_V4, BR_V6];

/// The load target `ip`:[`PORT`].
pub fn target(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("address"), PORT)
}

/// A server in the namespace, on [`PORT`] of `hosts`, that accepts with
/// a 100 ms timeout (so it can stop) and either closes each connection at
/// once or holds it; it stops after `lifetime` at the latest.
pub fn server(
    net: &TestNet,
    hosts: &'static [&'static str],
    hold: bool,
    stop: &Arc<AtomicBool>,
    lifetime: Duration,
) -> JoinHandle<Vec<TcpStream>> {
    let listeners: Vec<TcpListener> = net.run_in(move || {
        hosts
            .iter()
            .map(|a| {
                let l = TcpListener::bind(target(a)).expect("bind in netns");
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
    let deadline = Instant::now() + lifetime;
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

/// A sample's value, 0 when absent.
pub fn value(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// Events the exporter read: opens, closes and (with `--metrics.bytes`)
/// final byte counts.
pub fn events(s: &Samples) -> f64 {
    ["open", "close", "final"]
        .iter()
        .map(|kind| {
            value(
                s,
                &format!("geoip_exporter_events_read_total{{kind=\"{kind}\"}}"),
            )
        })
        .sum()
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
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
pub fn rss_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Sum of every opened and closed counter: what the table has done.
pub fn table_work(s: &Samples) -> f64 {
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
pub fn settle(exporter: &Exporter) -> Samples {
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

/// One line of the target-vs-measured table `cargo xtask bench` gathers
/// from every benchmark's output: `TARGET`, what, goal, measured, and
/// `met` or `missed`, tab-separated.
pub fn report_target(what: &str, goal: &str, measured: &str, met: bool) {
    println!(
        "TARGET\t{what}\t{goal}\t{measured}\t{}",
        if met { "met" } else { "missed" }
    );
}

/// Exit with status 2 and a line saying why unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the benchmark needs root (eBPF, network namespaces): run `cargo xtask bench` as root"
        );
        std::process::exit(2);
    }
}

/// Where the kernel's run-time statistics of BPF programs are switched on.
pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The kernel's run statistics of the newest program named `name`: (run
/// time in ns, runs). They are kept only while `kernel.bpf_stats_enabled`
/// is 1.
pub fn program_stats(name: &str) -> (f64, f64) {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "name", name])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .max_by_key(|l| {
            l.split(':')
                .next()
                .and_then(|id| id.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .unwrap_or_default();
    let field = |name: &str| {
        let words: Vec<&str> = last.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("run_time_ns"), field("run_cnt"))
}

/// Open and close connections to `targets` (round-robin) from `threads`
/// threads for at most `seconds` or `max` connections, the server closing
/// first; how many were made.
pub fn churn_round(targets: &[SocketAddr], threads: usize, seconds: Duration, max: u64) -> u64 {
    use std::{io::Read as _, sync::atomic::AtomicU64};
    let made = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<JoinHandle<()>> = (0..threads)
        .map(|i| {
            let made = made.clone();
            let targets = targets.to_vec();
            std::thread::spawn(move || {
                let mut n = i;
                while started.elapsed() < seconds && made.load(Ordering::Relaxed) < max {
                    let target = targets[n % targets.len()];
                    n += 1;
                    // A blocking connect either establishes or never does: a
                    // timeout could give up on one the kernel then establishes.
                    if let Ok(mut s) = TcpStream::connect(target) {
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
    made.load(Ordering::Relaxed)
}
