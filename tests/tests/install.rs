//! The Debian package as an operator meets it: passed by lintian (errors
//! and warnings), installed into this machine with `dpkg -i`, checked with
//! the installed `geoip-exporter check`, run the way the installed unit
//! runs it (its `ExecStart=`, its flags from the installed
//! `/etc/default/geoip-exporter`, as a non-root user with exactly its
//! `AmbientCapabilities=`) on a generated database at the path those flags
//! name, counting real connections exactly; then purged, leaving nothing
//! behind. systemd is not PID 1 on these machines, so the unit is verified
//! with `systemd-analyze verify` and its settings are applied by hand.
//!
//! `cargo xtask test` builds the package and passes its path in
//! `GEOIP_DEB`.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{
        Exporter, Samples, cd, check_status, http_get, nonzero, parse, promtool_check_metrics,
        setpriv, temp_dir,
    },
    fixtures::write_database,
    netns::{HOST_V6, TestNet, host_listener, sock},
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

const PACKAGE: &str = "geoip-exporter";
/// Test hosts no other test uses: DE and JP (outbound), BR (inbound).
const DE: &str = "192.0.2.91";
const JP: &str = "198.51.100.91";
const BR_V6: &str = "2001:db8:b::91";
const REMOTE_PORT: u16 = 8447;
/// A user id from systemd's `DynamicUser=` range, as the unit would get.
const DYNAMIC_UID: u32 = 61_184;
/// Where the purge test looks for leftovers.
const WATCHED: &[&str] = &["/etc", "/usr", "/var/lib", "/opt", "/srv"];

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    geoip_tests::exporter::run_command_to_exit(Command::new(program).args(args))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether dpkg knows the package (installed, or removed but not purged).
fn known_to_dpkg() -> bool {
    run("dpkg-query", &["-W", PACKAGE]).status.success()
}

/// Every path under [`WATCHED`], except dpkg's own journal files, which
/// any dpkg run touches.
fn tree() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let volatile = path.starts_with("/var/lib/dpkg")
                && (path.to_string_lossy().ends_with("-old")
                    || path.starts_with("/var/lib/dpkg/updates")
                    || path.starts_with("/var/lib/dpkg/triggers")
                    || path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("lock")));
            if volatile {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.insert(path.clone());
            if is_dir {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for dir in WATCHED {
        walk(Path::new(dir), &mut out);
    }
    out
}

/// Purges the package when dropped, so a failed assertion leaves the
/// machine as it was.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if known_to_dpkg() {
            let _ = run("dpkg", &["--purge", PACKAGE]);
        }
    }
}

/// The value of `key=` in the installed unit (exactly one).
fn unit_value(unit: &str, key: &str) -> String {
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect();
    assert_eq!(values.len(), 1, "{key}= in the installed unit: {values:?}");
    values[0].trim().to_owned()
}

/// The words systemd passes for `$GEOIP_EXPORTER_ARGS` from the installed
/// environment file.
fn service_words(default: &str) -> Vec<String> {
    let value = default
        .lines()
        .filter_map(|l| l.strip_prefix("GEOIP_EXPORTER_ARGS="))
        .next_back()
        .expect("GEOIP_EXPORTER_ARGS= in /etc/default/geoip-exporter");
    value
        .trim()
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The value after `flag` in `words`.
fn flag<'a>(words: &'a [String], flag: &str) -> &'a str {
    let at = words
        .iter()
        .position(|w| w == flag)
        .unwrap_or_else(|| panic!("{flag} in {words:?}"));
    &words[at + 1]
}

