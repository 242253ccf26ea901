//! Files the exporter does not control, as a running exporter meets them
//! (issue 15; what they do at start-up is in the hostile catalogue): a
//! database replaced by a crafted tree, a pipe, a device or a sparse file
//! is refused and the old one serves, and the next good one applies; a
//! `check` of each ends at once; the database directory replaced whole is
//! watched again; a SIGHUP during start-up reloads instead of ending it; a
//! reload fits in the memory the start-up said it needs. SIGTERM ends the
//! exporter within a second after each.
#![expect(
    clippy::float_cmp,
    reason = "sample values are integers, compared exactly"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    crafted,
    exporter::{Exporter, Samples, bin, run_to_exit, temp_dir},
    mmdb::{Value, Writer},
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

/// A country database of one network, of `database_type`, in `code`.
fn write_country(path: &Path, database_type: &str, code: &str) {
    let mut w = Writer::new(database_type, 6);
    w.insert(
        "192.0.2.0/24",
        Value::map([("country_code", Value::str(code))]),
    )
    .expect("insert");
    w.write(path).expect("write database");
}

fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn reloads(samples: &Samples, result: &str) -> f64 {
    value(
        samples,
        &format!("geoip_exporter_database_reloads_total{{result=\"{result}\"}}"),
    )
}

