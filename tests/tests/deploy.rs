//! What `deploy/` ships, checked the way Prometheus and Grafana read it
//! (Grafana itself is not packaged for these machines, so the dashboard
//! is checked for its structure):
//! - `promtool check config` on the example configuration, from its
//!   folder, and on the configuration the real-server tests generate;
//!   `promtool check rules` and `promtool test rules` on the rules;
//! - the dashboard: its variables, the data source variable on every
//!   panel and query, the Geomap panels (countries by lookup, cities by
//!   coordinates), the layout, and every metric and label it reads taken
//!   from the live `/metrics` of an exporter counting a real connection
//!   with `--labels asn,city` (root);
//! - the provisioning files point Grafana at the dashboard.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr},
    path::{Component, Path, PathBuf},
    process::Command,
};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, nonzero, run_command_to_exit, temp_dir},
    fixtures::{write_asn_labels_database, write_city_database, write_database},
    netns::TestNet,
    prometheus::{
        PanelQuery, dashboard_panels, dashboard_queries, deploy_dir, exposed_metric_names,
        grouping_labels, interpolate, load_json, metric_names, selectors, test_config,
        variable_queries,
    },
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json::{Value, json};

/// A DE test host no other test uses.
const DE_HOST: &str = "192.0.2.81";
const SERVICE_PORT: u16 = 8445;

/// The families that count connections by country and direction.
const PER_COUNTRY: &[&str] = &[
    "geoip_connections",
    "geoip_connections_opened_total",
    "geoip_connections_closed_total",
];

/// The opt-in families (`--labels asn,city`) that count connections by
/// direction too.
const BY_LABEL: &[&str] = &["geoip_connections_by_asn", "geoip_connections_by_city"];

/// What Grafana substitutes for the variables with "All" selected.
const ALL: &[(&str, &str)] = &[
    ("job", ".*"),
    ("instance", ".*"),
    ("direction", ".*"),
    ("__rate_interval", "1m"),
    ("__range", "1h"),
    ("__interval", "15s"),
];

fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana/geoip-exporter.json")
}

fn datasource_ref() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// Run promtool in `dir`: (success, what it printed).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = run_command_to_exit(Command::new("promtool").args(args).current_dir(dir));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn prometheus_configs_pass_promtool() {
    let dir = deploy_dir().join("prometheus");
    let (ok, out) = promtool(&dir, &["check", "config", "prometheus.yml"]);
    assert!(ok, "promtool check config prometheus.yml:\n{out}");
    assert!(
        out.contains("SUCCESS: 1 rule files found"),
        "the example loads rules.yml: {out}"
    );
    let config = fs::read_to_string(dir.join("prometheus.yml")).expect("prometheus.yml");
    let rules = fs::read_to_string(dir.join("rules.yml")).expect("rules.yml");
    assert!(
        config.contains("job_name: geoip") && rules.contains("up{job=\"geoip\"}"),
        "the exporter-down alert matches the example's job name"
    );

    // The configuration the real-server tests run with.
    let tmp = temp_dir("deploy-config");
    let targets: [SocketAddr; 2] = [([127, 0, 0, 1], 9300).into(), ([127, 0, 0, 1], 9301).into()];
    fs::write(
        tmp.join("prometheus.yml"),
        test_config("geoip", &targets, &[dir.join("rules.yml")]),
    )
    .expect("write the test config");
    let (ok, out) = promtool(&tmp, &["check", "config", "prometheus.yml"]);
    assert!(ok, "promtool check config on the tests' config:\n{out}");
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "rules.yml"]);
    assert!(ok, "promtool check rules rules.yml:\n{out}");
    let rules = fs::read_to_string(dir.join("rules.yml")).expect("rules.yml");
    let count = rules
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- record:") || l.starts_with("- alert:")
        })
        .count();
    assert!(count >= 8, "{count} rules");
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "promtool found every rule of the file ({count}): {out}"
    );
    let (ok, out) = promtool(&dir, &["test", "rules", "rules_test.yml"]);
    assert!(ok, "promtool test rules rules_test.yml:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

fn variables(d: &Value) -> BTreeMap<String, &Value> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v))
        .collect()
}

