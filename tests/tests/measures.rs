//! Durations and bytes (`--metrics.duration`, `--metrics.bytes`), as root
//! against the real kernel: known payloads sent each way over real
//! connections to and from test hosts, counted exactly, by country and
//! direction, whichever side closes first.
#![expect(
    clippy::float_cmp,
    reason = "sample values are integers, compared exactly"
)]

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    time::Duration,
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, temp_dir},
    fixtures::{DE_V4, JP_V4, write_database},
    netns::{HOST_V4, TestNet, host_listener, sock},
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

const PORT: u16 = 8445;

fn value(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// Send `out`, read exactly `expect_in` bytes back.
fn exchange(s: &mut TcpStream, out: usize, expect_in: usize) {
    s.write_all(&vec![b'x'; out]).expect("write");
    let mut buf = vec![0u8; expect_in];
    s.read_exact(&mut buf).expect("read");
}

/// Read exactly `n` bytes.
fn take(s: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read");
}

/// Close `s` with a reset (`SO_LINGER` 0): no FIN.
fn abort(s: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).expect("size"),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// Wait until the peer has closed (read returns 0).
fn until_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 16];
    while s.read(&mut b).is_ok_and(|n| n > 0) {}
}

#[test]
fn bytes_and_durations_are_exact() {
    let dir = temp_dir("measures");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("measures", &[DE_V4, JP_V4]);
    let remote = net.serve(PORT);
    let (local, host_port) = host_listener();
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8"),
            "--metrics.duration",
            "--metrics.bytes",
            "--metrics.bytes-interval=0",
        ],
    );

    // Outbound to DE: 1,000 bytes out, 300 back; we close first, after
    // about 300 ms.
    let mut out = net.connect_to(sock(DE_V4, PORT));
    let mut out_srv = remote.take(out.local_addr().expect("addr"));
    out.write_all(&[b'a'; 1000]).expect("write");
    take(&mut out_srv, 1000);
    out_srv.write_all(&[b'b'; 300]).expect("write");
    take(&mut out, 300);
    std::thread::sleep(Duration::from_millis(300));
    out.shutdown(Shutdown::Write).expect("shutdown");
    until_closed(&mut out_srv);
    drop(out_srv);
    until_closed(&mut out);
    drop(out);

    // Inbound from JP: 2,000 bytes in, 500 out; the remote closes first.
    let mut inb_client = net.connect_from(JP_V4, sock(HOST_V4, host_port));
    let mut inb = local.take(inb_client.local_addr().expect("addr"));
    exchange(&mut inb_client, 2000, 0);
    take(&mut inb, 2000);
    inb.write_all(&[b'c'; 500]).expect("write");
    take(&mut inb_client, 500);
    drop(inb_client);
    until_closed(&mut inb);
    drop(inb);

    // Outbound to JP, reset by us after 600 bytes out and 200 back (no
    // FIN either way: close() with SO_LINGER 0).
    let mut reset = net.connect_to(sock(JP_V4, PORT));
    let mut reset_srv = remote.take(reset.local_addr().expect("addr"));
    reset.write_all(&[b'd'; 600]).expect("write");
    take(&mut reset_srv, 600);
    reset_srv.write_all(&[b'e'; 200]).expect("write");
    take(&mut reset, 200);
    std::thread::sleep(Duration::from_millis(50));
    abort(reset);
    until_closed(&mut reset_srv);
    drop(reset_srv);

    let de = cd("DE", "outbound");
    let jp = cd("JP", "inbound");
    let jp_out = cd("JP", "outbound");
    let done = exporter.wait_for(|s| {
        value(s, &format!("geoip_sent_bytes_total{jp}")) >= 500.0
            && value(s, &format!("geoip_sent_bytes_total{jp_out}")) >= 599.0
            && value(s, &format!("geoip_received_bytes_total{de}")) >= 300.0
            && value(s, &format!("geoip_connection_duration_seconds_count{jp}")) >= 1.0
    });
    for (series, want) in [
        (format!("geoip_received_bytes_total{de}"), 300.0),
        (format!("geoip_sent_bytes_total{de}"), 1000.0),
        (format!("geoip_received_bytes_total{jp}"), 2000.0),
        (format!("geoip_sent_bytes_total{jp}"), 500.0),
        (format!("geoip_received_bytes_total{jp_out}"), 200.0),
        (format!("geoip_sent_bytes_total{jp_out}"), 600.0),
        (format!("geoip_connection_duration_seconds_count{de}"), 1.0),
        (format!("geoip_connection_duration_seconds_count{jp}"), 1.0),
        // The two closed with a handshake: their sockets reached CLOSE
        // later (the reset one reached it at once).
        (
            "geoip_exporter_events_read_total{kind=\"final\"}".to_owned(),
            2.0,
        ),
    ] {
        assert_eq!(value(&done, &series), want, "{series}");
    }
    let de_sum = value(&done, &format!("geoip_connection_duration_seconds_sum{de}"));
    assert!(
        (0.3..3.0).contains(&de_sum),
        "DE lived about 0.3 s: {de_sum}"
    );
    let bucket = |le: &str| {
        value(
            &done,
            &format!(
                "geoip_connection_duration_seconds_bucket{{country=\"DE\",direction=\"outbound\",le=\"{le}\"}}"
            ),
        )
    };
    assert_eq!(
        (bucket("0.25"), bucket("1"), bucket("+Inf")),
        (0.0, 1.0, 1.0)
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// A long-lived connection does not hide its bytes until it closes: the
/// accounting pass counts them every `--metrics.bytes-interval`, and the
/// close adds only what is new.
#[test]
fn long_lived_connections_count_their_bytes_while_open() {
    let dir = temp_dir("measures-open");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("measopen", &[DE_V4]);
    let remote = net.serve(PORT);
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8"),
            "--metrics.bytes",
            "--metrics.bytes-interval=1s",
        ],
    );
    let de = cd("DE", "outbound");
    let sent = format!("geoip_sent_bytes_total{de}");
    let received = format!("geoip_received_bytes_total{de}");
    let mut c = net.connect_to(sock(DE_V4, PORT));
    let mut s = remote.take(c.local_addr().expect("addr"));
    c.write_all(&[b'a'; 4000]).expect("write");
    take(&mut s, 4000);
    s.write_all(&[b'b'; 700]).expect("write");
    take(&mut c, 700);
    let open = exporter.wait_for(|x| value(x, &sent) >= 4000.0 && value(x, &received) >= 700.0);
    assert_eq!(
        (value(&open, &sent), value(&open, &received)),
        (4000.0, 700.0)
    );
    assert_eq!(
        value(&open, &format!("geoip_connections{de}")),
        1.0,
        "counted while still open"
    );
    c.write_all(&[b'c'; 1000]).expect("write");
    take(&mut s, 1000);
    drop(s);
    until_closed(&mut c);
    drop(c);
    let closed = exporter.wait_for(|x| {
        value(x, &format!("geoip_connections{de}")) == 0.0 && value(x, &sent) >= 5000.0
    });
    assert_eq!(
        (value(&closed, &sent), value(&closed, &received)),
        (5000.0, 700.0)
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}
