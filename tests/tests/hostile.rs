//! Hostile input, catalogued: every bad value a flag, a database file, a
//! web config file or an HTTP request can carry, each with the clear error
//! (exit code 2 for usage) or HTTP status it must get, while an exporter
//! with live connections runs beside them; afterwards that exporter is
//! still healthy and its counts exact.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::Duration,
};

use bcrypt as _;
use geoip_tests::{
    crafted,
    exporter::{Exporter, cd, run_command_to_exit, run_to_exit, setpriv, temp_dir, world_readable},
    fixtures::{write_asn_database, write_database},
    netns::{TestNet, sock},
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

/// The test host the running exporter counts (DE in the test database).
const HOST: &str = "192.0.2.51";

/// A named pipe at `path`.
fn make_fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// One bad command line: the extra flags, the exit code, and text the
/// error must contain.
struct Case {
    what: String,
    flags: Vec<String>,
    code: i32,
    needle: String,
}

fn case(what: &str, flags: &[&str], code: i32, needle: &str) -> Case {
    Case {
        what: what.to_owned(),
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        code,
        needle: needle.to_owned(),
    }
}

/// Bad flag values: CIDRs, ports and addresses, paths, durations, sizes.
#[expect(clippy::too_many_lines, reason = "a table, one case a line")]
fn flag_cases(running: SocketAddr) -> Vec<Case> {
    let in_use = format!("--web.listen-address={running}");
    vec![
        case(
            "CIDR prefix too long",
            &["--exclude", "10.0.0.0/33"],
            2,
            "\"10.0.0.0/33\"",
        ),
        case(
            "CIDR v6 prefix too long",
            &["--exclude", "2001:db8::/129"],
            2,
            "\"2001:db8::/129\"",
        ),
        case(
            "CIDR not an address",
            &["--exclude", "banana/8"],
            2,
            "\"banana/8\"",
        ),
        case(
            "CIDR empty in a list",
            &["--exclude", "10.0.0.0/8,,"],
            2,
            "--exclude",
        ),
        case(
            "CIDR host bits and junk",
            &["--exclude", "10.0.0.1/8x"],
            2,
            "\"10.0.0.1/8x\"",
        ),
        case(
            "CIDR negative prefix",
            &["--exclude", "10.0.0.0/-1"],
            2,
            "\"10.0.0.0/-1\"",
        ),
        case(
            "listen port too big",
            &["--web.listen-address", ":65536"],
            2,
            "\":65536\"",
        ),
        case(
            "listen host name",
            &["--web.listen-address", "localhost:9300"],
            2,
            "\"localhost:9300\"",
        ),
        case(
            "listen no port",
            &["--web.listen-address", "127.0.0.1"],
            2,
            "\"127.0.0.1\"",
        ),
        case("listen address in use", &[&in_use], 2, "already in use"),
        case(
            "telemetry path relative",
            &["--web.telemetry-path", "metrics"],
            2,
            "\"metrics\"",
        ),
        case(
            "telemetry path root",
            &["--web.telemetry-path", "/"],
            2,
            "\"/\"",
        ),
        case(
            "telemetry path under /api",
            &["--web.telemetry-path", "/api/m"],
            2,
            "\"/api/m\"",
        ),
        case(
            "telemetry path with space",
            &["--web.telemetry-path", "/a b"],
            2,
            "\"/a b\"",
        ),
        case(
            "telemetry path of the map's shapes",
            &["--web.telemetry-path", "/assets/world.json"],
            2,
            "\"/assets/world.json\" is not a usable path",
        ),
        case(
            "telemetry path a capture",
            &["--web.telemetry-path", "/:p"],
            2,
            "\"/:p\" is not a usable path",
        ),
        case(
            "telemetry path with a capture",
            &["--web.telemetry-path", "/x/:y"],
            2,
            "\"/x/:y\" is not a usable path",
        ),
        case(
            "reconcile interval too short",
            &["--reconcile.interval", "1ms"],
            2,
            "\"1ms\" is shorter than the least, 1s",
        ),
        case(
            "bytes interval too short",
            &["--metrics.bytes-interval", "1ms"],
            2,
            "\"1ms\" is shorter than the least, 1s",
        ),
        case(
            "reconcile interval unit",
            &["--reconcile.interval", "5x"],
            2,
            "\"5x\"",
        ),
        case(
            "reconcile interval negative",
            &["--reconcile.interval=-5s"],
            2,
            "\"-5s\"",
        ),
        case(
            "reconcile interval overflow",
            &["--reconcile.interval", "99999999999999h"],
            2,
            "99999999999999h",
        ),
        case(
            "header timeout zero",
            &["--web.read-header-timeout", "0"],
            2,
            "\"0\"",
        ),
        case(
            "ring not a power of two",
            &["--ringbuf.size-bytes", "5000"],
            2,
            "\"5000\"",
        ),
        case(
            "ring below a page",
            &["--ringbuf.size-bytes", "2048"],
            2,
            "\"2048\"",
        ),
        case(
            "ring beyond 32 bits",
            &["--ringbuf.size-bytes", "8589934592"],
            2,
            "\"8589934592\"",
        ),
        case(
            "max connections zero",
            &["--web.max-connections", "0"],
            2,
            "\"0\"",
        ),
        case(
            "max header bytes tiny",
            &["--web.max-header-bytes", "12"],
            2,
            "\"12\"",
        ),
        case("log level", &["--log.level", "loud"], 2, "loud"),
        case("unknown flag", &["--no-such-flag"], 2, "--no-such-flag"),
        case("flag without its value", &["--exclude"], 2, "--exclude"),
    ]
}

/// Bad database files, each written into `dir`.
fn database_cases(dir: &Path) -> Vec<Case> {
    let good = fs::read(dir.join("good.mmdb")).expect("good db");
    let mut cases = Vec::new();
    let mut file = |name: &str, bytes: &[u8], needle: &str| {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write");
        let p = path.to_str().expect("utf-8").to_owned();
        cases.push(case(
            &format!("database {name}"),
            &["--geoip.database", &p],
            2,
            needle,
        ));
    };
    file("empty.mmdb", b"", "empty.mmdb is empty");
    for (i, cut) in [
        1,
        good.len() / 10,
        good.len() / 2,
        good.len() * 9 / 10,
        good.len() - 1,
    ]
    .into_iter()
    .enumerate()
    {
        file(
            &format!("cut{i}.mmdb"),
            &good[..cut],
            &format!("cut{i}.mmdb is not a MaxMind DB"),
        );
    }
    let random: Vec<u8> = (0u32..65_536)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    file("random.mmdb", &random, "random.mmdb is not a MaxMind DB");
    // A metadata marker followed by a metadata map claiming a huge string.
    let mut huge = random.clone();
    huge.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    huge.extend_from_slice(&[0xe1, 0x4b]);
    huge.extend_from_slice(b"description");
    huge.extend_from_slice(&[0x5f, 0xff, 0xff, 0xff]);
    file(
        "huge-metadata.mmdb",
        &huge,
        "huge-metadata.mmdb is not a MaxMind DB",
    );
    // Metadata only, no tree at all.
    file(
        "metadata-only.mmdb",
        &good[good.len() - 600.min(good.len())..],
        "metadata-only.mmdb",
    );
    // Structurally valid files whose search trees no walk finishes.
    file(
        "shared-nodes.mmdb",
        &crafted::shared_nodes(60, true),
        "unfolds into more than",
    );
    file(
        "shared-nodes-empty.mmdb",
        &crafted::shared_nodes(60, false),
        "unfolds into more than",
    );
    file(
        "circle.mmdb",
        &crafted::circular(),
        "deeper than an address",
    );
    let asn = dir.join("asn.mmdb");
    write_asn_database(&asn);
    cases.push(case(
        "database of another type (ASN)",
        &["--geoip.database", asn.to_str().expect("utf-8")],
        2,
        "has no country data",
    ));
    let d = dir.to_str().expect("utf-8");
    cases.push(case(
        "database is a directory",
        &["--geoip.database", d],
        2,
        "cannot be used: it is a directory, not a regular file",
    ));
    cases.push(case(
        "database missing",
        &["--geoip.database", &format!("{d}/nope.mmdb")],
        2,
        "no such file",
    ));
    cases
}

/// Bad web config files, each written into `dir`.
/// Databases that are not regular files: a pipe would block an open for
/// good, a device or a sparse file be read without end.
fn special_file_cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let special = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    make_fifo(&dir.join("pipe.mmdb"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.mmdb")).expect("symlink");
    std::os::unix::fs::symlink("/dev/urandom", dir.join("urandom.mmdb")).expect("symlink");
    fs::File::create(dir.join("sparse.mmdb"))
        .and_then(|f| f.set_len(10 << 30))
        .expect("sparse file");
    for (name, needle) in [
        ("pipe.mmdb", "it is a named pipe (FIFO), not a regular file"),
        ("zero.mmdb", "it is a character device, not a regular file"),
        (
            "urandom.mmdb",
            "it is a character device, not a regular file",
        ),
        (
            "sparse.mmdb",
            "it is 10.0 GiB, more than the 2.0 GiB a GeoIP database may have",
        ),
    ] {
        cases.push(case(
            &format!("database {name}"),
            &["--geoip.database", &special(name)],
            2,
            needle,
        ));
    }
    cases
}

fn web_config_cases(dir: &Path) -> Vec<Case> {
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let mut cases = Vec::new();
    for (name, text, needle) in [
        ("yaml.yml", "basic_auth_users: [".to_owned(), "yaml.yml is not valid"),
        ("type.yml", "basic_auth_users: 7".to_owned(), "type.yml is not valid"),
        ("field.yml", "tls_config: {}".to_owned(), "unknown field `tls_config`"),
        ("plain.yml", "basic_auth_users:\n  a: hunter2\n".to_owned(), "basic_auth_users.a is not a bcrypt hash"),
        ("colon.yml", format!("basic_auth_users:\n  'a:b': '{hash}'\n"), "basic_auth_users.a:b"),
        ("nocert.yml", "tls_server_config:\n  cert_file: none.crt\n  key_file: none.key\n".to_owned(), "cert_file"),
        ("noca.yml", "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n".to_owned(), "needs client_ca_file"),
        ("notcert.yml", "tls_server_config:\n  cert_file: notcert.yml\n  key_file: notcert.yml\n".to_owned(), "cert_file"),
        ("cost31.yml", format!("basic_auth_users:\n  a: '{}'\n", hash.replacen("$04$", "$31$", 1)), "bcrypt cost 31, outside 4 to 14"),
        ("cost3.yml", format!("basic_auth_users:\n  a: '{}'\n", hash.replacen("$04$", "$03$", 1)), "bcrypt cost 3, outside 4 to 14"),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).expect("write");
        cases.push(case(
            &format!("web config {name}"),
            &["--web.config.file", path.to_str().expect("utf-8")],
            2,
            needle,
        ));
    }
    make_fifo(&dir.join("pipe.yml"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yml")).expect("symlink");
    // TLS files that are not regular files, named by a good config.
    make_fifo(&dir.join("pipe.crt"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.key")).expect("symlink");
    fs::write(
        dir.join("tlspipe.yml"),
        "tls_server_config:\n  cert_file: pipe.crt\n  key_file: pipe.crt\n",
    )
    .expect("write");
    fs::write(
        dir.join("tlszero.yml"),
        "tls_server_config:\n  cert_file: zero.key\n  key_file: zero.key\n",
    )
    .expect("write");
    for (name, needle) in [
        ("pipe.yml", "it is a named pipe (FIFO), not a regular file"),
        ("zero.yml", "it is a character device, not a regular file"),
        (
            "tlspipe.yml",
            "it is a named pipe (FIFO), not a regular file",
        ),
        (
            "tlszero.yml",
            "it is a character device, not a regular file",
        ),
    ] {
        cases.push(case(
            &format!("web config {name}"),
            &["--web.config.file", dir.join(name).to_str().expect("utf-8")],
            2,
            needle,
        ));
    }
    cases.push(case(
        "web config missing",
        &[
            "--web.config.file",
            &format!("{}/absent.yml", dir.display()),
        ],
        2,
        "absent.yml",
    ));
    cases
}

/// Send `request` raw; the status code of the answer (0 if none).
fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn http_cases() -> Vec<(&'static str, Vec<u8>, &'static [u16])> {
    let req = |line: &str, headers: &str| {
        format!("{line}\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").into_bytes()
    };
    let big = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    let many = "X-H: v\r\n".repeat(200);
    vec![
        (
            "oversized header",
            req("GET /metrics HTTP/1.1", &big),
            &[431],
        ),
        (
            "two hundred headers",
            req("GET /metrics HTTP/1.1", &many),
            &[431],
        ),
        (
            "POST",
            req("POST /metrics HTTP/1.1", "Content-Length: 0\r\n"),
            &[405],
        ),
        (
            "DELETE",
            req("DELETE /api/v1/countries HTTP/1.1", ""),
            &[405],
        ),
        ("unknown method", req("FROB /metrics HTTP/1.1", ""), &[405]),
        ("TRACE", req("TRACE / HTTP/1.1", ""), &[405]),
        (
            "path traversal",
            req("GET /../../etc/passwd HTTP/1.1", ""),
            &[400, 404],
        ),
        (
            "encoded traversal",
            req("GET /assets/%2e%2e/%2e%2e/etc/passwd HTTP/1.1", ""),
            &[400, 404],
        ),
        (
            "bad Accept",
            req(
                "GET /metrics HTTP/1.1",
                "Accept: application/x-nonsense;q=banana\r\n",
            ),
            &[200],
        ),
        (
            "bad Accept-Encoding",
            req(
                "GET /metrics HTTP/1.1",
                "Accept-Encoding: gzip;q=2;;,,br;q=-1\r\n",
            ),
            &[200],
        ),
        (
            "bad query",
            req("GET /api/v1/countries?%zz=%% HTTP/1.1", ""),
            &[200, 400],
        ),
        ("garbage request line", req("HELLO", ""), &[400]),
        (
            "header without colon",
            req("GET /metrics HTTP/1.1", "NoColonHere\r\n"),
            &[400],
        ),
        (
            "HTTP/2 preface on HTTP/1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[0, 400, 505],
        ),
        (
            "non-UTF-8 path",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            &[400, 404],
        ),
        (
            "connections API off",
            req("GET /api/v1/connections HTTP/1.1", ""),
            &[404],
        ),
    ]
}

/// Run every case (its flags, and `db` unless it names a database); what
/// did not end as the case says, within 5 s.
fn run_cases(cases: &[Case], db: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let mut args: Vec<&str> = Vec::new();
        if !c.flags.iter().any(|f| f == "--geoip.database") {
            args.extend(["--geoip.database", db.to_str().expect("utf-8")]);
        }
        if !c
            .flags
            .iter()
            .any(|f| f.starts_with("--web.listen-address"))
        {
            args.push("--web.listen-address=127.0.0.1:0");
        }
        args.extend(c.flags.iter().map(String::as_str));
        let started = std::time::Instant::now();
        let out = run_to_exit(&args);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(c.code)
            || !stderr.contains(&c.needle)
            || stderr.contains("panicked")
            || took > Duration::from_secs(5)
        {
            failures.push(format!(
                "{}: exit {:?} after {took:?}, wanted {} with {:?} within 5 s:\n{stderr}",
                c.what,
                out.status.code(),
                c.code,
                c.needle
            ));
        }
    }
    failures
}

#[test]
fn hostile_input_gets_clear_errors_and_the_running_exporter_stays_exact() {
    let dir = temp_dir("hostile");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let db = dir.join("good.mmdb");
    write_database(&db);
    let net = TestNet::create("hostile", &[HOST]);
    let _server = net.serve(8500);
    let held = net.connect_to(sock(HOST, 8500));
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let exact = |exporter: &Exporter| {
        let s = exporter.wait_for(|s| {
            s.get(&format!("geoip_connections{}", cd("DE", "outbound"))) == Some(&1.0)
        });
        s.get(&format!("geoip_connections{}", cd("DE", "outbound")))
            .copied()
    };
    assert_eq!(exact(&exporter), Some(1.0));

    let mut cases = flag_cases(exporter.addr);
    cases.extend(database_cases(&dir));
    cases.extend(special_file_cases(&dir));
    cases.extend(web_config_cases(&dir));
    let mut failures = run_cases(&cases, &db);

    // An unreadable database, as an unprivileged user (root reads anything).
    let (exe, readable) = world_readable("hostile-unreadable");
    let unreadable = readable.with_file_name("unreadable.mmdb");
    fs::copy(&readable, &unreadable).expect("copy");
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).expect("chmod");
    let out = run_command_to_exit(
        setpriv(65_534, &[])
            .arg(&exe)
            .args(["--geoip.database", unreadable.to_str().expect("utf-8")]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2)
        || !stderr.contains("unreadable.mmdb")
        || !stderr.contains("ermission denied")
    {
        failures.push(format!(
            "unreadable database: exit {:?}: {stderr}",
            out.status.code()
        ));
    }

    let http = http_cases();
    for (what, request, allowed) in &http {
        let got = status_of(exporter.addr, request);
        if !allowed.contains(&got) {
            failures.push(format!(
                "HTTP {what}: status {got}, wanted one of {allowed:?}"
            ));
        }
    }
    let total = cases.len() + 1 + http.len();
    assert!(total >= 40, "the catalogue has {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The running exporter took every HTTP case and is healthy and exact.
    assert_eq!(
        exporter.get("/healthz").expect("healthz"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(exact(&exporter), Some(1.0));
    let s = exporter.wait_for(|_| true);
    assert_eq!(s.get("geoip_exporter_events_undecodable_total"), Some(&0.0));
    drop(held);
    let s = exporter
        .wait_for(|s| s.get(&format!("geoip_connections{}", cd("DE", "outbound"))) == Some(&0.0));
    assert_eq!(
        s.get(&format!("geoip_connections{}", cd("DE", "outbound"))),
        Some(&0.0)
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
    eprintln!("hostile input: {total} cases, all answered as catalogued");
}