#[test]
fn dashboard_is_importable_and_provisionable_as_is_with_its_variables() {
    let text = fs::read_to_string(dashboard_path()).expect("dashboard");
    let d = load_json(&dashboard_path());
    assert!(
        d.get("__inputs").is_none() && !text.contains("${DS_"),
        "no import-time inputs: the data source is a dashboard variable"
    );
    assert!(d["id"].is_null(), "no database id");
    assert_eq!(d["uid"], "geoip-exporter", "a stable uid for links");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        (36..=38).contains(&schema),
        "schemaVersion {schema}: at most Grafana 10.0's (38), so 10, 11 and 12 all migrate it up"
    );

    let order: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(order, ["datasource", "job", "instance", "direction"]);
    let vars = variables(&d);
    let ds = vars["datasource"];
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    assert_ne!(ds["includeAll"], true);
    for name in ["job", "instance"] {
        let v = vars[name];
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(
            v["datasource"],
            datasource_ref(),
            "{name} queries the variable"
        );
        assert_eq!(
            (&v["includeAll"], &v["multi"], &v["allValue"]),
            (&json!(true), &json!(true), &json!(".*")),
            "{name}: All, multi-value, All as .*"
        );
        assert_eq!(v["definition"], v["query"]["query"], "{name}");
        assert!(
            v["refresh"] == 1 || v["refresh"] == 2,
            "{name} refreshes on load or time change"
        );
    }
    let instance = selectors(
        &variable_queries(&d)
            .expect("variable queries")
            .into_iter()
            .find(|(n, _)| n == "instance")
            .and_then(|(_, q)| q.expr)
            .expect("instance variable selector"),
    )
    .expect("instance selector");
    assert!(
        instance.iter().all(|s| s.has("job", "=~", "$job")),
        "instance values follow the job chosen: {instance:?}"
    );
    let dir = vars["direction"];
    assert_eq!(dir["type"], "custom");
    assert_eq!(dir["query"], "inbound,outbound");
    assert_eq!(
        (&dir["includeAll"], &dir["multi"], &dir["allValue"]),
        (&json!(true), &json!(true), &json!(".*"))
    );
    let options: Vec<&str> = dir["options"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["value"].as_str())
        .collect();
    assert_eq!(options, ["$__all", "inbound", "outbound"]);
}

#[test]
fn every_panel_and_query_uses_the_data_source_variable_and_fits_the_grid() {
    let d = load_json(&dashboard_path());
    let panels = dashboard_panels(&d);
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells: Vec<(&str, [u64; 4])> = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id not unique"
        );
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(
            [
                "geomap",
                "table",
                "timeseries",
                "stat",
                "piechart",
                "bargauge"
            ]
            .contains(&kind),
            "{title}: panel type {kind} (a core panel of Grafana 10 to 12)"
        );
        assert_eq!(
            p["datasource"],
            datasource_ref(),
            "{title}: panel data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(
                t["datasource"],
                datasource_ref(),
                "{title}: query data source"
            );
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: expr"
            );
            let instant = t["instant"] == true;
            assert_ne!(
                instant,
                t["range"] == true,
                "{title}: instant or range, not both"
            );
            if ["geomap", "table", "piechart", "bargauge"].contains(&kind) {
                assert!(
                    instant,
                    "{title}: a {kind} shows the current values (instant)"
                );
            }
            if kind == "timeseries" {
                assert!(!instant, "{title}: a time series needs a range query");
            }
            if ["geomap", "table"].contains(&kind) {
                assert_eq!(t["format"], "table", "{title}: one row per series");
            }
        }
        // Grafana names a table query's value field "Value", or "Value #A"
        // when the panel has several queries.
        let transformations = p["transformations"].to_string();
        for (i, _) in transformations.match_indices("Value #") {
            let ref_id: String = transformations[i + 7..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            assert!(
                targets.len() > 1 && refs.contains(ref_id.as_str()),
                "{title}: field \"Value #{ref_id}\" does not exist"
            );
        }
        let g = &p["gridPos"];
        let cell = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(
            cell[2] > 0 && cell[3] > 0 && cell[0] + cell[2] <= 24,
            "{title}: {g}"
        );
        for (other, o) in &cells {
            let apart = cell[0] + cell[2] <= o[0]
                || o[0] + o[2] <= cell[0]
                || cell[1] + cell[3] <= o[1]
                || o[1] + o[3] <= cell[1];
            assert!(apart, "{title} overlaps {other}");
        }
        cells.push((title, cell));
    }
}

