//! The exporter's whole `/metrics` with every option on, against a
//! committed golden file (`tests/golden/metrics.txt`): every family's
//! name, HELP text, type and label sets. Values are left out (the other
//! tests check them exactly); what changes from one build or run to the
//! next (the build's commit and date) is replaced by a placeholder.
//!
//! A change to a metric's name, help or labels fails here first; when it
//! is meant, refresh the file with `GEOIP_UPDATE_GOLDEN=1 cargo xtask test
//! --e2e -- golden` and review the diff.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, build_stamp, temp_dir},
    fixtures::{BR_V4, DE_V4, DE_V6, JP_V4, write_label_databases},
    netns::{HOST_V4, Server, TestNet, sock},
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

/// The test hosts' service.
const PORT: u16 = 8446;
/// The host's own listening port: the `service` label of inbound
/// connections, so it is fixed.
const HOST_PORT: u16 = 18_446;

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/metrics.txt")
}

/// `/metrics` as its families' HELP and TYPE lines and their series'
/// names and label sets, each family's series sorted; the build's commit
/// and date as placeholders.
fn shape(text: &str) -> String {
    let (commit, date) = build_stamp();
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            rest.split(' ')
                .next()
                .unwrap_or_default()
                .clone_into(&mut current);
            families
                .entry(current.clone())
                .or_default()
                .0
                .push(line.to_owned());
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let series = series
            .replace(&format!("revision=\"{commit}\""), "revision=\"COMMIT\"")
            .replace(&format!("build_date=\"{date}\""), "build_date=\"DATE\"");
        families.entry(current.clone()).or_default().1.push(series);
    }
    let mut out = String::new();
    for (head, mut series) in families.into_values() {
        series.sort();
        for line in head.iter().chain(&series) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Outbound connections to DE over IPv4 and IPv6 (one closed), JP and BR
/// from a named thread, an inbound one from JP to the host's fixed port;
/// every option on.
#[test]
fn metrics_with_every_option_match_the_golden_file() {
    let dir = temp_dir("golden");
    let databases = write_label_databases(&dir);
    let net = TestNet::create("golden", &[DE_V4, DE_V6, JP_V4, BR_V4]);
    let _server = net.serve(PORT);
    let host = TcpListener::bind(sock(HOST_V4, HOST_PORT)).expect("bind the host's port");
    host.set_nonblocking(true).expect("nonblocking");
    let local = Server::start(vec![host]);
    let mut args: Vec<&str> = databases.iter().map(String::as_str).collect();
    args.extend([
        "--labels=service,asn,city",
        "--metrics.bytes",
        "--metrics.duration",
        "--metrics.legacy-job-location",
    ]);
    let exporter = Exporter::start(&dir, &args);
    let targets = [DE_V4, DE_V6, JP_V4, BR_V4].map(|h| sock(h, PORT));
    for target in &targets {
        net.check_route(target.ip());
    }
    let mut out: Vec<TcpStream> = std::thread::Builder::new()
        .name("golden-out".into())
        .spawn(move || {
            targets
                .iter()
                .map(|t| TcpStream::connect(t).expect("connect"))
                .collect()
        })
        .expect("thread")
        .join()
        .expect("connected");
    let inbound = net.connect_from(JP_V4, sock(HOST_V4, HOST_PORT));
    let _ =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() == Some(5.0));
    // One carries a few bytes and closes: its duration and bytes are
    // observed.
    let mut closing = out.remove(1);
    closing.write_all(b"golden").expect("write");
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(closing);
    let samples =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() == Some(4.0));
    assert_eq!(
        samples.get("geoip_exporter_connections_tracked"),
        Some(&4.0),
        "{}",
        exporter.log()
    );
    let got = shape(&exporter.scrape());
    let golden = golden_path();
    if std::env::var_os("GEOIP_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    if got != want {
        let fresh = dir.join("metrics.txt");
        std::fs::write(&fresh, &got).unwrap_or_else(|e| panic!("{}: {e}", fresh.display()));
        panic!(
            "/metrics differs from {}: diff -u {} {} (GEOIP_UPDATE_GOLDEN=1 refreshes it when the change is meant)",
            golden.display(),
            golden.display(),
            fresh.display()
        );
    }
    drop((out, inbound, local));
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}
