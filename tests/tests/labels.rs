//! The opt-in labels (`--labels service,asn,city`), as root against the
//! real kernel: exact series for connections to and from test hosts, the
//! caps forced with more distinct values than the limit, and the database
//! checks.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, promtool_check_metrics, run_to_exit, temp_dir},
    fixtures::{
        BR_V4, DE_V4, DE_V6, JP_V4, write_asn_labels_database, write_database,
        write_label_databases,
    },
    hold::first_line,
    netns::{HOST_V4, TestNet, host_listener, sock},
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json as _;

const PORT: u16 = 8444;

/// The samples of `family`, keyed by their labels.
fn family(samples: &Samples, name: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(name)?.strip_prefix('{')?.to_owned(), *v)))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (format!("{{{k}"), v))
        .collect()
}

fn asn(org: &str, asn: &str, direction: &str) -> String {
    format!("{{as_org=\"{org}\",asn=\"{asn}\",direction=\"{direction}\"}}")
}

fn city(city: &str, country: &str, direction: &str) -> String {
    format!("{{city=\"{city}\",country=\"{country}\",direction=\"{direction}\"}}")
}

fn expect(pairs: &[(String, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().cloned().collect()
}

/// With limits of one: the value seen first gets its series (a
/// connection that existed at start-up), every other known one counts as
/// `other`, a host without an answer as `unknown`; closes uncount exactly
/// what the opens counted.
#[test]
fn asn_and_city_families_are_exact_and_capped() {
    let dir = temp_dir("labels");
    let databases = write_label_databases(&dir);
    let net = TestNet::create("labels", &[DE_V4, DE_V6, JP_V4, BR_V4]);
    let _server = net.serve(PORT);
    // Before start-up: JP, found by the snapshot, first to get a slot.
    let jp = net.connect_to(sock(JP_V4, PORT));
    let mut args: Vec<&str> = databases.iter().map(String::as_str).collect();
    args.extend([
        "--labels=asn,city",
        "--labels.asn-limit=1",
        "--labels.city-limit=1",
    ]);
    let exporter = Exporter::start(&dir, &args);
    let de: Vec<TcpStream> = [DE_V4, DE_V6]
        .iter()
        .map(|h| net.connect_to(sock(h, PORT)))
        .collect();
    let br = net.connect_to(sock(BR_V4, PORT));
    let all =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() >= Some(4.0));
    assert_eq!(
        family(&all, "geoip_connections_by_asn"),
        expect(&[
            (asn("Japan Example", "64501", "outbound"), 1.0),
            (asn("other", "other", "outbound"), 2.0),
            (asn("unknown", "unknown", "outbound"), 1.0),
        ]),
        "by ASN"
    );
    assert_eq!(
        family(&all, "geoip_connections_by_city"),
        expect(&[
            (city("Tokyo", "JP", "outbound"), 1.0),
            (city("other", "DE", "outbound"), 2.0),
            (city("unknown", "BR", "outbound"), 1.0),
        ]),
        "by city"
    );
    assert_eq!(
        family(&all, "geoip_city_location_info"),
        expect(&[(
            "{city=\"Tokyo\",country=\"JP\",latitude=\"35.6895\",longitude=\"139.6917\"}"
                .to_owned(),
            1.0
        )]),
        "only shown cities have a location"
    );
    // The country families are as without --labels.
    assert_eq!(
        all.get("geoip_connections{country=\"DE\",direction=\"outbound\"}"),
        Some(&2.0)
    );
    let text = exporter.scrape();
    let lint = promtool_check_metrics(&text);
    assert!(lint.is_empty(), "promtool check metrics:\n{lint}");

    drop(de);
    drop((jp, br));
    let closed =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() == Some(0.0));
    assert!(
        family(&closed, "geoip_connections_by_asn")
            .values()
            .chain(family(&closed, "geoip_connections_by_city").values())
            .all(|v| *v == 0.0),
        "every close uncounted its open: {closed:#?}"
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// What `--labels` needs must be given, once, and be what it claims.
#[test]
fn labels_without_their_database_are_usage_errors() {
    let dir = temp_dir("labels-bad");
    let (country_db, asn_db) = (dir.join("country.mmdb"), dir.join("asn.mmdb"));
    write_database(&country_db);
    write_asn_labels_database(&asn_db);
    let listen = format!(
        "--web.listen-address=127.0.0.1:{}",
        geoip_tests::exporter::free_port()
    );
    let c = country_db.to_str().expect("utf-8");
    let a = asn_db.to_str().expect("utf-8");
    for (args, needle) in [
        (
            vec!["--geoip.database", c, "--labels", "asn"],
            "--labels asn needs an ASN database",
        ),
        (
            vec![
                "--geoip.database",
                c,
                "--geoip.database",
                a,
                "--labels",
                "city",
            ],
            "--labels city needs a city database",
        ),
        (
            vec!["--geoip.database", a, "--geoip.database", a],
            "two ASN databases given",
        ),
        (
            vec!["--geoip.database", c, "--labels", "asn,colour"],
            "colour",
        ),
    ] {
        let mut full = args.clone();
        full.push(&listen);
        let out = run_to_exit(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `--labels service`: an outbound connection is counted under the name
/// of the process (thread) that made it, an inbound one under the local
/// port it came to; with a limit of two the third value is `other`.
#[test]
fn the_service_label_is_the_process_or_the_port_and_is_capped() {
    let dir = temp_dir("service");
    let db = dir.join("country.mmdb");
    write_database(&db);
    let net = TestNet::create("service", &[DE_V4, JP_V4]);
    let _server = net.serve(PORT);
    let (first, first_port) = host_listener();
    let (second, second_port) = host_listener();
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8"),
            "--labels=service",
            "--labels.service-limit=2",
        ],
    );
    // Outbound, from a thread whose name the kernel sees as its comm.
    let target = sock(DE_V4, PORT);
    net.check_route(target.ip());
    let out = std::thread::Builder::new()
        .name("geoip-svc-out".into())
        .spawn(move || TcpStream::connect(target).expect("connect"))
        .expect("thread")
        .join()
        .expect("connected");
    let _ =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() >= Some(1.0));
    // Inbound to two listening ports: the first gets its series, the
    // second is past the limit.
    let in_first = net.connect_from(JP_V4, sock(HOST_V4, first_port));
    let _ =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() >= Some(2.0));
    let in_second = net.connect_from(JP_V4, sock(HOST_V4, second_port));
    let all =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() >= Some(3.0));
    let series = |country: &str, direction: &str, service: &str| {
        format!("{{country=\"{country}\",direction=\"{direction}\",service=\"{service}\"}}")
    };
    assert_eq!(
        family(&all, "geoip_connections"),
        expect(&[
            (series("DE", "outbound", "geoip-svc-out"), 1.0),
            (series("JP", "inbound", &first_port.to_string()), 1.0),
            (series("JP", "inbound", "other"), 1.0),
        ]),
        "second port {second_port}"
    );
    assert_eq!(
        all.get(&format!(
            "geoip_connections_opened_total{}",
            series("DE", "outbound", "geoip-svc-out")
        )),
        Some(&1.0)
    );
    let lint = promtool_check_metrics(&exporter.scrape());
    assert!(lint.is_empty(), "promtool check metrics:\n{lint}");
    drop((out, in_first, in_second, first, second));
    let closed =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() == Some(0.0));
    assert!(
        family(&closed, "geoip_connections")
            .values()
            .all(|v| *v == 0.0),
        "{closed:#?}"
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}