#[test]
fn queries_filter_by_the_variables_and_show_what_the_issue_asks_for() {
    let d = load_json(&dashboard_path());
    let queries = dashboard_queries(&d);
    for q in &queries {
        check_query(q);
    }
    let used = |var: &str| queries.iter().any(|q| q.expr.contains(var));
    for var in ["$job", "$instance", "$direction", "$__rate_interval"] {
        assert!(used(var), "no query uses {var}");
    }
    check_geomaps(&dashboard_panels(&d));

    // The panels the issue asks for.
    let has = |kind: &str, want: &dyn Fn(&PanelQuery) -> bool| {
        queries.iter().any(|q| q.panel_type == kind && want(q))
    };
    let by = |q: &PanelQuery, labels: &[&str]| {
        grouping_labels(&q.expr).expect("grouping")
            == labels.iter().map(|l| (*l).to_owned()).collect()
    };
    let reads = |q: &PanelQuery, name: &str| metric_names(&q.expr).expect("names").contains(name);
    assert!(
        has("table", &|q| by(q, &["country"])
            && reads(q, "geoip_connections")),
        "a table of countries"
    );
    assert!(
        has("timeseries", &|q| by(q, &["country"])
            && q.expr.contains("rate(geoip_connections_opened_total")),
        "new connections per second by country"
    );
    assert!(
        queries.iter().any(|q| by(q, &["direction"])),
        "an inbound/outbound split"
    );
    for health in [
        "geoip_exporter_events_lost_total",
        "geoip_exporter_connections_tracked",
        "geoip_exporter_database_build_timestamp_seconds",
    ] {
        assert!(
            queries.iter().any(|q| reads(q, health)),
            "the exporter's health: {health}"
        );
    }
    assert!(
        queries.iter().any(|q| q
            .expr
            .contains("time() - geoip_exporter_database_build_timestamp_seconds")),
        "the database's age"
    );
    assert!(
        has("table", &|q| q.expr.starts_with("topk(")
            && by(q, &["asn", "as_org"])
            && reads(q, "geoip_connections_by_asn")),
        "a table of the busiest networks"
    );

    // The opt-in families' panels say which flag they need.
    for p in dashboard_panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        let description = p["description"].as_str().unwrap_or_default();
        let read: BTreeSet<String> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .flat_map(|e| metric_names(e).expect("names"))
            .collect();
        for (family, flag) in [
            ("geoip_connections_by_asn", "--labels asn"),
            ("geoip_connections_by_city", "--labels city"),
            ("geoip_city_location_info", "--labels city"),
        ] {
            assert!(
                !read.contains(family) || description.contains(flag),
                "{title}: reads {family}, its description must say it needs {flag}"
            );
        }
    }
}

