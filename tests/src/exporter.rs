//! Running the real `geoip-exporter` binary and reading its `/metrics`.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// The binary under test: `$GEOIP_EXPORTER_BIN` (set by `cargo xtask
/// test`), else the workspace's release build.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GEOIP_EXPORTER_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/geoip-exporter")
}

/// The commit and build date the binary under test reports: from the
/// first line of its `--version`, `NAME VERSION (commit C, built D)`.
pub fn build_stamp() -> (String, String) {
    let out = Command::new(bin())
        .arg("-V")
        .output()
        .unwrap_or_else(|e| panic!("{} -V: {e}", bin().display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let inner = text
        .trim()
        .strip_suffix(')')
        .and_then(|t| t.split_once(" (commit "))
        .and_then(|(_, rest)| rest.split_once(", built "))
        .unwrap_or_else(|| panic!("unexpected -V output: {text:?}"));
    (inner.0.to_owned(), inner.1.to_owned())
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("geoip-e2e-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A fresh directory `name` an unprivileged user can read, holding a copy
/// of the binary and the test database: (binary, database).
pub fn world_readable(name: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir(name);
    let mode = |p: &Path, m: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(m))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    };
    mode(&dir, 0o755);
    let exe = dir.join("geoip-exporter");
    fs::copy(bin(), &exe).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build it: cargo build --release -p geoip-user)",
            bin().display()
        )
    });
    mode(&exe, 0o755);
    let db = dir.join("test.mmdb");
    crate::fixtures::write_database(&db);
    mode(&db, 0o644);
    (exe, db)
}

/// `setpriv` running as `uid` with exactly `caps` (lower case, no `cap_`)
/// as its permitted, effective, inheritable, ambient and bounding sets, and
/// `no_new_privs`, as systemd or a container runtime would start it.
pub fn setpriv(uid: u32, caps: &[String]) -> Command {
    let list = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let set = if list.is_empty() {
        "-all".to_owned()
    } else {
        format!("-all,{list}")
    };
    let mut cmd = Command::new("setpriv");
    cmd.arg("--no-new-privs")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"));
    cmd
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or_else(|e| panic!("no free port: {e}"), |a| a.port())
}

/// Run the binary to completion (bounded to 30 s) and return its output.
pub fn run_to_exit(args: &[&str]) -> Output {
    run_command_to_exit(Command::new(bin()).args(args))
}

/// Run `cmd` to completion, killing it after 30 s.
pub fn run_command_to_exit(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// A running exporter on 127.0.0.1; killed on drop if still running.
pub struct Exporter {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Exporter {
    /// Start the binary with `args` plus a listen address of its own, and
    /// wait until it serves `/metrics` (it serves only once the start-up
    /// snapshot is merged).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_until(dir, args, |addr| http_get(addr, "/metrics").is_ok())
    }

    /// Start the binary as [`Self::start`] does, and wait until `ready`
    /// says it serves (e.g. over TLS).
    pub fn start_until(dir: &Path, args: &[&str], ready: impl Fn(SocketAddr) -> bool) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Self::start_command(dir, cmd, ready)
    }

    /// Start `cmd` (the binary, or a wrapper such as setpriv running it)
    /// with a listen address of its own appended, and wait until `ready`.
    pub fn start_command(dir: &Path, mut cmd: Command, ready: impl Fn(SocketAddr) -> bool) -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        cmd.arg(format!("--web.listen-address={addr}"));
        Self::start_listening_at(dir, cmd, addr, ready)
    }

    /// Start `cmd` as it is, which makes the exporter listen at `addr`, and
    /// wait until `ready`.
    pub fn start_listening_at(
        dir: &Path,
        mut cmd: Command,
        addr: SocketAddr,
        ready: impl Fn(SocketAddr) -> bool,
    ) -> Self {
        let log = dir.join(format!("exporter-{}.log", addr.port()));
        let log_file = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut exporter = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = exporter.child.try_wait() {
                panic!(
                    "exporter exited with {status} at start-up:\n{}",
                    exporter.log()
                );
            }
            if ready(exporter.addr) {
                return exporter;
            }
            assert!(
                Instant::now() < deadline,
                "exporter not serving after 30 s:\n{}",
                exporter.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exporter's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the exporter logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`: (status code, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// The current `/metrics` text.
    pub fn scrape(&self) -> String {
        match self.get("/metrics") {
            Ok((200, body)) => body,
            other => panic!("scrape failed: {other:?}\n{}", self.log()),
        }
    }

    /// Scrape until `want` holds for the samples (up to 10 s); return the
    /// last samples either way, so the caller's assertion shows the diff.
    pub fn wait_for(&self, want: impl Fn(&Samples) -> bool) -> Samples {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let samples = parse(&self.scrape());
            if want(&samples) || Instant::now() > deadline {
                return samples;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` and wait (up to 10 s) for the exit status.
    pub fn stop(mut self, signal: i32) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "exporter ignored signal {signal}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
pub fn promtool_check_metrics(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (cargo xtask setup installs it): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        complaints
    } else {
        format!("promtool failed ({}): {complaints}", out.status)
    }
}

/// A minimal HTTP/1.0 GET (no client library needed for loopback).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Samples by `name{labels}` exactly as exposed.
pub type Samples = BTreeMap<String, f64>;

/// Parse the text exposition format (no timestamps, as this exporter writes it).
pub fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The samples of metric `name` (labels only as key), zeros dropped.
pub fn nonzero(samples: &Samples, name: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix(name)?;
            (labels.starts_with('{') && *v != 0.0).then(|| (labels.to_owned(), *v))
        })
        .collect()
}

/// The label set `{country="..",direction=".."}` as exposed.
pub fn cd(country: &str, direction: &str) -> String {
    format!("{{country=\"{country}\",direction=\"{direction}\"}}")
}

/// `(status, item, text)` of each item line a `geoip-exporter check`
/// printed (`ok      kernel          Linux ...`).
pub fn check_lines(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let status = line.get(..8)?.trim_end();
            let item = line.get(8..24)?.trim_end();
            ["ok", "warn", "FAILED", "skipped"]
                .contains(&status)
                .then(|| (status.to_owned(), item.to_owned(), line[24..].to_owned()))
        })
        .collect()
}

/// The status of `item` in a check's stdout.
pub fn check_status(stdout: &str, item: &str) -> String {
    check_lines(stdout)
        .into_iter()
        .find(|(_, i, _)| i == item)
        .map_or_else(|| panic!("no {item} line:\n{stdout}"), |(s, _, _)| s)
}