/// A shell holding a connection to `target` on descriptor 3 until its
/// input closes (or for a minute at most; `read` is a builtin, so no child
/// shares the socket): `shell` run as `user` (`None`: as root).
fn hold_connection(shell: &Path, user: Option<u32>, target: SocketAddr) -> Child {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && echo ready && read -r -t 60 _ || true",
        target.ip(),
        target.port()
    );
    let mut command = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ])
            .arg(shell);
            c
        }
        None => Command::new(shell),
    };
    let mut holder = command
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", shell.display()));
    let ready = first_line(holder.stdout.take())
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    assert_eq!(
        ready.trim(),
        "ready",
        "{} connected to {target}",
        shell.display()
    );
    holder
}

/// `--labels service`: an outbound connection made before the exporter
/// started (so the kernel program saw no `connect()` of it) is named after
/// the process holding it, found by the start-up snapshot, also when that
/// process is another user's; its close then takes it off that series.
#[test]
fn a_connection_made_before_start_is_named_after_its_process() {
    let dir = temp_dir("service-before");
    let db = dir.join("country.mmdb");
    write_database(&db);
    let net = TestNet::create("svcpre", &[DE_V4]);
    let _server = net.serve(PORT);
    let target = sock(DE_V4, PORT);
    net.check_route(target.ip());
    // One root's, one nobody's (a copy of bash under another name, so its
    // process name tells them apart).
    let bash = Path::new("/bin/bash");
    let renamed = dir.join("svc-nobody");
    std::fs::copy(bash, &renamed).expect("copy bash");
    let mut holders = [
        hold_connection(bash, None, target),
        hold_connection(&renamed, Some(65_534), target),
    ];
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8"),
            "--labels=service",
        ],
    );
    let all =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() >= Some(2.0));
    let series =
        |service: &str| format!("{{country=\"DE\",direction=\"outbound\",service=\"{service}\"}}");
    assert_eq!(
        family(&all, "geoip_connections"),
        expect(&[(series("bash"), 1.0), (series("svc-nobody"), 1.0)]),
        "{}",
        exporter.log()
    );
    for holder in &mut holders {
        drop(holder.stdin.take());
        assert!(holder.wait().expect("the shell exits").success());
    }
    let closed =
        exporter.wait_for(|s| s.get("geoip_exporter_connections_tracked").copied() == Some(0.0));
    assert_eq!(
        family(&closed, "geoip_connections"),
        expect(&[(series("bash"), 0.0), (series("svc-nobody"), 0.0)])
    );
    assert_eq!(
        closed.get(&format!("geoip_connections_closed_total{}", series("bash"))),
        Some(&1.0)
    );
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
}