/// Every file the package should put in place is there, as dpkg knows it.
fn assert_installed_files() {
    let files = run_ok("dpkg", &["-L", PACKAGE]);
    for path in [
        "/usr/bin/geoip-exporter",
        "/usr/lib/systemd/system/geoip-exporter.service",
        "/etc/default/geoip-exporter",
        "/usr/share/man/man8/geoip-exporter.8.gz",
        "/usr/share/bash-completion/completions/geoip-exporter",
        "/usr/share/zsh/vendor-completions/_geoip-exporter",
        "/usr/share/fish/vendor_completions.d/geoip-exporter.fish",
        "/usr/share/doc/geoip-exporter/copyright",
        "/usr/share/doc/geoip-exporter/changelog.Debian.gz",
        "/usr/share/doc/geoip-exporter/LICENSE-APACHE",
        "/usr/share/doc/geoip-exporter/LICENSE-MIT",
        "/usr/share/doc/geoip-exporter/map-data-LICENSES.md",
        "/usr/share/doc/geoip-exporter/THIRD-PARTY.md",
        "/usr/share/geoip-exporter/grafana/geoip-exporter.json",
        "/usr/share/geoip-exporter/prometheus/rules.yml",
    ] {
        assert!(
            files.lines().any(|l| l == path) && Path::new(path).exists(),
            "{path} not installed:\n{files}"
        );
    }
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(
        conffiles.contains("/etc/default/geoip-exporter "),
        "the defaults file is a conffile: {conffiles}"
    );
    assert!(Path::new("/var/lib/geoip-exporter").is_dir());
    assert_eq!(
        run_ok("man", &["-w", PACKAGE]).trim(),
        "/usr/share/man/man8/geoip-exporter.8.gz"
    );
    let page = run_ok(
        "sh",
        &["-c", "zcat /usr/share/man/man8/geoip-exporter.8.gz"],
    );
    assert!(
        page.contains(".TH geoip-exporter 8") && page.contains("geoip.database"),
        "{page}"
    );
    let completion =
        fs::read_to_string("/usr/share/bash-completion/completions/geoip-exporter").expect("bash");
    assert!(completion.contains("--geoip.database") && completion.contains("check"));
    let copyright =
        fs::read_to_string("/usr/share/doc/geoip-exporter/copyright").expect("copyright");
    for needle in ["License: ISC", "Natural Earth", "i18n-iso-countries", "GPL"] {
        assert!(copyright.contains(needle), "copyright lacks {needle}");
    }
    let third = fs::read_to_string("/usr/share/doc/geoip-exporter/THIRD-PARTY.md").expect("list");
    for crate_name in ["| aya |", "| tokio |", "| maxminddb |", "| axum |"] {
        assert!(
            third.contains(crate_name),
            "THIRD-PARTY.md lacks {crate_name}"
        );
    }
    let version = run_ok("/usr/bin/geoip-exporter", &["--version"]);
    let built = run_ok(
        geoip_tests::exporter::bin().to_str().expect("utf-8"),
        &["--version"],
    );
    assert_eq!(version, built, "the installed binary is the one built");
    assert!(version.contains("needs: Linux 5.8"), "{version}");
}

