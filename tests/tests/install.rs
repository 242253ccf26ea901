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
    process::{Command, Output},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{
        Exporter, Samples, cd, http_get, nonzero, promtool_check_metrics, setpriv, temp_dir,
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

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PACKAGE])
        .stdout
        .starts_with(b"install ok installed")
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
        if installed() || run("dpkg-query", &["-W", PACKAGE]).status.success() {
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

/// The check's status word for `item`.
fn check_status<'a>(stdout: &'a str, item: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.get(8..24).is_some_and(|i| i.trim_end() == item))
        .and_then(|l| l.get(..8))
        .map_or_else(|| panic!("no {item} line:\n{stdout}"), str::trim_end)
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

/// The service, started as the installed unit starts it, counts real
/// connections exactly, serves a clean `/metrics` and the map, and stops on
/// SIGTERM.
fn count_real_connections(program: &str, words: &[String], caps: &[String], addr: SocketAddr) {
    // Real connections: one opened before the service starts (found by
    // its start-up snapshot), the rest after (reported by the kernel).
    let net = TestNet::create("install", &[DE, JP, BR_V6]);
    let _remote = net.serve(REMOTE_PORT);
    let (_local, local_port) = host_listener();
    let target = |ip: &str| SocketAddr::new(ip.parse::<IpAddr>().expect("address"), REMOTE_PORT);
    let early = net.connect_to(target(DE));

    let dir = temp_dir("install");
    let mut service = setpriv(DYNAMIC_UID, caps);
    service.arg(program).args(words);
    let exporter =
        Exporter::start_listening_at(&dir, service, addr, |a| http_get(a, "/metrics").is_ok());
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
    let samples = exporter.wait_for(want(2.0, 1.0, 1.0));
    assert!(
        want(2.0, 1.0, 1.0)(&samples),
        "{:?}\n{}",
        nonzero(&samples, "geoip_connections"),
        exporter.log()
    );
    let body = exporter.scrape();
    let complaints = promtool_check_metrics(&body);
    assert!(complaints.is_empty(), "promtool: {complaints}");
    let (status, page) = exporter.get("/").expect("the map page");
    assert!(
        status == 200 && page.contains("<title>geoip-exporter · live map</title>"),
        "GET / answered {status}"
    );

    drop((early, jp));
    let samples = exporter.wait_for(want(1.0, 0.0, 1.0));
    assert!(
        want(1.0, 0.0, 1.0)(&samples),
        "{:?}",
        nonzero(&samples, "geoip_connections")
    );
    let closed = nonzero(&samples, "geoip_connections_closed_total");
    assert_eq!(closed.get(&cd("DE", "outbound")), Some(&1.0), "{closed:?}");
    assert_eq!(closed.get(&cd("JP", "outbound")), Some(&1.0), "{closed:?}");
    drop((de_again, inbound));
    let samples = exporter.wait_for(want(0.0, 0.0, 0.0));
    assert!(
        nonzero(&samples, "geoip_connections").is_empty(),
        "{:?}",
        nonzero(&samples, "geoip_connections")
    );
    assert!(
        exporter.stop(libc::SIGTERM).success(),
        "SIGTERM ends the service cleanly"
    );
}

#[test]
fn the_package_installs_runs_with_its_defaults_and_purges_cleanly() {
    let deb = std::env::var_os("GEOIP_DEB").map_or_else(
        || panic!("GEOIP_DEB is not set: run this through `cargo xtask test`, which builds the package (cargo xtask package) and sets it"),
        PathBuf::from,
    );
    let deb = deb.to_str().expect("utf-8 path").to_owned();
    // The purge at the end removes the flags file and the database
    // directory: never run where an operator installed it, by package
    // (even removed but not purged) or by hand.
    assert!(
        !run("dpkg-query", &["-W", PACKAGE]).status.success(),
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

    count_real_connections(program, &words, &caps, addr);

    // Purge: nothing of the package is left.
    let out = run("dpkg", &["--purge", PACKAGE]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    assert!(
        !run("dpkg-query", &["-W", PACKAGE]).status.success(),
        "dpkg still knows {PACKAGE}"
    );
    let after = tree();
    let added: Vec<&PathBuf> = after.difference(&before).collect();
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the purge left {added:?} behind and took {removed:?}"
    );
}
