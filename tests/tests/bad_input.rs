//! Bad input and a bad environment: a clear message naming the value and
//! what to do, the documented exit code, and nothing left half-started.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{
        bin, check_lines, check_status, free_port, run_command_to_exit, run_to_exit, setpriv,
        temp_dir, world_readable,
    },
    fixtures::{write_asn_database, write_database},
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Assert the exit code and that stderr contains every `needle`.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

fn good_db(dir: &Path) -> PathBuf {
    let db = dir.join("good.mmdb");
    write_database(&db);
    db
}

fn listen_arg() -> String {
    format!("--web.listen-address=127.0.0.1:{}", free_port())
}

fn run_db(db: &Path) -> Output {
    run_to_exit(&[
        "--geoip.database",
        db.to_str().expect("utf-8"),
        &listen_arg(),
    ])
}

#[test]
fn database_problems_are_usage_errors_naming_the_file() {
    let dir = temp_dir("bad-db");
    let missing = dir.join("missing.mmdb");
    assert_fails(
        &run_db(&missing),
        2,
        &[
            missing.to_str().expect("utf-8"),
            "no such file",
            "--geoip.database",
            "cargo xtask fetch-db",
        ],
    );

    // A directory cannot be read as a file.
    assert_fails(
        &run_db(&dir),
        2,
        &[
            dir.to_str().expect("utf-8"),
            "cannot be used: it is a directory, not a regular file",
        ],
    );

    let empty = dir.join("empty.mmdb");
    fs::write(&empty, b"").expect("write");
    assert_fails(&run_db(&empty), 2, &["empty.mmdb is empty (0 bytes)"]);

    let text = dir.join("notes.mmdb");
    fs::write(&text, "not a database\n".repeat(100)).expect("write");
    assert_fails(
        &run_db(&text),
        2,
        &[
            "notes.mmdb is not a MaxMind DB (.mmdb) file or is damaged",
            "caused by:",
        ],
    );

    let good = fs::read(good_db(&dir)).expect("read");
    let truncated = dir.join("truncated.mmdb");
    fs::write(&truncated, &good[..good.len() * 2 / 3]).expect("write");
    assert_fails(
        &run_db(&truncated),
        2,
        &["truncated.mmdb is not a MaxMind DB"],
    );

    let asn_path = dir.join("GeoLite2-ASN.mmdb");
    write_asn_database(&asn_path);
    assert_fails(
        &run_db(&asn_path),
        2,
        &[
            "GeoLite2-ASN.mmdb (type \"GeoLite2-ASN\") has no country data",
            "Country or City database",
        ],
    );
}

#[test]
fn bad_flags_are_usage_errors_naming_the_value() {
    let dir = temp_dir("bad-flags");
    let db = good_db(&dir);
    let db = db.to_str().expect("utf-8");
    for (flags, needle) in [
        (
            vec!["--exclude", "203.0.113.0/33"],
            "invalid CIDR \"203.0.113.0/33\": prefix length 33",
        ),
        (
            vec!["--exclude", "203.0.113.1/24"],
            "did you mean 203.0.113.0/24?",
        ),
        (
            vec!["--exclude", "example.com"],
            "invalid CIDR \"example.com\"",
        ),
        (
            vec!["--web.listen-address", "localhost:9300"],
            "\"localhost:9300\" is not IP:PORT",
        ),
        (
            vec!["--web.telemetry-path", "metrics"],
            "\"metrics\" is not a usable path",
        ),
        (
            vec!["--ringbuf.size-bytes", "1000"],
            "\"1000\" is not a power of two",
        ),
        (
            vec!["--no-such-flag"],
            "unexpected argument '--no-such-flag'",
        ),
    ] {
        let mut args = vec!["--geoip.database", db];
        args.extend(&flags);
        assert_fails(&run_to_exit(&args), 2, &[needle]);
    }
}

#[test]
fn address_in_use_is_a_usage_error_before_anything_is_loaded() {
    let dir = temp_dir("in-use");
    let db = good_db(&dir);
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = run_to_exit(&[
        "--geoip.database",
        db.to_str().expect("utf-8"),
        "--web.listen-address",
        &addr.to_string(),
    ]);
    assert_fails(
        &out,
        2,
        &[
            &format!("cannot listen on {addr}: address already in use"),
            "--web.listen-address",
        ],
    );
    assert!(
        !stderr(&out).contains("kernel program attached"),
        "nothing is loaded into the kernel before the listen address is known to work"
    );
}