/// The installed `geoip-exporter check`, with no flags, checks the
/// service's flags: it names the missing database, then passes once a
/// database is where they say, as root and as the service's user.
fn check_with_the_installed_flags(db: &Path, caps: &[String]) {
    // Before a database exists, the check says what is missing.
    let out = run("/usr/bin/geoip-exporter", &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.starts_with("flags: from /etc/default/geoip-exporter"),
        "{stdout}"
    );
    assert_eq!(check_status(&stdout, "database"), "FAILED", "{stdout}");
    assert!(
        stdout.contains(&format!("{}: no such file", db.display())),
        "{stdout}"
    );

    // A generated database where the installed flags look for it.
    write_database(db);
    let out = run("/usr/bin/geoip-exporter", &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The service's user, with the unit's capabilities, passes it too.
    let out = geoip_tests::exporter::run_command_to_exit(
        setpriv(DYNAMIC_UID, caps).args(["/usr/bin/geoip-exporter", "check"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.contains("not root, effective: CAP_BPF CAP_PERFMON"),
        "{stdout}"
    );
}

/// `/metrics` at `addr`, parsed, until `want` holds (up to 10 s); the last
/// samples either way.
fn wait_for(addr: SocketAddr, want: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = match http_get(addr, "/metrics") {
            Ok((200, body)) => parse(&body),
            _ => Samples::new(),
        };
        if want(&samples) || Instant::now() > deadline {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The service that `start` starts (listening at `addr`) counts real
/// connections exactly, one opened before it started (its start-up
/// snapshot) and the rest after (the kernel's events), and serves a clean
/// `/metrics` and the map; `stop` then ends it. `log` is what it logged.
fn count_real_connections<S>(
    net_name: &str,
    addr: SocketAddr,
    start: impl FnOnce() -> S,
    stop: impl FnOnce(S),
    log: impl Fn() -> String,
) {
    let net = TestNet::create(net_name, &[DE, JP, BR_V6]);
    let _remote = net.serve(REMOTE_PORT);
    let (_local, local_port) = host_listener();
    let target = |ip: &str| SocketAddr::new(ip.parse::<IpAddr>().expect("address"), REMOTE_PORT);
    let early = net.connect_to(target(DE));

    let service = start();
    let de_again = net.connect_to(target(DE));
    let jp = net.connect_to(target(JP));
    let inbound = net.connect_from(BR_V6, sock(HOST_V6, local_port));
    // The live series wanted: exactly these, nothing else.
    let want = |de: f64, jp: f64, br: f64| {
        let expected: Samples = [
            (cd("DE", "outbound"), de),
            (cd("JP", "outbound"), jp),
            (cd("BR", "inbound"), br),
        ]
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .collect();
        move |s: &Samples| nonzero(s, "geoip_connections") == expected
    };
    let samples = wait_for(addr, want(2.0, 1.0, 1.0));
    assert!(
        want(2.0, 1.0, 1.0)(&samples),
        "{:?}\n{}",
        nonzero(&samples, "geoip_connections"),
        log()
    );
    let (status, body) = http_get(addr, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    let complaints = promtool_check_metrics(&body);
    assert!(complaints.is_empty(), "promtool: {complaints}");
    let (status, page) = http_get(addr, "/").expect("the map page");
    assert!(
        status == 200 && page.contains("<title>geoip-exporter · live map</title>"),
        "GET / answered {status}"
    );

    drop((early, jp));
    let samples = wait_for(addr, want(1.0, 0.0, 1.0));
    assert!(
        want(1.0, 0.0, 1.0)(&samples),
        "{:?}",
        nonzero(&samples, "geoip_connections")
    );
    let closed = nonzero(&samples, "geoip_connections_closed_total");
    assert_eq!(closed.get(&cd("DE", "outbound")), Some(&1.0), "{closed:?}");
    assert_eq!(closed.get(&cd("JP", "outbound")), Some(&1.0), "{closed:?}");
    drop((de_again, inbound));
    let samples = wait_for(addr, want(0.0, 0.0, 0.0));
    assert!(
        nonzero(&samples, "geoip_connections").is_empty(),
        "{:?}",
        nonzero(&samples, "geoip_connections")
    );
    stop(service);
}

/// The package `cargo xtask test` built (`GEOIP_DEB`).
fn deb_path() -> String {
    std::env::var("GEOIP_DEB").unwrap_or_else(|_| {
        panic!(
            "GEOIP_DEB is not set: run this through `cargo xtask test`, which builds the package (cargo xtask package) and sets it"
        )
    })
}

/// The purge at the end of the install test removes the flags file and the
/// database directory: never run where an operator installed it, by
/// package (even removed but not purged) or by hand.
fn assert_not_installed_here() {
    assert!(
        !known_to_dpkg(),
        "dpkg knows {PACKAGE} on this machine (installed, or removed but not purged); this test installs and purges it: purge it first (dpkg --purge {PACKAGE})"
    );
    for path in [
        "/etc/default/geoip-exporter",
        "/var/lib/geoip-exporter",
        "/usr/bin/geoip-exporter",
        "/usr/lib/systemd/system/geoip-exporter.service",
        "/etc/systemd/system/geoip-exporter.service",
    ] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists: geoip-exporter was installed here by hand; this test would replace and purge it: remove it first"
        );
    }
}

#[test]
fn the_package_installs_runs_with_its_defaults_and_purges_cleanly() {
    let deb = deb_path();
    assert_not_installed_here();
    // Debian's own checks of the package, errors and warnings alike.
    let out = run("lintian", &["--fail-on", "error,warning", &deb]);
    assert!(out.status.success(), "lintian: {}", text(&out));
    let before = tree();

    // Install, as an operator would.
    let _purge = Purge;
    let out = run("dpkg", &["-i", &deb]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    let note = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "geoip-exporter is installed; the service is not started yet",
        "/var/lib/geoip-exporter/country.mmdb",
        "sudo geoip-exporter check",
        "systemctl enable --now geoip-exporter",
    ] {
        assert!(
            note.contains(needle),
            "the post-install note lacks {needle:?}:\n{note}"
        );
    }

    assert_installed_files();

    // The installed unit.
    let unit_path = "/usr/lib/systemd/system/geoip-exporter.service";
    let out = run("systemd-analyze", &["verify", unit_path]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let unit = fs::read_to_string(unit_path).expect("unit");
    let exec = unit_value(&unit, "ExecStart");
    let (program, rest) = exec.split_once(' ').expect("ExecStart= with arguments");
    assert_eq!(
        (program, rest),
        ("/usr/bin/geoip-exporter", "$GEOIP_EXPORTER_ARGS")
    );
    assert_eq!(
        unit_value(&unit, "EnvironmentFile"),
        "-/etc/default/geoip-exporter"
    );
    let caps: Vec<String> = unit_value(&unit, "AmbientCapabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let words = service_words(&fs::read_to_string("/etc/default/geoip-exporter").expect("default"));
    let db = PathBuf::from(flag(&words, "--geoip.database"));
    assert!(
        unit_value(&unit, "BindReadOnlyPaths")
            .split_whitespace()
            .any(|p| db.starts_with(p.trim_start_matches('-'))),
        "the unit lets the service see {}",
        db.display()
    );
    let listen = flag(&words, "--web.listen-address");
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in {listen}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        http_get(addr, "/metrics").is_err(),
        "something already listens on {addr}, the installed default; stop it"
    );

    check_with_the_installed_flags(&db, &caps);

    // The service as its unit runs it: ExecStart= with the installed
    // flags, as a non-root user with the unit's capabilities.
    let dir = temp_dir("install");
    count_real_connections(
        "install",
        addr,
        || {
            let mut service = setpriv(DYNAMIC_UID, &caps);
            service.arg(program).args(&words);
            Exporter::start_listening_at(&dir, service, addr, |a| http_get(a, "/metrics").is_ok())
        },
        |exporter| {
            assert!(
                exporter.stop(libc::SIGTERM).success(),
                "SIGTERM ends the service cleanly"
            );
        },
        || {
            fs::read_to_string(dir.join(format!("exporter-{}.log", addr.port())))
                .unwrap_or_default()
        },
    );

    // Purge: nothing of the package is left.
    let out = run("dpkg", &["--purge", PACKAGE]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    assert!(!known_to_dpkg(), "dpkg still knows {PACKAGE}");
    let after = tree();
    let added: Vec<&PathBuf> = after.difference(&before).collect();
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the purge left {added:?} behind and took {removed:?}"
    );
}

/// A Debian with systemd as PID 1, booted with `systemd-nspawn` from the
/// root `cargo xtask setup` made (`--volatile=overlay`: every change is
/// lost at power-off), sharing the host's network namespace, with
/// `/mnt/pkg` bound to a directory of the host. Powered off on drop.
struct Container {
    nspawn: Child,
    pid1: String,
    machine: String,
}

impl Container {
    fn boot(root: &Path, share: &Path, log: &Path) -> Self {
        let machine = format!("geoipt-{}", std::process::id());
        let log_file = fs::File::create(log).expect("nspawn log");
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(root)
            .args([
                "--boot",
                "--volatile=overlay",
                "--register=no",
                "--keep-unit",
                &format!("--machine={machine}"),
                // What the unit grants must be in the container's bounding
                // set, and its system calls past nspawn's own filter.
                "--capability=CAP_BPF,CAP_PERFMON",
                "--system-call-filter=bpf perf_event_open",
                "--bind-ro=/sys/kernel/tracing",
            ])
            .arg(format!("--bind-ro={}:/mnt/pkg", share.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("systemd-nspawn (cargo xtask setup installs systemd-container)");
        let mut container = Self {
            pid1: String::new(),
            nspawn,
            machine,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        while container.pid1.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 60 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited with {status}:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            container.pid1 = descendant_named(container.nspawn.id(), "systemd").unwrap_or_default();
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let state = container.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd is {state:?} after 60 s: {}",
                container.run_ok(&["systemctl", "--failed", "--no-pager"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        container
    }

    /// `args` run inside the container (all its namespaces).
    fn run(&self, args: &[&str]) -> Output {
        geoip_tests::exporter::run_command_to_exit(
            Command::new("nsenter")
                .args(["--target", &self.pid1, "--all", "--"])
                .args(args),
        )
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "in the container: {args:?}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the service logged (its journal).
    fn journal(&self) -> String {
        self.run_ok(&[
            "journalctl",
            "--unit",
            PACKAGE,
            "--output",
            "cat",
            "--no-pager",
        ])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.pid1.is_empty() {
            let _ = self.run(&["systemctl", "poweroff"]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nspawn.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.machine));
    }
}

/// The first process below `pid` (children first) whose name is `name`.
fn descendant_named(pid: u32, name: &str) -> Option<String> {
    let mut todo = vec![pid.to_string()];
    while let Some(pid) = todo.pop() {
        for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace() {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == name {
                    return Some(child.to_owned());
                }
                todo.push(child.to_owned());
            }
        }
    }
    None
}

/// The hexadecimal capability set `field` (`CapEff`, `CapBnd`) of a
/// `/proc/PID/status` text.
fn cap_set(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// The running service is its dynamic user, not root; after start-up it
/// holds no capability (its snapshot thread keeps only what the unit does
/// not grant anyway), and could never hold more than the unit's three.
fn assert_runs_unprivileged(container: &Container) {
    let pid = container.run_ok(&[
        "systemctl",
        "show",
        "--property=MainPID",
        "--value",
        PACKAGE,
    ]);
    let status = container.run_ok(&["cat", &format!("/proc/{}/status", pid.trim())]);
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .expect("Uid");
    assert_ne!(uid, "0", "the service runs as root:\n{status}");
    assert_eq!(
        cap_set(&status, "CapEff"),
        0,
        "capabilities kept:\n{status}"
    );
    let unit_caps = (1 << 39) | (1 << 38) | (1 << 2); // BPF, PERFMON, DAC_READ_SEARCH
    assert_eq!(cap_set(&status, "CapBnd"), unit_caps, "{status}");
}

#[test]
fn the_packaged_service_runs_under_systemd() {
    let deb = deb_path();
    let root = std::env::var_os("GEOIP_SYSTEMD_ROOT").map_or_else(
        || panic!("GEOIP_SYSTEMD_ROOT is not set: run this through `cargo xtask test` (its setup makes the root with debootstrap)"),
        PathBuf::from,
    );
    assert!(
        root.join(".geoip-systemd-root").is_file(),
        "{} is not a finished root: run cargo xtask setup",
        root.display()
    );
    let share = temp_dir("install-systemd");
    fs::copy(&deb, share.join("geoip-exporter.deb")).expect("copy the package");
    write_database(&share.join("country.mmdb"));
    let addr: SocketAddr = ([127, 0, 0, 1], 9300).into();
    assert!(
        http_get(addr, "/metrics").is_err(),
        "something already listens on {addr}, the packaged default; stop it"
    );

    let container = Container::boot(&root, &share, &share.join("nspawn.log"));
    container.run_ok(&["dpkg", "-i", "/mnt/pkg/geoip-exporter.deb"]);
    container.run_ok(&[
        "install",
        "-m",
        "0644",
        "/mnt/pkg/country.mmdb",
        "/var/lib/geoip-exporter/country.mmdb",
    ]);
    let check = container.run(&["geoip-exporter", "check"]);
    assert_eq!(check.status.code(), Some(0), "check: {}", text(&check));

    count_real_connections(
        "systemd",
        addr,
        || {
            container.run_ok(&["systemctl", "enable", "--now", PACKAGE]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while http_get(addr, "/metrics").is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the service does not serve after 30 s:\n{}\n{}",
                    container
                        .run(&["systemctl", "status", "--no-pager", PACKAGE])
                        .stdout
                        .escape_ascii(),
                    container.journal()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_runs_unprivileged(&container);
        },
        |()| {
            container.run_ok(&["systemctl", "stop", PACKAGE]);
            let result =
                container.run_ok(&["systemctl", "show", "--property=Result", "--value", PACKAGE]);
            assert_eq!(result.trim(), "success", "{}", container.journal());
        },
        || container.journal(),
    );

    // It logged no error and one warning, the documented one: the unit
    // does not grant what reading other network namespaces needs. Any
    // other would be something the unit's sandbox refused it (dropping
    // its capabilities, lowering its snapshot thread's priority, ...).
    let journal = container.journal();
    for needle in ["capabilities dropped", "serving metrics", "shutting down"] {
        assert!(
            journal.contains(needle),
            "the journal lacks {needle:?}:\n{journal}"
        );
    }
    let expected = " WARN without these capabilities only the exporter's own network namespace";
    let bad: Vec<&str> = journal
        .lines()
        .filter(|l| (l.contains(" WARN ") && !l.contains(expected)) || l.contains(" ERROR "))
        .collect();
    assert!(
        bad.is_empty(),
        "the service warned under its unit:\n{}",
        bad.join("\n")
    );

    container.run_ok(&["dpkg", "--purge", PACKAGE]);
    let left = container.run(&[
        "ls",
        "-d",
        "/var/lib/geoip-exporter",
        "/etc/default/geoip-exporter",
        "/etc/systemd/system/multi-user.target.wants/geoip-exporter.service",
    ]);
    assert!(
        left.stdout.is_empty(),
        "the purge under systemd left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