/// One panel query: it parses, it filters by the job and instance
/// variables (and by direction where the direction is not what it
/// shows), and its ranges are Grafana's.
fn check_query(q: &PanelQuery) {
    let what = format!("{:?} {}: {}", q.panel_title, q.ref_id, q.expr);
    let interpolated = interpolate(&q.expr, ALL).unwrap_or_else(|e| panic!("{what}: {e}"));
    metric_names(&interpolated).unwrap_or_else(|e| panic!("{what}: {e}"));
    let sels = selectors(&q.expr).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!sels.is_empty(), "{what}: reads no series");
    let split = grouping_labels(&q.expr)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .contains("direction");
    for s in &sels {
        assert!(
            s.has("job", "=~", "$job") && s.has("instance", "=~", "$instance"),
            "{what}: {:?} is not filtered by $job and $instance",
            s.metric
        );
        if s.metric
            .as_deref()
            .is_some_and(|m| PER_COUNTRY.contains(&m) || BY_LABEL.contains(&m))
            && !split
        {
            assert!(
                s.has("direction", "=~", "$direction"),
                "{what}: {:?} is not filtered by $direction",
                s.metric
            );
        }
    }
    for (i, _) in q.expr.match_indices('[') {
        let range = &q.expr[i..=i + q.expr[i..].find(']').expect("closed range")];
        assert!(
            range == "[$__rate_interval]" || range == "[$__range]",
            "{what}: range {range}: use $__rate_interval (rates) or $__range (totals)"
        );
    }
}

/// The world maps: countries by ISO code through the built-in gazetteer,
/// and cities by the coordinates their location info gives them.
fn check_geomaps(panels: &[&Value]) {
    let maps: Vec<&Value> = panels
        .iter()
        .copied()
        .filter(|p| p["type"] == "geomap")
        .collect();
    assert_eq!(maps.len(), 2, "two Geomap panels: countries and cities");
    let by_mode = |mode: &str| -> &Value {
        let found: Vec<&&Value> = maps
            .iter()
            .filter(|m| m["options"]["layers"][0]["location"]["mode"] == mode)
            .collect();
        assert_eq!(found.len(), 1, "one Geomap panel with location mode {mode}");
        found[0]
    };

    let countries = by_mode("lookup");
    let expr = check_markers(countries);
    assert_eq!(
        countries["options"]["layers"][0]["location"],
        json!({"mode": "lookup", "lookup": "country", "gazetteer": "public/gazetteer/countries.json"}),
        "markers placed by the country code through Grafana's country gazetteer"
    );
    assert_eq!(
        grouping_labels(&expr).expect("grouping"),
        BTreeSet::from(["country".to_owned()]),
        "one row per country: {expr}"
    );
    assert_eq!(
        metric_names(&expr).expect("names"),
        BTreeSet::from(["geoip_connections".to_owned()]),
        "{expr}"
    );

    let cities = by_mode("coords");
    let expr = check_markers(cities);
    assert_eq!(
        cities["options"]["layers"][0]["location"],
        json!({"mode": "coords", "latitude": "latitude", "longitude": "longitude"}),
        "markers placed by the latitude and longitude fields"
    );
    assert_eq!(
        grouping_labels(&expr).expect("grouping"),
        ["country", "city", "latitude", "longitude"]
            .map(str::to_owned)
            .into(),
        "one row per city, with its coordinates: {expr}"
    );
    assert_eq!(
        metric_names(&expr).expect("names"),
        ["geoip_connections_by_city", "geoip_city_location_info"]
            .map(str::to_owned)
            .into(),
        "{expr}"
    );
    // Prometheus labels are strings: the coordinates become numbers.
    let converted: BTreeSet<&str> = cities["transformations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["id"] == "convertFieldType")
        .flat_map(|t| t["options"]["conversions"].as_array().into_iter().flatten())
        .filter(|c| c["destinationType"] == "number")
        .filter_map(|c| c["targetField"].as_str())
        .collect();
    assert_eq!(
        converted,
        BTreeSet::from(["latitude", "longitude"]),
        "latitude and longitude converted to numbers"
    );
    assert_eq!(
        cities["fieldConfig"]["defaults"]["fieldMinMax"], true,
        "the count's colour scale is its own, not shared with the coordinates"
    );
}

/// A Geomap panel of one markers layer sized and coloured by its one
/// query's count; returns that query.
fn check_markers(map: &Value) -> String {
    let title = map["title"].as_str().unwrap_or_default();
    let layers = map["options"]["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{title}: one data layer");
    let layer = &layers[0];
    assert_eq!(layer["type"], "markers", "{title}");
    let style = &layer["config"]["style"];
    assert_eq!(
        style["size"]["field"], "Value",
        "{title}: sized by the count"
    );
    assert_eq!(
        style["color"]["field"], "Value",
        "{title}: coloured by the count"
    );
    assert!(
        map["fieldConfig"]["defaults"]["color"]["mode"]
            .as_str()
            .is_some_and(|m| m.starts_with("continuous-")),
        "{title}: a colour scale for the count"
    );
    assert!(map["options"]["basemap"].is_object() && map["options"]["view"].is_object());
    let targets = map["targets"].as_array().expect("targets");
    assert_eq!(
        targets.len(),
        1,
        "{title}: one query, its value field is \"Value\""
    );
    targets[0]["expr"].as_str().expect("expr").to_owned()
}

/// The label names of a `/metrics` text.
fn exposed_label_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((inside, _)) = rest.rsplit_once('}') else {
            continue;
        };
        for pair in inside.split("\",") {
            if let Some((name, _)) = pair.split_once('=') {
                names.insert(name.trim_matches(',').to_owned());
            }
        }
    }
    names
}

