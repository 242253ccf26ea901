//! End to end, as root, against the real kernel: real TCP connections to
//! and from test hosts in a network namespace, counted by the real
//! exporter, read from its real `/metrics`.
#![expect(
    clippy::float_cmp,
    reason = "sample values are integers, compared exactly"
)]

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, Samples, cd, nonzero, parse, promtool_check_metrics, temp_dir},
    fixtures::*,
    netns::{HOST_V4, HOST_V6, PEER_V4, PEER_V6, TestNet, host_listener, sock},
};
use maxminddb as _;
use serde as _;

const SERVICE_PORT: u16 = 8443;

fn expect(pairs: &[(&str, &str, f64)]) -> BTreeMap<String, f64> {
    pairs
        .iter()
        .filter(|(_, _, v)| *v != 0.0)
        .map(|(c, d, v)| (cd(c, d), *v))
        .collect()
}

fn show(samples: &Samples, name: &str) -> String {
    format!("{:#?}", nonzero(samples, name))
}

/// Connections made or accepted by the host while the exporter runs.
struct Conns {
    out: Vec<TcpStream>,
    inbound: Vec<TcpStream>,
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn counts_live_connections_by_country_and_direction() {
    let dir = temp_dir("counts");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("e2e", ALL);
    let remote = net.serve(SERVICE_PORT);
    let (local, host_port) = host_listener();
    let host_v4 = sock(HOST_V4, host_port);
    let host_v6 = sock(HOST_V6, host_port);

    // Before the exporter starts: one outbound DE (closed later), one
    // inbound JP and one outbound BR over IPv6 (kept).
    let pre_out_de = net.connect_to(sock(DE_V4, SERVICE_PORT));
    let pre_in_jp_client = net.connect_from(JP_V4, host_v4);
    let pre_in_jp = local.take(pre_in_jp_client.local_addr().expect("addr"));
    let pre_out_br6 = net.connect_to(sock(BR_V6, SERVICE_PORT));

    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            db.to_str().expect("utf-8 path"),
            "--exclude",
            EXCLUDED,
            "--metrics.legacy-job-location",
        ],
    );
    let at_start = exporter.wait_for(|_| true);
    assert_eq!(
        nonzero(&at_start, "geoip_connections"),
        expect(&[
            ("DE", "outbound", 1.0),
            ("JP", "inbound", 1.0),
            ("BR", "outbound", 1.0)
        ]),
        "connections ESTABLISHED before start-up are counted from the first scrape:\n{}",
        exporter.log()
    );

    let mut c = Conns {
        out: Vec::new(),
        inbound: Vec::new(),
    };
    for target in [
        DE_V4,
        DE_V4,
        DE_V6,
        JP_V4,
        BR_V6,
        BR_V6,
        NO_COUNTRY_V4,
        NOT_IN_DB_V6,
        EXCLUDED_V4,
    ] {
        c.out.push(net.connect_to(sock(target, SERVICE_PORT)));
    }
    for (source, target) in [
        (BR_V4, host_v4),
        (JP_V6, host_v6),
        (DE_V4, host_v4),
        (DE_V4, host_v4),
        (EXCLUDED_V4, host_v4),
    ] {
        let client = net.connect_from(source, target);
        let accepted = local.take(client.local_addr().expect("client addr"));
        c.inbound.push(accepted);
        c.out.push(client); // held open; its events are the namespace's (private peer)
    }
    // Never counted: loopback (IPv4, IPv6) and private/ULA peers.
    let lo4 = TcpListener::bind("127.0.0.1:0").expect("lo4");
    let lo6 = TcpListener::bind("[::1]:0").expect("lo6");
    let mut uncounted = vec![
        TcpStream::connect(lo4.local_addr().expect("lo4")).expect("lo4 connect"),
        TcpStream::connect(lo6.local_addr().expect("lo6")).expect("lo6 connect"),
        net.connect_to(sock(PEER_V4, SERVICE_PORT)),
        net.connect_to(sock(PEER_V6, SERVICE_PORT)),
    ];
    uncounted.push(lo4.accept().expect("lo4 accept").0);
    uncounted.push(lo6.accept().expect("lo6 accept").0);

    let open = expect(&[
        ("DE", "outbound", 4.0),
        ("DE", "inbound", 2.0),
        ("JP", "outbound", 1.0),
        ("JP", "inbound", 2.0),
        ("BR", "outbound", 3.0),
        ("BR", "inbound", 1.0),
        ("unknown", "outbound", 2.0),
    ]);
    let s = exporter.wait_for(|s| nonzero(s, "geoip_connections") == open);
    assert_eq!(
        nonzero(&s, "geoip_connections"),
        open,
        "every series, exactly, with connections open"
    );
    assert_eq!(s["geoip_exporter_connections_tracked"], 15.0);
    assert_eq!(
        promtool_check_metrics(&exporter.scrape()),
        "",
        "promtool check metrics on the live output"
    );

    // Close: the pre-start DE outbound, one DE outbound, the BR inbound,
    // the JP IPv6 inbound, the unknown IPv6 outbound; and every uncounted
    // and excluded one (which must change nothing).
    drop(pre_out_de);
    drop(c.out.remove(0)); // DE_V4
    drop(c.out.remove(6)); // NOT_IN_DB_V6 (index after the removal above)
    drop(c.inbound.remove(0)); // BR_V4 inbound
    drop(c.inbound.remove(0)); // JP_V6 inbound
    drop(uncounted);
    let closed = expect(&[
        ("DE", "outbound", 2.0),
        ("DE", "inbound", 2.0),
        ("JP", "outbound", 1.0),
        ("JP", "inbound", 1.0),
        ("BR", "outbound", 3.0),
        ("unknown", "outbound", 1.0),
    ]);
    let s = exporter.wait_for(|s| nonzero(s, "geoip_connections") == closed);
    assert_eq!(
        nonzero(&s, "geoip_connections"),
        closed,
        "every series after closes; log:\n{}",
        exporter.log()
    );
    assert_eq!(
        s[&format!("geoip_connections{}", cd("BR", "inbound"))],
        0.0,
        "a closed country stays exported at 0"
    );
    assert_eq!(
        nonzero(&s, "geoip_connections_opened_total"),
        expect(&[
            ("DE", "outbound", 4.0),
            ("DE", "inbound", 2.0),
            ("JP", "outbound", 1.0),
            ("JP", "inbound", 2.0),
            ("BR", "outbound", 3.0),
            ("BR", "inbound", 1.0),
            ("unknown", "outbound", 2.0),
        ]),
        "opened counters: {}",
        show(&s, "geoip_connections_opened_total")
    );
    assert_eq!(
        nonzero(&s, "geoip_connections_closed_total"),
        expect(&[
            ("DE", "outbound", 2.0),
            ("JP", "inbound", 1.0),
            ("BR", "inbound", 1.0),
            ("unknown", "outbound", 1.0),
        ]),
        "closed counters"
    );
    let legacy: BTreeMap<String, f64> = [("BR", 3.0), ("DE", 4.0), ("JP", 2.0), ("unknown", 1.0)]
        .iter()
        .map(|(c, v)| (format!("{{location=\"{c}\"}}"), *v))
        .collect();
    assert_eq!(nonzero(&s, "job_location"), legacy, "job_location");
    assert_eq!(s["geoip_exporter_connections_tracked"], 10.0);
    assert_eq!(s["geoip_exporter_events_lost_total"], 0.0);
    assert_eq!(s["geoip_exporter_events_undecodable_total"], 0.0);
    assert_eq!(s["geoip_exporter_lookup_errors_total"], 0.0);
    assert_eq!(
        s["geoip_exporter_database_build_timestamp_seconds"],
        1_750_000_000.0
    );
    assert!(remote.held() >= 10, "the namespace's server holds its ends");

    let status = exporter.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    drop((pre_in_jp, pre_in_jp_client, pre_out_br6, c));
}

