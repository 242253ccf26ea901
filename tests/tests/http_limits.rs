//! The HTTP server's limits against the real binary, with raw sockets:
//! gzip on request, methods, oversized headers, path traversal, a
//! slow-loris client, idle keep-alive, and the bound on connections.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, temp_dir},
    fixtures::write_database,
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

fn start(name: &str, extra: &[&str]) -> Exporter {
    let dir = temp_dir(name);
    let db = dir.join("test.mmdb");
    write_database(&db);
    let mut args = vec!["--geoip.database", db.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    Exporter::start(&dir, &args)
}

/// Send `request` as is; return the whole answer (until the server closes
/// or 5 s pass) as bytes.
fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn head(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").into_bytes()
}

#[test]
fn requests_outside_the_contract_get_clear_statuses() {
    let exporter = start("http-requests", &[]);
    let addr = exporter.addr;

    let zipped = raw(addr, &get("/metrics", "Accept-Encoding: gzip\r\n"));
    assert_eq!(status(&zipped), 200);
    assert!(
        head(&zipped).contains("content-encoding: gzip"),
        "{}",
        head(&zipped)
    );
    let body_at = zipped
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    // Chunked or not, the gzip magic follows the first chunk size line.
    assert!(
        zipped[body_at..].windows(2).any(|w| w == [0x1f, 0x8b]),
        "gzip body"
    );
    let plain = raw(addr, &get("/metrics", ""));
    assert!(!head(&plain).contains("content-encoding"));
    assert!(String::from_utf8_lossy(&plain).contains("geoip_exporter_build_info"));

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let answer = raw(
            addr,
            format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status(&answer), 405, "{method}");
        assert!(
            head(&answer).contains("allow: get,head"),
            "{method}: {}",
            head(&answer)
        );
    }
    let answer = raw(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), 200);
    assert!(!String::from_utf8_lossy(&answer).contains("geoip_exporter_build_info"));
    let answer = raw(
        addr,
        b"BREW /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), 405, "unknown method");

    let big = format!("X-Filler: {}\r\n", "a".repeat(40_000));
    assert_eq!(status(&raw(addr, &get("/metrics", &big))), 431);

    for path in [
        "/../../etc/passwd",
        "/assets/../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/assets/world.json/../../etc/shadow",
    ] {
        let answer = raw(addr, &get(path, ""));
        assert!(
            matches!(status(&answer), 400 | 404),
            "{path}: {}",
            head(&answer)
        );
        assert!(
            !String::from_utf8_lossy(&answer).contains("root:"),
            "{path}"
        );
    }
    assert_eq!(status(&raw(addr, b"GARBAGE\r\n\r\n")), 400);

    // Ten scrapers at once (within the default bound): every scrape answers.
    let scrapers: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                (0..30)
                    .filter(|_| status(&raw(addr, &get("/metrics", ""))) == 200)
                    .count()
            })
        })
        .collect();
    let ok: usize = scrapers
        .into_iter()
        .map(|t| t.join().expect("scraper"))
        .sum();
    assert_eq!(ok, 300, "every concurrent scrape answered");
    // Still healthy and serving after all that.
    assert_eq!(
        exporter.get("/healthz").expect("healthz"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// Read until the server closes the connection; how long that took.
fn time_until_closed(mut s: TcpStream, trickle: bool) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(15) {
        if trickle {
            // One header byte at a time, never finishing the head.
            if s.write_all(b"x").is_err() {
                return started.elapsed();
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return started.elapsed(),
        }
    }
    started.elapsed()
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_connections_are_bounded() {
    let exporter = start(
        "http-slow",
        &["--web.read-header-timeout=2s", "--web.max-connections=4"],
    );
    let addr = exporter.addr;
    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");

    // Slow loris: a header byte every 200 ms, never done.
    let mut loris = connect();
    loris
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("send");
    let took = time_until_closed(loris, true);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "slow client cut after {took:?}"
    );

    // Idle after a complete request on a kept-alive connection.
    let mut idle = connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let took = time_until_closed(idle, false);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "idle keep-alive cut after {took:?}"
    );

    // Four idle connections hold every slot: the fifth gets 503 at once.
    let holders: Vec<TcpStream> = (0..4).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let refused = raw(addr, &get("/metrics", ""));
    assert_eq!(
        status(&refused),
        503,
        "{}",
        String::from_utf8_lossy(&refused)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(holders);
    std::thread::sleep(Duration::from_millis(300));
    let text = exporter.scrape();
    assert!(
        text.lines().any(
            |l| l.starts_with("geoip_exporter_http_connections_rejected_total ")
                && !l.ends_with(" 0")
        ),
        "rejections are counted"
    );

    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}