/// The `type` of the database the API says is in use.
fn database_type(exporter: &Exporter) -> String {
    let (_, body) = exporter.get("/api/v1/countries").expect("countries api");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    json["database"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Put what `make` makes at `staged` in place of `target` by rename.
fn replace(target: &Path, make: impl FnOnce(&Path)) {
    let staged = target.with_extension("staged");
    let _ = fs::remove_file(&staged);
    make(&staged);
    fs::rename(&staged, target).expect("rename");
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// Makes a file at a path.
type Make = fn(&Path);

/// SIGTERM, and the exit within a second.
fn stop_within_a_second(exporter: Exporter) {
    let started = Instant::now();
    let status = exporter.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

/// What cannot be read in place of the database: each refused by the
/// reload (a failure counted, the old database serving, the exporter
/// healthy), then a good one applies; `check` of each ends within 5 s.
#[test]
fn a_database_replaced_by_what_cannot_be_read_keeps_the_old_one() {
    let dir = temp_dir("untrusted-reload");
    let db = dir.join("country.mmdb");
    write_country(&db, "Test-Country-A", "DE");
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    assert_eq!(database_type(&exporter), "Test-Country-A");
    let bad: [(&str, Make); 5] = [
        ("shared nodes", |p| {
            fs::write(p, crafted::shared_nodes(60, true)).expect("write");
        }),
        ("a circle", |p| {
            fs::write(p, crafted::circular()).expect("write");
        }),
        ("a named pipe", mkfifo),
        ("a link to /dev/zero", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).expect("symlink");
        }),
        ("a sparse 10 GiB file", |p| {
            fs::File::create(p)
                .and_then(|f| f.set_len(10 << 30))
                .expect("sparse");
        }),
    ];
    for (i, (what, make)) in bad.iter().enumerate() {
        let started = Instant::now();
        replace(&db, make);
        let failures = f64::from(u8::try_from(i + 1).expect("few"));
        let s = exporter.wait_for(|s| reloads(s, "failure") == failures);
        assert_eq!(
            reloads(&s, "failure"),
            failures,
            "{what}: {}",
            exporter.log()
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        assert_eq!(
            value(&s, "geoip_exporter_database_last_reload_successful"),
            0.0
        );
        assert_eq!(database_type(&exporter), "Test-Country-A", "{what}");
        assert_eq!(exporter.get("/healthz").map(|r| r.0).ok(), Some(200));
        let started = Instant::now();
        let out = run_to_exit(&[
            "check",
            "--geoip.database",
            db.to_str().expect("utf-8"),
            "--web.listen-address=127.0.0.1:0",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "check of {what}: {stdout}");
        assert!(stdout.contains("FAILED  database"), "{what}: {stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "check of {what}"
        );
    }
    replace(&db, |p| write_country(p, "Test-Country-B", "FR"));
    let s = exporter.wait_for(|s| reloads(s, "success") == 1.0);
    assert_eq!(reloads(&s, "success"), 1.0, "{}", exporter.log());
    assert_eq!(database_type(&exporter), "Test-Country-B");
    stop_within_a_second(exporter);
}

/// The directory of the database removed and made again (an updater that
/// replaces it whole): the loss is logged, and a database put in the new
/// directory is reloaded.
#[test]
fn a_database_directory_replaced_whole_is_watched_again() {
    let dir = temp_dir("untrusted-dir");
    let sub = dir.join("db");
    fs::create_dir_all(&sub).expect("mkdir");
    let db = sub.join("country.mmdb");
    write_country(&db, "Test-Country-A", "DE");
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    fs::remove_dir_all(&sub).expect("rm -r");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exporter.log().contains("is gone") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(exporter.log().contains("is gone"), "{}", exporter.log());
    fs::create_dir_all(&sub).expect("mkdir");
    write_country(&db, "Test-Country-B", "FR");
    let s = exporter.wait_for(|s| reloads(s, "success") == 1.0);
    assert_eq!(reloads(&s, "success"), 1.0, "{}", exporter.log());
    assert_eq!(database_type(&exporter), "Test-Country-B");
    assert!(exporter.log().contains("is back"), "{}", exporter.log());
    // And a later replacement is seen too.
    replace(&db, |p| write_country(p, "Test-Country-C", "JP"));
    let s = exporter.wait_for(|s| reloads(s, "success") == 2.0);
    assert_eq!(reloads(&s, "success"), 2.0, "{}", exporter.log());
    stop_within_a_second(exporter);
}

/// A database with `networks` /24 networks of 1.0.0.0/8 and beyond: one
/// whose loading takes a while.
fn write_big(path: &Path, networks: u32) {
    let mut w = Writer::new("Test-Country-Big", 6);
    let codes = ["DE", "FR", "JP", "BR"];
    for i in 0..networks {
        let net = std::net::Ipv4Addr::from((1u32 << 24) + (i << 8));
        w.insert(
            &format!("{net}/24"),
            Value::map([("country_code", Value::str(codes[i as usize % 4]))]),
        )
        .expect("insert");
    }
    w.write(path).expect("write database");
}

/// A SIGHUP that comes while the exporter starts (a `systemctl reload` or
/// a log rotator at the wrong moment) is held, then reloads: the exporter
/// lives, serves, and counts the reload.
#[test]
fn a_sighup_during_start_up_reloads_instead_of_ending_it() {
    let dir = temp_dir("untrusted-hup");
    let db = dir.join("big.mmdb");
    write_big(&db, 60_000);
    for delay_ms in [50, 100, 250, 500] {
        let port = geoip_tests::exporter::free_port();
        let mut child = Command::new(bin())
            .args(["--geoip.database", db.to_str().expect("utf-8")])
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stderr(fs::File::create(dir.join(format!("hup-{delay_ms}.log"))).expect("log"))
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut reloaded = false;
        while Instant::now() < deadline {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "SIGHUP {delay_ms} ms after start ended it: {}",
                fs::read_to_string(dir.join(format!("hup-{delay_ms}.log"))).unwrap_or_default()
            );
            if let Ok((200, body)) = geoip_tests::exporter::http_get(addr, "/metrics") {
                let s = geoip_tests::exporter::parse(&body);
                if reloads(&s, "success") >= 1.0 {
                    reloaded = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(reloaded, "SIGHUP {delay_ms} ms after start: no reload");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            assert!(started.elapsed() < Duration::from_secs(1), "SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A memory cgroup of this test's own: cgroup v1 (`memory.limit_in_bytes`)
/// under the cgroup this test runs in, or v2 (`memory.max`) under the
/// root, whose children get the memory controller when it is asked for
/// (the test's own v2 cgroup holds processes, so its children cannot).
struct MemoryCgroup {
    dir: PathBuf,
    limit_file: &'static str,
    usage_file: &'static str,
}

impl MemoryCgroup {
    fn create(name: &str) -> Option<Self> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let (root, path, limit_file, usage_file) =
            if let Some(l) = own.lines().find(|l| l.split(':').nth(1) == Some("memory")) {
                let path = l.splitn(3, ':').nth(2)?.to_owned();
                (
                    "/sys/fs/cgroup/memory",
                    path,
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                )
            } else {
                let control = Path::new("/sys/fs/cgroup/cgroup.subtree_control");
                let enabled = fs::read_to_string(control).ok()?;
                if !enabled.split_whitespace().any(|c| c == "memory") {
                    fs::write(control, "+memory").ok()?;
                }
                (
                    "/sys/fs/cgroup",
                    String::new(),
                    "memory.max",
                    "memory.current",
                )
            };
        let dir = Path::new(root)
            .join(path.trim_start_matches('/'))
            .join(format!("geoip-test-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).ok()?;
        dir.join(limit_file).exists().then_some(Self {
            dir,
            limit_file,
            usage_file,
        })
    }

    fn usage(&self) -> u64 {
        fs::read_to_string(self.dir.join(self.usage_file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Usage less the page cache the kernel can reclaim: what the
    /// exporter's room is counted from.
    fn unreclaimable(&self) -> u64 {
        let v1 = self.limit_file == "memory.limit_in_bytes";
        let keys: [&str; 2] = if v1 {
            ["total_active_file", "total_inactive_file"]
        } else {
            ["active_file", "inactive_file"]
        };
        let stat = fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let cache: u64 = stat
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| keys.contains(k))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum();
        self.usage().saturating_sub(cache)
    }

    fn limit(&self, bytes: u64) {
        fs::write(self.dir.join(self.limit_file), bytes.to_string()).expect("set the limit");
    }

    /// A shell that enters the cgroup, then runs the exporter.
    fn command(&self) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(bin());
        cmd
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// In a memory cgroup limited to what the exporter holds after start-up
/// plus the room it logged a reload needs (and 8 MiB), a reload of its
/// databases (a country and a large city database) succeeds, and it
/// lives. Limited to what it holds plus half the city database, the next
/// reload is refused, the limit named, and it lives and serves on.
#[test]
fn a_reload_fits_in_the_memory_start_up_said_it_needs() {
    let dir = temp_dir("untrusted-memory");
    let Some(cgroup) = MemoryCgroup::create("reload") else {
        panic!(
            "no memory cgroup to make under this test's own (cgroup v1 or v2 with the memory controller)"
        );
    };
    let country = dir.join("country.mmdb");
    write_big(&country, 60_000);
    let city = dir.join("city.mmdb");
    let mut w = Writer::new("GeoLite2-City", 6);
    for i in 0u32..120_000 {
        let net = std::net::Ipv4Addr::from((1u32 << 24) + (i << 8));
        w.insert(
            &format!("{net}/24"),
            Value::map([
                ("city", Value::str(format!("Town {i}"))),
                ("country_code", Value::str("DE")),
                ("latitude", Value::Double(f64::from(i % 90))),
                ("longitude", Value::Double(f64::from(i % 180))),
            ]),
        )
        .expect("insert");
    }
    w.write(&city).expect("write city");
    let mut cmd = cgroup.command();
    cmd.args([
        "--geoip.database",
        country.to_str().expect("utf-8"),
        "--geoip.database",
        city.to_str().expect("utf-8"),
        "--labels=city",
    ]);
    let exporter = Exporter::start_command(&dir, cmd, |addr| {
        geoip_tests::exporter::http_get(addr, "/metrics").is_ok()
    });
    let log = exporter.log();
    let needs: u64 = log
        .split("reload_needs_bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reload_needs_bytes in the log:\n{log}"));
    assert!(
        needs > 10 << 20,
        "the city database alone is larger: {needs}"
    );
    let usage = cgroup.usage();
    cgroup.limit(usage + needs + (8 << 20));
    let pid = i32::try_from(exporter.pid()).expect("pid");
    // SAFETY: kill(2) on the test's own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let s = exporter.wait_for(|s| reloads(s, "success") == 1.0);
    assert_eq!(
        reloads(&s, "success"),
        1.0,
        "limit {} = {usage} + {needs} + 8 MiB:\n{}",
        usage + needs + (8 << 20),
        exporter.log()
    );
    assert_eq!(exporter.get("/healthz").map(|r| r.0).ok(), Some(200));

    let city_bytes = fs::metadata(&city).expect("city").len();
    let tight = cgroup.unreclaimable() + city_bytes / 2;
    cgroup.limit(tight);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let s = exporter.wait_for(|s| reloads(s, "failure") == 1.0);
    let log = exporter.log();
    assert_eq!(reloads(&s, "failure"), 1.0, "limit {tight}:\n{log}");
    assert!(
        log.contains("cannot read GeoIP database") && log.contains("leaves room for"),
        "the refusal names the room:\n{log}"
    );
    assert!(log.contains("the memory cgroup"), "and the limit:\n{log}");
    assert_eq!(exporter.get("/healthz").map(|r| r.0).ok(), Some(200));
    stop_within_a_second(exporter);
}
