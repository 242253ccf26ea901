//! End to end with a real Prometheus server, as root: two exporters count
//! real connections to test hosts in a network namespace, Prometheus
//! scrapes them every second and evaluates `deploy/prometheus/rules.yml`,
//! and every `PromQL` expression of the Grafana dashboard and of the rules
//! is run through Prometheus's HTTP API and its answer (per country,
//! city or network) compared with the connections the test made.
//!
//! The two exporters see the same kernel; exporter B excludes the JP test
//! hosts, so a query that reads one instance and one that sums both give
//! different, known answers. Both exclude every address but this test's
//! own hosts, so other traffic on the machine (other tests, package
//! downloads) cannot change a count. Both run with an ASN and a city
//! database and `--labels asn,city`, for the panels of networks and
//! cities.
#![expect(
    clippy::float_cmp,
    reason = "sample values are integers, compared exactly"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr, TcpStream},
    time::{SystemTime, UNIX_EPOCH},
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, build_stamp, promtool_check_metrics, temp_dir},
    fixtures::{write_asn_labels_database, write_city_database, write_database},
    netns::{HOST_V4, HOST_V6, Server, TestNet, host_listener, sock},
    prometheus::{
        PanelQuery, PrometheusServer, Sample, dashboard_queries, deploy_dir, exposed_metric_names,
        grafana_regex_escape, interpolate, load_json, metric_names, url_encode, variable_queries,
    },
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json::Value;

/// This test's hosts: addresses inside the test database's ranges that no
/// other test uses.
const DE4: &str = "192.0.2.71";
const DE6: &str = "2001:db8:de::71";
const JP4: &str = "198.51.100.71";
const JP6: &str = "2001:db8:a::71";
const BR4: &str = "203.0.113.71";
const BR6: &str = "2001:db8:b::71";
/// In the database's range without a country: counted as `unknown`.
const UNKNOWN4: &str = "192.0.2.171";
const HOSTS: &[&str] = &[DE4, DE6, JP4, JP6, BR4, BR6, UNKNOWN4];

const SERVICE_PORT: u16 = 8444;
const JOB: &str = "geoip";
/// The build time of the test database (`fixtures::write_database`).
const DATABASE_BUILT: u64 = 1_750_000_000;
/// What Grafana's `$__rate_interval` and `$__range` stand for here.
const RATE_INTERVAL: &str = "1m";
const RANGE: &str = "5m";

type Labels = BTreeMap<String, String>;

/// What the ASN and city databases (`fixtures::write_asn_labels_database`,
/// `fixtures::write_city_database`) answer for this test's hosts of one
/// country: the hosts of a country answer alike.
struct Place {
    asn: &'static str,
    as_org: &'static str,
    city: &'static str,
    /// The city's `latitude` and `longitude` labels, as exported.
    location: Option<(&'static str, &'static str)>,
}