/// An exporter with a country, an ASN and a city database and every
/// opt-in family (`--labels asn,city`).
fn start_with_every_family() -> Exporter {
    let dir = temp_dir("deploy");
    let (db, asn_db, city_db) = (
        dir.join("test.mmdb"),
        dir.join("asn.mmdb"),
        dir.join("city.mmdb"),
    );
    write_database(&db);
    write_asn_labels_database(&asn_db);
    write_city_database(&city_db);
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    Exporter::start(
        &dir,
        &[
            "--geoip.database",
            &path(&db),
            "--geoip.database",
            &path(&asn_db),
            "--geoip.database",
            &path(&city_db),
            "--labels=asn,city",
        ],
    )
}

#[test]
fn dashboard_reads_only_what_a_live_exporter_exports() {
    let net = TestNet::create("deploy", &[DE_HOST]);
    let _remote = net.serve(SERVICE_PORT);
    let exporter = start_with_every_family();
    let target = SocketAddr::new(DE_HOST.parse::<IpAddr>().expect("address"), SERVICE_PORT);
    let conn = net.connect_to(target);
    let samples = exporter.wait_for(|s| !nonzero(s, "geoip_connections").is_empty());
    assert!(
        !nonzero(&samples, "geoip_connections").is_empty(),
        "the connection is counted, so the per-country families exist:\n{}",
        exporter.log()
    );
    let text = exporter.scrape();
    let live = exposed_metric_names(&text);
    // The DE host is in Berlin and AS64500: the opt-in families have a
    // series too.
    for family in PER_COUNTRY
        .iter()
        .chain(BY_LABEL)
        .chain(&["geoip_city_location_info"])
    {
        assert!(live.contains(*family), "{family} in {live:?}");
    }
    // Prometheus adds the target's job and instance labels.
    let mut live_labels = exposed_label_names(&text);
    live_labels.extend(["job".to_owned(), "instance".to_owned()]);

    let d = load_json(&dashboard_path());
    let queries = dashboard_queries(&d);
    let mut read = BTreeSet::new();
    for q in &queries {
        let expr = interpolate(&q.expr, ALL).unwrap_or_else(|e| panic!("{e}"));
        let names = metric_names(&expr).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            names.is_subset(&live),
            "panel {:?} query {} reads {:?}, which the exporter does not export",
            q.panel_title,
            q.ref_id,
            names.difference(&live).collect::<Vec<_>>()
        );
        let labels: BTreeSet<String> = grouping_labels(&expr)
            .expect("grouping")
            .into_iter()
            .chain(
                selectors(&expr)
                    .expect("selectors")
                    .into_iter()
                    .flat_map(|s| s.matchers.into_iter().map(|m| m.label)),
            )
            .collect();
        assert!(
            labels.is_subset(&live_labels),
            "panel {:?} query {} uses labels {:?} that no series has",
            q.panel_title,
            q.ref_id,
            labels.difference(&live_labels).collect::<Vec<_>>()
        );
        read.extend(names);
    }
    for (name, query) in variable_queries(&d).expect("variable queries") {
        if let Some(selector) = query.expr {
            let selector = interpolate(&selector, ALL).unwrap_or_else(|e| panic!("{e}"));
            let names = metric_names(&selector).unwrap_or_else(|e| panic!("{e}"));
            assert!(names.is_subset(&live), "variable {name} reads {names:?}");
        }
        let label = query.label.expect("label_values");
        assert!(
            live_labels.contains(&label),
            "variable {name} lists {label}"
        );
    }
    assert!(
        read.contains("geoip_connections") && read.contains("geoip_connections_opened_total"),
        "the dashboard reads the per-country families: {read:?}"
    );
    // The direction variable offers the exporter's direction values.
    let directions: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_once("direction=\"").map(|(_, r)| r))
        .filter_map(|r| r.split('"').next())
        .collect();
    assert!(
        !directions.is_empty() && directions.is_subset(&BTreeSet::from(["inbound", "outbound"])),
        "direction values {directions:?}"
    );
    drop(conn);
}