/// The families of `/metrics` and their types: the metric contract.
/// The program builds the exporter attaches on other kernels pass this
/// kernel's verifier and attach: the one reading the tracepoint record
/// through a helper (a record layout other than the usual one) and the
/// empty one the benchmark uses.
/// After a second without events the reader stops draining the ring on
/// its 50 ms timer: it asks the kernel program to wake it on the next
/// record, and otherwise looks only once a second. Each connection made to
/// such an idle exporter must still be counted well within that second,
/// every time (a reader the kernel never woke would take up to 1 s).
#[test]
fn an_idle_exporter_is_woken_by_the_first_event() {
    const TRIALS: u32 = 6;
    const IDLE: Duration = Duration::from_millis(1_500);
    const WITHIN: Duration = Duration::from_millis(300);
    let dir = temp_dir("idle");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("idle", &[DE_V4]);
    let _server = net.serve(SERVICE_PORT);
    let target = sock(DE_V4, SERVICE_PORT);
    net.check_route(target.ip());
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let mut held = Vec::new();
    let mut latencies = Vec::new();
    for trial in 1..=TRIALS {
        std::thread::sleep(IDLE);
        let start = Instant::now();
        held.push(TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect"));
        let counted = loop {
            let n = parse(&exporter.scrape())
                .get(&format!("geoip_connections{}", cd("DE", "outbound")))
                .copied()
                .unwrap_or(0.0);
            if n == f64::from(trial) {
                break start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "trial {trial}: not counted after 3 s ({n})"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        latencies.push(counted);
    }
    assert!(
        latencies.iter().all(|l| *l < WITHIN),
        "every connection to an idle exporter counted within {WITHIN:?}: {latencies:?}"
    );
}

/// Every build of the program, and each with every combination of its
/// opt-in features, passes this kernel's verifier and attaches.
#[test]
fn every_build_of_the_kernel_program_loads() {
    use geoip_user::bench::{PROGRAM, PROGRAM_ANY_LAYOUT, PROGRAM_EMPTY, attach_program_with};
    for name in [PROGRAM, PROGRAM_ANY_LAYOUT, PROGRAM_EMPTY] {
        for features in 0..8 {
            let attached = attach_program_with(name, features);
            assert!(
                attached.is_ok(),
                "{name} with features {features:#b}: {:?}",
                attached.err()
            );
        }
    }
}

#[test]
fn exposes_the_metric_contract() {
    let dir = temp_dir("contract");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let exporter = Exporter::start(&dir, &["--geoip.database", db.to_str().expect("utf-8")]);
    let text = exporter.scrape();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter(|l| !l.starts_with("process_"))
        .collect();
    // Before 6.7 the kernel does not count skipped runs: the family is
    // absent rather than a false 0.
    let skipped = geoip_tests::kernel::counts_skipped_runs();
    let expected: Vec<&str> = [
        "geoip_exporter_build_info gauge",
        "geoip_exporter_connections_tracked gauge",
        "geoip_exporter_database_build_timestamp_seconds gauge",
        "geoip_exporter_database_last_reload_successful gauge",
        "geoip_exporter_database_reloads_total counter",
        "geoip_exporter_events_lost_total counter",
        "geoip_exporter_events_missed_total counter",
        "geoip_exporter_events_read_total counter",
        "geoip_exporter_events_undecodable_total counter",
        "geoip_exporter_http_connections_rejected_total counter",
        "geoip_exporter_lookup_errors_total counter",
        "geoip_exporter_network_namespaces gauge",
        "geoip_exporter_reconcile_corrections_total counter",
        "geoip_exporter_reconciles_total counter",
        "geoip_exporter_snapshot_duration_seconds gauge",
    ]
    .into_iter()
    .filter(|f| skipped || !f.starts_with("geoip_exporter_events_missed_total"))
    .collect();
    assert_eq!(
        families, expected,
        "families before any connection (the per-country ones appear with their first country)"
    );
    assert!(text.contains("geoip_exporter_events_read_total{kind=\"open\"} "));
    assert!(text.contains("process_resident_memory_bytes "));
    assert!(
        !text.contains("job_location"),
        "legacy gauge only on request"
    );
    let (status, body) = exporter.get("/").expect("landing page");
    assert_eq!(status, 200);
    assert!(body.contains("href=\"/metrics\""));
    assert_eq!(
        exporter.get("/healthz").expect("healthz"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        exporter.stop(libc::SIGINT).code(),
        Some(0),
        "SIGINT exits 0"
    );
}

/// `/api/v1/connections` shows remote addresses: absent unless enabled,
/// then the real connection with its country.
#[test]
fn connections_api_only_when_enabled() {
    let dir = temp_dir("connections-api");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let net = TestNet::create("capi", &[DE_V4]);
    let _remote = net.serve(8444);
    let conn = net.connect_to(sock(DE_V4, 8444));
    let db_arg = db.to_str().expect("utf-8");

    let off = Exporter::start(&dir, &["--geoip.database", db_arg]);
    let (status, _) = off.get("/api/v1/connections").expect("request");
    assert_eq!(status, 404, "not served by default");
    assert_eq!(off.stop(libc::SIGTERM).code(), Some(0));

    let on = Exporter::start(
        &dir,
        &["--geoip.database", db_arg, "--web.enable-connections-api"],
    );
    let (status, body) = on.get("/api/v1/connections?limit=100").expect("request");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let local = conn.local_addr().expect("local address");
    let ours: Vec<&serde_json::Value> = json["connections"]
        .as_array()
        .expect("connections array")
        .iter()
        .filter(|c| c["local_port"] == local.port())
        .collect();
    assert_eq!(ours.len(), 1, "{body}");
    assert_eq!(ours[0]["remote"], DE_V4);
    assert_eq!(ours[0]["remote_port"], 8444);
    assert_eq!(ours[0]["direction"], "outbound");
    assert_eq!(ours[0]["country"], "DE");
    let (status, body) = on.get("/api/v1/connections?limit=0").expect("request");
    assert_eq!(status, 400, "{body}");
    assert_eq!(on.stop(libc::SIGTERM).code(), Some(0));
    drop(conn);
}