fn place_of(country: &str) -> Place {
    match country {
        "DE" => Place {
            asn: "64500",
            as_org: "Deutsche Example",
            city: "Berlin",
            location: Some(("52.5244", "13.4105")),
        },
        "JP" => Place {
            asn: "64501",
            as_org: "Japan Example",
            city: "Tokyo",
            location: Some(("35.6895", "139.6917")),
        },
        // No AS number for BR or 192.0.2.128/25; the city database has a
        // record without a city for BR4, nothing for BR6 and UNKNOWN4. The
        // `country` of an unknown city is the connection's.
        "BR" | "unknown" => Place {
            asn: "unknown",
            as_org: "unknown",
            city: "unknown",
            location: None,
        },
        other => panic!("{other} is not a test country"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// Excluding everything but this test's hosts
// ---------------------------------------------------------------------------

/// An address as the exporter keys it: IPv4 as `::ffff:a.b.c.d`.
fn canonical(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn in_net(net: u128, len: u8, addr: u128) -> bool {
    len == 0 || addr >> (128 - u32::from(len)) == net >> (128 - u32::from(len))
}

fn split(net: u128, len: u8, keep: &[u128], out: &mut Vec<(u128, u8)>) {
    let inside: Vec<u128> = keep
        .iter()
        .copied()
        .filter(|a| in_net(net, len, *a))
        .collect();
    if inside.is_empty() {
        out.push((net, len));
    } else if len < 128 {
        split(net, len + 1, &inside, out);
        split(net | 1 << (127 - u32::from(len)), len + 1, &inside, out);
    }
}

/// Networks (in the exporter's IPv6 space, IPv4 as `::ffff:0:0/96`) that
/// cover every address but `keep`, each once.
fn everything_but(keep: &[&str]) -> Vec<(u128, u8)> {
    let keep: Vec<u128> = keep
        .iter()
        .map(|a| canonical(a.parse().expect("address")))
        .collect();
    let mut out = Vec::new();
    split(0, 0, &keep, &mut out);
    out
}

/// `--exclude` for an exporter that counts only `keep`.
fn exclude_arg(keep: &[&str]) -> String {
    let cidrs: Vec<String> = everything_but(keep)
        .into_iter()
        .map(|(net, len)| format!("{}/{len}", Ipv6Addr::from(net)))
        .collect();
    format!("--exclude={}", cidrs.join(","))
}

#[test]
fn everything_but_covers_all_other_addresses_once() {
    let keep = [DE4, DE6, JP4];
    let nets = everything_but(&keep);
    let covering = |a: &str| {
        let a = canonical(a.parse().expect("address"));
        nets.iter().filter(|(n, l)| in_net(*n, *l, a)).count()
    };
    for kept in keep {
        assert_eq!(covering(kept), 0, "{kept} must stay counted");
    }
    for other in [
        "192.0.2.70",
        "192.0.2.72",
        "0.0.0.0",
        "255.255.255.255",
        "2001:db8:de::70",
        "2001:db8:de::72",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:0:0",
        "1.1.1.1",
        BR4,
        UNKNOWN4,
    ] {
        assert_eq!(covering(other), 1, "{other} is excluded exactly once");
    }
    assert!(nets.len() < 3 * 128, "{} networks", nets.len());
}

// ---------------------------------------------------------------------------
// What the test did, and what each query must answer
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    now: f64,
    opened: f64,
    /// Opened since Prometheus first saw the series: its rate is not 0.
    opened_later: bool,
}

/// The connections the test opened and closed, by (country, direction),
/// and which instance counts which countries.
struct Ledger {
    series: BTreeMap<(String, String), Counts>,
    /// Instance label and the countries it does not count.
    instances: Vec<(String, Vec<&'static str>)>,
    wave: u8,
}

impl Ledger {
    fn open(&mut self, country: &str, direction: &str) {
        let c = self
            .series
            .entry((country.to_owned(), direction.to_owned()))
            .or_default();
        c.now += 1.0;
        c.opened += 1.0;
        c.opened_later |= self.wave > 1;
    }

    fn close(&mut self, country: &str, direction: &str) {
        let c = self
            .series
            .get_mut(&(country.to_owned(), direction.to_owned()))
            .expect("closing an opened series");
        c.now -= 1.0;
    }

    /// Every (labels, counts) of every instance that `sel` selects.
    fn selected<'a>(&'a self, sel: &'a Selection) -> impl Iterator<Item = (Labels, Counts)> + 'a {
        self.instances
            .iter()
            .filter(|(instance, _)| sel.instances.contains(instance))
            .flat_map(move |(instance, hidden)| {
                self.series
                    .iter()
                    .filter(|((country, direction), _)| {
                        !hidden.contains(&country.as_str())
                            && sel.directions.contains(&direction.as_str())
                    })
                    .map(move |((country, direction), counts)| {
                        let place = place_of(country);
                        let mut l = labels(&[
                            ("job", JOB),
                            ("instance", instance),
                            ("country", country),
                            ("direction", direction),
                            ("asn", place.asn),
                            ("as_org", place.as_org),
                            ("city", place.city),
                        ]);
                        if let Some((latitude, longitude)) = place.location {
                            l.extend(labels(&[("latitude", latitude), ("longitude", longitude)]));
                        }
                        (l, *counts)
                    })
            })
    }

    /// The gauge summed by `by`.
    fn now(&self, sel: &Selection, by: &[&str]) -> Vec<Sample> {
        let mut sums: BTreeMap<Labels, f64> = BTreeMap::new();
        for (l, c) in self.selected(sel) {
            *sums.entry(keep(&l, by)).or_default() += c.now;
        }
        sums.into_iter().collect()
    }

    /// The city gauge summed by country and city, of the cities with a
    /// place (not `other`, not `unknown`), with their coordinates: what
    /// the join with `geoip_city_location_info` answers.
    fn cities(&self, sel: &Selection) -> Vec<Sample> {
        self.now(sel, &["country", "city", "latitude", "longitude"])
            .into_iter()
            .filter(|(l, _)| l.contains_key("latitude"))
            .collect()
    }

    /// `sum by (...) (rate(opened_total))`: which groups have opens after
    /// Prometheus first saw them (rate > 0) and which do not (rate 0).
    fn opened_rates(&self, sel: &Selection, by: &[&str]) -> Expect {
        let mut groups: BTreeMap<Labels, bool> = BTreeMap::new();
        for (l, c) in self.selected(sel) {
            *groups.entry(keep(&l, by)).or_default() |= c.opened_later;
        }
        Expect::Rates {
            positive: groups
                .iter()
                .filter(|g| *g.1)
                .map(|g| g.0.clone())
                .collect(),
            zero: groups
                .iter()
                .filter(|g| !*g.1)
                .map(|g| g.0.clone())
                .collect(),
        }
    }

    /// `geoip_exporter_connections_tracked` summed over the selected
    /// instances (every direction).
    fn tracked(&self, sel: &Selection) -> f64 {
        let all = Selection {
            directions: vec!["inbound", "outbound"],
            ..sel.clone()
        };
        self.selected(&all).map(|(_, c)| c.now).sum()
    }

    /// Per instance: `sum by (instance, country, direction) (geoip_connections)`.
    fn per_instance(&self) -> Vec<Sample> {
        self.now(&self.all(), &["instance", "country", "direction"])
    }

    fn all(&self) -> Selection {
        Selection {
            name: "All",
            vars: Vec::new(),
            instances: self.instances.iter().map(|(i, _)| i.clone()).collect(),
            directions: vec!["inbound", "outbound"],
        }
    }
}

fn keep(l: &Labels, by: &[&str]) -> Labels {
    l.iter()
        .filter(|(k, _)| by.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A choice of the dashboard's variables, as Grafana would substitute it,
/// and what it selects.
#[derive(Clone, Debug)]
struct Selection {
    name: &'static str,
    vars: Vec<(&'static str, String)>,
    instances: Vec<String>,
    directions: Vec<&'static str>,
}

impl Selection {
    fn interpolate(&self, expr: &str) -> String {
        let mut vars: Vec<(&str, &str)> = self.vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
        vars.extend([
            ("__rate_interval", RATE_INTERVAL),
            ("__range", RANGE),
            ("__interval", "15s"),
        ]);
        interpolate(expr, &vars).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The selections the dashboard's queries run with: "All" everywhere (the
/// dashboard's default), one instance and one direction, and both
/// instances and both directions picked one by one (a multi-value regex).
fn selections(a: &str, b: &str) -> Vec<Selection> {
    vec![
        Selection {
            name: "All",
            vars: vec![
                ("job", ".*".to_owned()),
                ("instance", ".*".to_owned()),
                ("direction", ".*".to_owned()),
            ],
            instances: vec![a.to_owned(), b.to_owned()],
            directions: vec!["inbound", "outbound"],
        },
        Selection {
            name: "instance A, outbound",
            vars: vec![
                ("job", grafana_regex_escape(JOB)),
                ("instance", grafana_regex_escape(a)),
                ("direction", "outbound".to_owned()),
            ],
            instances: vec![a.to_owned()],
            directions: vec!["outbound"],
        },
        Selection {
            name: "A and B, inbound and outbound, picked",
            vars: vec![
                ("job", grafana_regex_escape(JOB)),
                (
                    "instance",
                    format!("({}|{})", grafana_regex_escape(a), grafana_regex_escape(b)),
                ),
                ("direction", "(inbound|outbound)".to_owned()),
            ],
            instances: vec![a.to_owned(), b.to_owned()],
            directions: vec!["inbound", "outbound"],
        },
    ]
}

/// What a query must answer.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly these series with exactly these values.
    Exact(Vec<Sample>),
    /// Exactly these series; values > 0 for `positive`, 0 for `zero`.
    Rates {
        positive: BTreeSet<Labels>,
        zero: BTreeSet<Labels>,
    },
    /// Exactly these series, each value >= 0.
    NonNegative(BTreeSet<Labels>),
}

impl Expect {
    fn scalar(value: f64) -> Self {
        Self::Exact(vec![(Labels::new(), value)])
    }

    fn holds(&self, got: &[Sample]) -> bool {
        let got: Vec<Sample> = got
            .iter()
            .map(|(l, v)| {
                let mut l = l.clone();
                l.remove("__name__");
                (l, *v)
            })
            .collect();
        let names: BTreeSet<&Labels> = got.iter().map(|(l, _)| l).collect();
        match self {
            Self::Exact(want) => {
                let mut got = got;
                got.sort_by(|a, b| a.0.cmp(&b.0));
                let mut want = want.clone();
                want.sort_by(|a, b| a.0.cmp(&b.0));
                got == want
            }
            Self::Rates { positive, zero } => {
                names == positive.union(zero).collect()
                    && got.iter().all(|(l, v)| {
                        if positive.contains(l) {
                            *v > 0.0
                        } else {
                            *v == 0.0
                        }
                    })
            }
            Self::NonNegative(want) => {
                names == want.iter().collect() && got.iter().all(|(_, v)| *v >= 0.0)
            }
        }
    }
}

/// What each dashboard query must answer under `sel`, at time `t`.
fn dashboard_expectation(q: &PanelQuery, sel: &Selection, ledger: &Ledger, t: u64) -> Expect {
    let instances: BTreeSet<Labels> = sel
        .instances
        .iter()
        .map(|i| labels(&[("instance", i)]))
        .collect();
    let both_directions = Selection {
        directions: vec!["inbound", "outbound"],
        ..sel.clone()
    };
    match (q.panel_title.as_str(), q.ref_id.as_str()) {
        ("Connections by country" | "Connections by country over time" | "Top countries", "A") => {
            Expect::Exact(ledger.now(sel, &["country"]))
        }
        ("Top countries", "B") | ("New connections per second by country", "A") => {
            ledger.opened_rates(sel, &["country"])
        }
        // The split is not filtered by the direction variable.
        ("Inbound and outbound" | "Inbound and outbound over time", "A") => {
            Expect::Exact(ledger.now(&both_directions, &["direction"]))
        }
        ("By country and direction", "A") => {
            Expect::Exact(ledger.now(sel, &["country", "direction"]))
        }
        ("Events lost" | "Lookup and decode errors", _) | ("Kernel events per second", "B") => {
            Expect::scalar(0.0)
        }
        ("Tracked connections", "A") => Expect::scalar(ledger.tracked(sel)),
        ("Cities", "A") => Expect::Exact(ledger.cities(sel)),
        // Fewer than 10 networks: topk keeps them all.
        ("Busiest networks (ASN)", "A") => Expect::Exact(ledger.now(sel, &["asn", "as_org"])),
        ("Oldest database", "A") => Expect::scalar(u64_f64(t) - u64_f64(DATABASE_BUILT)),
        ("Exporters", "A") => {
            let (revision, build_date) = build_stamp();
            Expect::Exact(
                sel.instances
                    .iter()
                    .map(|i| {
                        (
                            labels(&[
                                ("instance", i),
                                ("job", JOB),
                                ("version", env!("CARGO_PKG_VERSION")),
                                ("revision", &revision),
                                ("build_date", &build_date),
                            ]),
                            1.0,
                        )
                    })
                    .collect(),
            )
        }
        ("Kernel events per second", "A") => Expect::Rates {
            positive: [labels(&[("kind", "open")]), labels(&[("kind", "close")])].into(),
            zero: BTreeSet::new(),
        },
        // Nested runs the kernel skips are rare but not impossible here;
        // each may be repaired by a reconcile.
        ("Kernel events per second", "C" | "D") => Expect::NonNegative([Labels::new()].into()),
        ("Exporter CPU", "A") => Expect::NonNegative(instances),
        ("Exporter memory", "A") => Expect::Rates {
            positive: instances,
            zero: BTreeSet::new(),
        },
        (title, ref_id) => panic!(
            "no expectation for query {ref_id} of panel {title:?} ({}): add one to this test",
            q.expr
        ),
    }
}

/// What each rule's expression (and a recording rule's series) must
/// answer, by rule name, at time `t`.
fn rule_expectation(name: &str, ledger: &Ledger, t: u64) -> Expect {
    let all = ledger.all();
    let job = labels(&[("job", JOB)]);
    let age = u64_f64(t) - u64_f64(DATABASE_BUILT);
    match name {
        "country_direction:geoip_connections:sum" => {
            Expect::Exact(ledger.now(&all, &["job", "country", "direction"]))
        }
        "country:geoip_connections:sum" => Expect::Exact(ledger.now(&all, &["job", "country"])),
        "country_direction:geoip_connections_opened:rate5m" => {
            ledger.opened_rates(&all, &["job", "country", "direction"])
        }
        "country:geoip_connections_opened:rate5m" => ledger.opened_rates(&all, &["job", "country"]),
        "job:geoip_exporter_connections_tracked:sum" => {
            Expect::Exact(vec![(job, ledger.tracked(&all))])
        }
        "job:geoip_exporter_events_lost:rate5m" => Expect::Exact(vec![(job, 0.0)]),
        "GeoIPExporterDown"
        | "GeoIPExporterEventsLost"
        | "GeoIPExporterUndecodableEvents"
        | "GeoIPDatabaseReloadFailed" => Expect::Exact(Vec::new()),
        "GeoIPDatabaseOutdated" => Expect::Exact(if age > 45.0 * 86400.0 {
            all.instances
                .iter()
                .map(|i| (labels(&[("instance", i), ("job", JOB)]), age))
                .collect()
        } else {
            Vec::new()
        }),
        other => panic!("no expectation for rule {other}: add one to this test"),
    }
}

fn u64_f64(v: u64) -> f64 {
    f64::from(u32::try_from(v).expect("a time before 2106"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn country_of(addr: &str) -> &'static str {
    match addr {
        DE4 | DE6 => "DE",
        JP4 | JP6 => "JP",
        BR4 | BR6 => "BR",
        UNKNOWN4 => "unknown",
        other => panic!("{other} is not a test host"),
    }
}

/// Connections held open, by a name the test closes them by.
struct Conns<'a> {
    net: &'a TestNet,
    local: &'a Server,
    host_port: u16,
    ledger: &'a mut Ledger,
    held: BTreeMap<&'static str, Vec<TcpStream>>,
}

impl Conns<'_> {
    fn out(&mut self, name: &'static str, target: &str) {
        let s = self.net.connect_to(sock(target, SERVICE_PORT));
        self.held.entry(name).or_default().push(s);
        self.ledger.open(country_of(target), "outbound");
    }

    fn inbound(&mut self, name: &'static str, source: &str) {
        let host = if source.contains(':') {
            HOST_V6
        } else {
            HOST_V4
        };
        let client = self.net.connect_from(source, sock(host, self.host_port));
        let accepted = self
            .local
            .take(client.local_addr().expect("client address"));
        self.held
            .entry(name)
            .or_default()
            .extend([client, accepted]);
        self.ledger.open(country_of(source), "inbound");
    }

    fn close(&mut self, name: &'static str, country: &str, direction: &str) {
        drop(self.held.remove(name).expect("an open connection"));
        self.ledger.close(country, direction);
    }
}

/// Wait until Prometheus holds exactly the ledger's gauges per instance.
fn wait_for_prometheus(prom: &PrometheusServer, ledger: &Ledger, when: &str) {
    let expr = "sum by (instance, country, direction) (geoip_connections)";
    let want = Expect::Exact(ledger.per_instance());
    let got = prom.wait_for(expr, |r| want.holds(r));
    assert!(
        want.holds(&got),
        "{when}: Prometheus has {got:#?}\nwant {want:#?}\n{}",
        prom.log()
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn dashboard_and_rules_answer_exactly_in_a_real_prometheus() {
    let dir = temp_dir("prometheus");
    let db = dir.join("test.mmdb");
    write_database(&db);
    let (asn_db, city_db) = (dir.join("asn.mmdb"), dir.join("city.mmdb"));
    write_asn_labels_database(&asn_db);
    write_city_database(&city_db);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let databases = [
        "--geoip.database".to_owned(),
        path(&db),
        "--geoip.database".to_owned(),
        path(&asn_db),
        "--geoip.database".to_owned(),
        path(&city_db),
        "--labels=asn,city".to_owned(),
    ];
    let args = |keep: &[&str]| -> Vec<String> {
        databases
            .iter()
            .cloned()
            .chain([exclude_arg(keep)])
            .collect()
    };
    let net = TestNet::create("prom", HOSTS);
    let _remote = net.serve(SERVICE_PORT);
    let (local, host_port) = host_listener();

    let a_args = args(HOSTS);
    let a = Exporter::start(&dir, &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let not_jp: Vec<&str> = HOSTS
        .iter()
        .copied()
        .filter(|h| country_of(h) != "JP")
        .collect();
    let b_args = args(&not_jp);
    let b = Exporter::start(&dir, &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let rules = deploy_dir().join("prometheus/rules.yml");
    let prom = PrometheusServer::start(&dir, JOB, &[a.addr, b.addr], &[rules]);

    let up = prom.wait_for(&format!("up{{job=\"{JOB}\"}}"), |r| {
        r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)
    });
    assert!(
        up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0),
        "both exporters scraped: {up:?}\n{}",
        prom.log()
    );

    let mut ledger = Ledger {
        series: BTreeMap::new(),
        instances: vec![(a_addr.clone(), Vec::new()), (b_addr.clone(), vec!["JP"])],
        wave: 1,
    };
    let mut c = Conns {
        net: &net,
        local: &local,
        host_port,
        ledger: &mut ledger,
        held: BTreeMap::new(),
    };
    // Wave 1: one connection for each (country, direction), so that every
    // series exists in Prometheus before wave 2.
    c.out("out-de", DE4);
    c.out("out-jp", JP4);
    c.out("out-br", BR6);
    c.out("out-unknown", UNKNOWN4);
    c.inbound("in-de", DE4);
    c.inbound("in-jp", JP6);
    c.inbound("in-br", BR4);
    wait_for_prometheus(&prom, c.ledger, "after wave 1");

    // Wave 2: more of each but `unknown`; close the `unknown` one and one
    // inbound DE.
    c.ledger.wave = 2;
    c.out("out-de2", DE4);
    c.out("out-de3", DE6);
    c.out("out-jp2", JP4);
    c.out("out-br2", BR4);
    c.inbound("in-de2", DE6);
    c.inbound("in-jp2", JP4);
    c.inbound("in-br2", BR6);
    c.close("out-unknown", "unknown", "outbound");
    c.close("in-de", "DE", "inbound");
    let held = std::mem::take(&mut c.held);
    drop(c);
    wait_for_prometheus(&prom, &ledger, "after wave 2");
    check_opt_in_expectations(&ledger);

    // The live output is clean for promtool and as Prometheus read it.
    for exporter in [&a, &b] {
        let text = exporter.scrape();
        assert_eq!(
            promtool_check_metrics(&text),
            "",
            "promtool check metrics on the live /metrics of {}",
            exporter.addr
        );
    }
    let text = a.scrape();
    check_metadata(&prom, &text);
    let live = exposed_metric_names(&text);

    // The dashboard's variables offer the two instances of the job.
    check_variables(&prom, &a_addr, &b_addr, &live);

    // Every query of the dashboard, under each selection of its variables.
    let dashboard = load_json(&deploy_dir().join("grafana/geoip-exporter.json"));
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{} dashboard queries", queries.len());
    for sel in selections(&a_addr, &b_addr) {
        for q in &queries {
            let expr = sel.interpolate(&q.expr);
            let names = metric_names(&expr).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                names.is_subset(&live),
                "{:?} reads {names:?}, not all exported",
                q.panel_title
            );
            let (got, want) =
                query_until(&prom, &expr, |t| dashboard_expectation(q, &sel, &ledger, t));
            assert!(
                want.holds(&got),
                "panel {:?} query {} with {}:\n{expr}\ngot {got:#?}\nwant {want:#?}",
                q.panel_title,
                q.ref_id,
                sel.name
            );
        }
    }

    // Every rule the server loaded from rules.yml: its expression, and for
    // a recording rule the series it records once evaluated.
    let rules = prom.rules();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.kind == "recording")
        .map(|r| r.name.clone())
        .collect();
    assert!(recorded.len() >= 4, "recording rules: {recorded:?}");
    assert!(
        rules.iter().filter(|r| r.kind == "alerting").count() >= 3,
        "alert rules: {rules:#?}"
    );
    for rule in &rules {
        let names = metric_names(&rule.query).unwrap_or_else(|e| panic!("{e}"));
        let known: BTreeSet<String> = live
            .iter()
            .chain(&recorded)
            .cloned()
            .chain(["up".to_owned()])
            .collect();
        assert!(
            names.is_subset(&known),
            "rule {} reads {names:?}",
            rule.name
        );
        let (got, want) = query_until(&prom, &rule.query, |t| {
            rule_expectation(&rule.name, &ledger, t)
        });
        assert!(
            want.holds(&got),
            "rule {} expression {}\ngot {got:#?}\nwant {want:#?}",
            rule.name,
            rule.query
        );
        if rule.kind == "recording" {
            let got = prom.wait_for(&rule.name, |r| want.holds(r));
            assert!(
                want.holds(&got),
                "recorded series {}\ngot {got:#?}\nwant {want:#?}",
                rule.name
            );
        }
    }

    // The alerts Prometheus evaluated: only the old test database's, one
    // per instance, pending for its hour.
    let want_alerts: BTreeSet<(String, String)> =
        if now_secs().saturating_sub(DATABASE_BUILT) > 45 * 86400 {
            [&a_addr, &b_addr]
                .iter()
                .map(|i| ("GeoIPDatabaseOutdated".to_owned(), (*i).clone()))
                .collect()
        } else {
            BTreeSet::new()
        };
    let alert_set = |r: &[Sample]| -> BTreeSet<(String, String)> {
        r.iter()
            .map(|(l, _)| (l["alertname"].clone(), l["instance"].clone()))
            .collect()
    };
    let alerts = prom.wait_for("ALERTS", |r| alert_set(r) == want_alerts);
    assert_eq!(alert_set(&alerts), want_alerts, "ALERTS: {alerts:#?}");
    assert!(
        alerts.iter().all(|(l, _)| l["alertstate"] == "pending"),
        "the database alert waits an hour before firing: {alerts:#?}"
    );

    drop(prom);
    drop(held);
}

/// The expectations of the city and network panels with every instance
/// and direction, worked out by hand from the waves: now open DE 3
/// outbound + 1 inbound, JP 2 + 2, BR 2 + 2, unknown 0 + 0; instance A
/// counts them all, B all but JP.
fn check_opt_in_expectations(ledger: &Ledger) {
    let all = ledger.all();
    assert_eq!(
        ledger.cities(&all),
        [
            (
                labels(&[
                    ("country", "DE"),
                    ("city", "Berlin"),
                    ("latitude", "52.5244"),
                    ("longitude", "13.4105"),
                ]),
                8.0
            ),
            (
                labels(&[
                    ("country", "JP"),
                    ("city", "Tokyo"),
                    ("latitude", "35.6895"),
                    ("longitude", "139.6917"),
                ]),
                4.0
            ),
        ],
        "cities: Berlin 4 per instance, Tokyo 4 on A only"
    );
    assert_eq!(
        ledger.now(&all, &["asn", "as_org"]),
        [
            (
                labels(&[("asn", "64500"), ("as_org", "Deutsche Example")]),
                8.0
            ),
            (
                labels(&[("asn", "64501"), ("as_org", "Japan Example")]),
                4.0
            ),
            (labels(&[("asn", "unknown"), ("as_org", "unknown")]), 8.0),
        ],
        "networks: BR and unknown have no AS number (4 per instance)"
    );
}

/// Prometheus read each family with the type and help the exporter wrote.
fn check_metadata(prom: &PrometheusServer, text: &str) {
    let mut help = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), unescape_help(h));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
            types.insert(name.to_owned(), t.to_owned());
        }
    }
    let geoip: Vec<&String> = types.keys().filter(|n| n.starts_with("geoip_")).collect();
    assert!(geoip.len() >= 10, "families: {geoip:?}");
    let metadata = prom.api("/api/v1/metadata");
    for name in geoip {
        let entries = metadata[name.as_str()]
            .as_array()
            .unwrap_or_else(|| panic!("Prometheus has no metadata for {name}: {metadata}"));
        assert!(
            entries.iter().all(|e| e["type"] == types[name].as_str()
                && help.get(name).is_none_or(|h| e["help"] == h.as_str())),
            "{name}: exposed as {} {:?}, Prometheus read {entries:?}",
            types[name],
            help.get(name)
        );
    }
}

/// The job and instance variables, run the way Grafana runs
/// `label_values(selector, label)`: the label values API with the
/// selector as `match[]`.
fn check_variables(prom: &PrometheusServer, a: &str, b: &str, live: &BTreeSet<String>) {
    let dashboard = load_json(&deploy_dir().join("grafana/geoip-exporter.json"));
    let vars = variable_queries(&dashboard).unwrap_or_else(|e| panic!("{e}"));
    let mut instances = vec![a.to_owned(), b.to_owned()];
    instances.sort();
    let expected: BTreeMap<&str, Vec<String>> =
        [("job", vec![JOB.to_owned()]), ("instance", instances)].into();
    let mut seen = Vec::new();
    for (name, query) in vars {
        let label = query
            .label
            .unwrap_or_else(|| panic!("variable {name}: not a label_values query"));
        let mut path = format!("/api/v1/label/{label}/values");
        if let Some(selector) = query.expr {
            let selector = interpolate(&selector, &[("job", ".*"), ("instance", ".*")])
                .unwrap_or_else(|e| panic!("{e}"));
            let names = metric_names(&selector).unwrap_or_else(|e| panic!("{e}"));
            assert!(names.is_subset(live), "variable {name} reads {names:?}");
            path = format!("{path}?match[]={}", url_encode(&selector));
        }
        let values: Vec<String> = prom
            .api(&path)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let want = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no expectation for variable {name}: add one"));
        assert_eq!(&values, want, "values of variable {name} ({path})");
        seen.push(name);
    }
    assert_eq!(seen, ["job", "instance"], "the query variables");
}

/// Evaluate `expr` at the current second until it answers what `want(t)`
/// says for that second (up to 15 s: a query at a whole second may miss
/// the scrape of the same second); return the last answer and want.
fn query_until(
    prom: &PrometheusServer,
    expr: &str,
    want: impl Fn(u64) -> Expect,
) -> (Vec<Sample>, Expect) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let t = now_secs();
        let expect = want(t);
        let got = prom.query_at(expr, t);
        if expect.holds(&got) || std::time::Instant::now() > deadline {
            return (got, expect);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// HELP text as written in the exposition format, unescaped.
fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