/// Go's `filepath.Clean` for an absolute path, as Grafana resolves the
/// provider's path.
fn clean(path: &str) -> PathBuf {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = PathBuf::from("/");
    out.extend(parts);
    out
}

/// The `*.json` files Grafana's file provider would load below `dir`.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(json_files(&path));
            } else if path.extension().is_some_and(|e| e == "json") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The value of the first `key:` line of a small YAML file.
fn yaml_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}:"))
        })
        .map(str::trim)
}

#[test]
fn provisioning_points_grafana_at_the_dashboard() {
    let provisioning = deploy_dir().join("grafana/provisioning");
    let sources = fs::read_to_string(provisioning.join("datasources/prometheus.yml"))
        .expect("datasource provisioning");
    assert_eq!(yaml_value(&sources, "apiVersion"), Some("1"));
    assert_eq!(yaml_value(&sources, "type"), Some("prometheus"));
    assert_eq!(
        yaml_value(&sources, "isDefault"),
        Some("true"),
        "the dashboard's data source variable starts on the default Prometheus"
    );
    assert!(
        yaml_value(&sources, "url").is_some_and(|u| u.starts_with("http")),
        "{sources}"
    );

    let providers = fs::read_to_string(provisioning.join("dashboards/geoip-exporter.yml"))
        .expect("dashboard provisioning");
    assert_eq!(yaml_value(&providers, "apiVersion"), Some("1"));
    assert_eq!(yaml_value(&providers, "type"), Some("file"));
    let path = yaml_value(&providers, "path").expect("provider path");
    let resolve = |provisioning_dir: &str| {
        let expanded = interpolate(path, &[("GF_PATHS_PROVISIONING", provisioning_dir)])
            .unwrap_or_else(|e| panic!("{e}"));
        clean(&expanded)
    };

    // grafana-server with GF_PATHS_PROVISIONING=deploy/grafana/provisioning
    // loads the dashboard, and nothing else.
    let real = fs::canonicalize(&provisioning).expect("provisioning folder");
    let folder = resolve(real.to_str().expect("utf-8"));
    assert_eq!(
        folder,
        fs::canonicalize(deploy_dir().join("grafana")).expect("deploy/grafana")
    );
    assert_eq!(
        json_files(&folder),
        [folder.join("geoip-exporter.json")],
        "the JSON files Grafana would load from {}",
        folder.display()
    );
    // The container image's default, with the dashboard mounted beside
    // its provisioning folder.
    assert_eq!(
        resolve("/etc/grafana/provisioning"),
        Path::new("/etc/grafana")
    );
    // Never the whole file system when the variable is unset.
    let unset = resolve("");
    assert_ne!(unset, Path::new("/"), "an unset variable must not mean /");
    assert!(json_files(&unset).is_empty(), "{}", unset.display());
}