#[test]
fn without_privileges_it_says_which_capabilities_are_missing() {
    let (exe, db) = world_readable("unprivileged");
    let out = run_command_to_exit(setpriv(65_534, &[]).arg(&exe).args([
        "--geoip.database",
        db.to_str().expect("utf-8"),
        &listen_arg(),
    ]));
    assert_fails(
        &out,
        1,
        &[
            "not permitted to load eBPF programs: missing CAP_BPF and CAP_PERFMON",
            "run as root",
        ],
    );
}

#[test]
fn without_tracefs_it_says_how_to_mount_it() {
    let dir = temp_dir("no-tracefs");
    let db = good_db(&dir);
    // A private mount namespace where tracefs (and debugfs) are unmounted.
    let script = format!(
        "for m in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do \
           umount -l $m 2>/dev/null; done; exec {} --geoip.database {} {}",
        bin().display(),
        db.display(),
        listen_arg()
    );
    let out = run_command_to_exit(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    );
    assert_fails(
        &out,
        1,
        &[
            "tracefs is not mounted",
            "mount -t tracefs tracefs /sys/kernel/tracing",
        ],
    );
    assert!(
        Path::new("/sys/kernel/tracing/events").is_dir(),
        "the test's own mount namespace still has tracefs"
    );
}

/// The items of `geoip-exporter check`, in order.
const CHECK_ITEMS: [&str; 9] = [
    "kernel",
    "BTF",
    "tracepoint",
    "capabilities",
    "ring buffer",
    "database",
    "listen address",
    "kernel program",
    "connections",
];

/// A check that exited 1 with these items at these statuses; its stdout.
fn assert_check_failed(out: &Output, statuses: &[(&str, &str)]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for (item, want) in statuses {
        assert_eq!(check_status(&stdout, item), *want, "{item}:\n{stdout}");
    }
    stdout
}

#[test]
fn check_passes_item_by_item_on_this_host() {
    let dir = temp_dir("check");
    let db = good_db(&dir);
    let db = db.to_str().expect("utf-8");
    // The command and the flag are the same check.
    for first in ["check", "--check"] {
        let out = run_to_exit(&[first, "--geoip.database", db, &listen_arg()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\nstderr:\n{}",
            stderr(&out)
        );
        let lines = check_lines(&stdout);
        let items: Vec<&str> = lines.iter().map(|(_, i, _)| i.as_str()).collect();
        assert_eq!(items, CHECK_ITEMS, "{stdout}");
        for (status, item, text) in &lines {
            assert_eq!(status, "ok", "{item}: {text}");
        }
        let text =
            |item: &str| &lines[CHECK_ITEMS.iter().position(|i| *i == item).expect("item")].2;
        assert!(
            text("database").starts_with(&format!("{db}: type ")),
            "{stdout}"
        );
        assert!(text("ring buffer").contains("4194304-byte"), "{stdout}");
        assert!(
            text("connections").contains("established connection(s)"),
            "{stdout}"
        );
        assert!(stdout.starts_with("flags: as given ("), "{stdout}");
        assert!(
            stdout.ends_with(
                "check passed: this host can run geoip-exporter with these flags (0 warning(s))\n"
            ),
            "{stdout}"
        );
    }
}

#[test]
fn check_lists_every_failure_with_what_to_do_and_exits_1() {
    let dir = temp_dir("check-fails");
    let missing = dir.join("missing.mmdb");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let out = run_to_exit(&[
        "check",
        "--geoip.database",
        missing.to_str().expect("utf-8"),
        "--web.listen-address",
        &busy_addr,
    ]);
    let stdout = assert_check_failed(
        &out,
        &[
            ("kernel", "ok"),
            ("capabilities", "ok"),
            ("database", "FAILED"),
            ("listen address", "FAILED"),
            ("kernel program", "skipped"),
            ("connections", "skipped"),
        ],
    );
    for needle in [
        missing.to_str().expect("utf-8"),
        "no such file",
        "/etc/default/geoip-exporter",
        "Get a database",
        &format!("{busy_addr} is in use"),
        "pass another --web.listen-address",
        "check failed: 2 item(s) failed",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }

    // Not root, no capabilities: the privilege items fail, with the
    // remedy, and the ring buffer is not tried.
    let (exe, db) = world_readable("check-unprivileged");
    let out = run_command_to_exit(setpriv(65_534, &[]).arg(&exe).args([
        "check",
        "--geoip.database",
        db.to_str().expect("utf-8"),
        &listen_arg(),
    ]));
    let stdout = assert_check_failed(
        &out,
        &[
            ("database", "ok"),
            ("tracepoint", "FAILED"),
            ("capabilities", "FAILED"),
            ("namespaces", "warn"),
            ("ring buffer", "skipped"),
            ("kernel program", "skipped"),
        ],
    );
    for needle in [
        "missing CAP_BPF and CAP_PERFMON",
        "CAP_DAC_READ_SEARCH",
        "run as root",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }
    drop(busy);
}
