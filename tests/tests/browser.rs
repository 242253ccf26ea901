//! The live map at `/`, in a real browser: Debian's headless Chromium,
//! driven over `WebDriver`, loads the page from the real exporter while the
//! machine has real connections to and from test hosts, and reads what the
//! page shows. Screenshots (desktop and phone width, light and dark) go to
//! the test's folder; the light desktop ones also to `docs/` when
//! `GEOIP_UPDATE_SCREENSHOT` is set.

use std::{collections::BTreeMap, net::TcpStream, path::Path, time::Duration};

use bcrypt as _;
use geoip_tests::{
    exporter::{Exporter, temp_dir},
    fixtures::{BR_V4, BR_V6, DE_V4, DE_V6, JP_V4},
    mmdb::{Value, Writer},
    netns::{HOST_V4, HOST_V6, TestNet, host_listener, sock},
    webdriver::Browser,
};
use geoip_user as _;
use maxminddb as _;
use serde as _;
use serde_json::{Value as Json, json};

const SERVICE_PORT: u16 = 8443;
const US_V6: &str = "2001:db8:1::10";
const GB_V6: &str = "2001:db8:2::10";
const IN_V6: &str = "2001:db8:3::10";
const AU_V6: &str = "2001:db8:4::10";
/// Singapore has no shape at 1:110m: the map shows it as a dot.
const SG_V6: &str = "2001:db8:5::10";
const ZA_V6: &str = "2001:db8:6::10";
/// Mapped to no country: `unknown`, beside the map.
const NOWHERE_V6: &str = "2001:db8:7::10";

/// The test database: the fixtures' DE, JP and BR ranges, and a few more
/// countries so the map shows a real spread (DB-IP's layout and type name,
/// so the page carries the attribution).
fn write_database(path: &Path) {
    let mut w = Writer::new("DBIP-Country-Lite", 6).build_epoch(1_750_000_000);
    for (net, code) in [
        ("192.0.2.0/25", "DE"),
        ("198.51.100.0/24", "JP"),
        ("2001:db8:b::/48", "BR"),
        ("2001:db8:1::/48", "US"),
        ("2001:db8:2::/48", "GB"),
        ("2001:db8:3::/48", "IN"),
        ("2001:db8:4::/48", "AU"),
        ("2001:db8:5::/48", "SG"),
        ("2001:db8:6::/48", "ZA"),
    ] {
        let record = Value::map([("country", Value::map([("iso_code", Value::str(code))]))]);
        w.insert(net, record)
            .unwrap_or_else(|e| panic!("{net}: {e}"));
    }
    w.write(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What the page shows, read from its DOM: coloured shapes with their
/// counts, table rows, totals, and its status.
const READ_PAGE: &str = r"
const map = {};
for (const el of document.querySelectorAll('#map [data-count]')) map[el.dataset.cc] = Number(el.dataset.count);
const rows = {};
for (const tr of document.querySelectorAll('#rows tr[data-cc]')) {
  const r = { name: tr.children[1].textContent, order: Object.keys(rows).length };
  for (const td of tr.querySelectorAll('td[data-k]')) {
    r[td.dataset.k] = Number(td.dataset.v);
    if (td.textContent.replace(/\D/g, '') !== td.dataset.v) r.mismatch = td.textContent;
  }
  rows[tr.dataset.cc] = r;
}
const num = (id) => Number(document.getElementById(id).textContent.replace(/\D/g, ''));
return {
  map, rows,
  total: { both: num('t-both'), inbound: num('t-inbound'), outbound: num('t-outbound'), countries: num('t-countries') },
  ticks: [...document.querySelectorAll('#ticks span')].map((s) => s.textContent),
  unknown: num('unknown'),
  mode: document.body.dataset.mode,
  hash: location.hash,
  state: document.body.dataset.state,
  updated: Number(document.body.dataset.updated || 0),
  marker: window.__testMarker || null,
};";

/// Copy a screenshot to `docs/NAME` for the README, on request only
/// (`GEOIP_UPDATE_SCREENSHOT`), so a test run leaves the work tree as it
/// found it.
fn publish(screenshot: &Path, name: &str) {
    if std::env::var_os("GEOIP_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::copy(screenshot, docs.join(name)).expect("copy to docs/");
    }
}

/// Let the page's colour transitions (0.5 s) finish before a screenshot.
fn settle() {
    std::thread::sleep(Duration::from_millis(700));
}

fn read(browser: &Browser) -> Json {
    browser.execute(READ_PAGE, &[])
}

fn counts(pairs: &[(&str, u64)]) -> Json {
    pairs
        .iter()
        .map(|(cc, n)| ((*cc).to_owned(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Read the page until its map shows `want`, at most 10 s.
fn wait_map(browser: &Browser, want: &Json) -> Json {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = read(browser);
        if page["map"] == *want || std::time::Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exporter's own answer, until it counts `want` (country ->
/// connections, both directions), at most 10 s.
fn wait_api(exporter: &Exporter, want: &BTreeMap<&str, u64>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = exporter.get("/api/v1/countries").expect("api");
        let v: Json = serde_json::from_str(&body).expect("api json");
        let got: BTreeMap<String, u64> = v["countries"]
            .as_array()
            .expect("countries")
            .iter()
            .filter(|c| c["country"] != "unknown")
            .map(|c| {
                let n = c["inbound"]["connections"].as_u64().unwrap_or(0)
                    + c["outbound"]["connections"].as_u64().unwrap_or(0);
                (c["country"].as_str().unwrap_or("").to_owned(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let want: BTreeMap<String, u64> = want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter counts {got:?}, expected {want:?}:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn map_page_shows_live_connections_by_country() {
    let dir = temp_dir("browser");
    let db = dir.join("dbip-test.mmdb");
    write_database(&db);
    let net = TestNet::create(
        "map",
        &[
            DE_V4, JP_V4, BR_V6, US_V6, GB_V6, IN_V6, AU_V6, SG_V6, ZA_V6, NOWHERE_V6,
        ],
    );
    let _remote = net.serve(SERVICE_PORT);
    let (local, host_port) = host_listener();

    // Outbound: DE 3, JP 2, BR 1 (IPv6), US 12, GB 5, IN 2, SG 4, ZA 1,
    // unknown 1. Inbound: JP 1, AU 1.
    let mut de: Vec<TcpStream> = (0..3)
        .map(|_| net.connect_to(sock(DE_V4, SERVICE_PORT)))
        .collect();
    let mut held = Vec::new();
    for (addr, n) in [
        (JP_V4, 2),
        (BR_V6, 1),
        (US_V6, 12),
        (GB_V6, 5),
        (IN_V6, 2),
        (SG_V6, 4),
        (ZA_V6, 1),
        (NOWHERE_V6, 1),
    ] {
        for _ in 0..n {
            held.push(net.connect_to(sock(addr, SERVICE_PORT)));
        }
    }
    for (source, host) in [(JP_V4, HOST_V4), (AU_V6, HOST_V6)] {
        let client = net.connect_from(source, sock(host, host_port));
        held.push(local.take(client.local_addr().expect("client address")));
        held.push(client);
    }

    let exporter = Exporter::start(
        &dir,
        &["--geoip.database", db.to_str().expect("utf-8 path")],
    );
    let both = [
        ("AU", 1),
        ("BR", 1),
        ("DE", 3),
        ("GB", 5),
        ("IN", 2),
        ("JP", 3),
        ("SG", 4),
        ("US", 12),
        ("ZA", 1),
    ];
    wait_api(&exporter, &both.into_iter().collect());

    let browser = Browser::start(&dir);
    browser.viewport(1280, 800, false);
    browser.dark(false);
    browser.navigate(&format!("http://{}/", exporter.addr));
    let updated = browser.wait_for(
        Duration::from_secs(10),
        "return document.body.dataset.updated || null",
    );
    assert!(
        updated.is_string(),
        "the page never updated from /api/v1/countries; chromedriver log:\n{}",
        browser.log()
    );

    // Both directions: exactly these countries coloured, with these counts.
    let page = wait_map(&browser, &counts(&both));
    assert_eq!(page["map"], counts(&both), "coloured countries: {page:#}");
    assert_eq!(page["mode"], "both");
    assert_eq!(page["state"], "live");
    let rows = &page["rows"];
    for (cc, n) in both {
        let row = &rows[cc];
        assert_eq!(row["total"], n, "{cc} total in the table: {row}");
        assert_eq!(
            row["in"].as_u64().unwrap_or(0) + row["out"].as_u64().unwrap_or(0),
            n
        );
        assert!(
            row["opened"].as_u64().unwrap_or(0) >= n,
            "{cc} opened: {row}"
        );
        assert_eq!(
            row["mismatch"],
            Json::Null,
            "{cc}: shown text differs from the number: {row}"
        );
    }
    assert_eq!(rows["DE"]["name"], "Germany");
    assert_eq!(rows["SG"]["name"], "Singapore");
    assert_eq!(rows["JP"]["in"], 1);
    assert_eq!(rows["JP"]["out"], 2);
    assert_eq!(rows["US"]["order"], 0, "most connections first: {rows:#}");
    assert_eq!(rows["GB"]["order"], 1);
    assert!(
        page["unknown"].as_u64().unwrap_or(0) >= 1,
        "unknown beside the map: {page:#}"
    );
    assert_eq!(page["total"]["countries"], 9);
    let table_sum: u64 = rows
        .as_object()
        .expect("rows")
        .values()
        .map(|r| r["total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(page["total"]["both"], table_sum, "totals match the table");
    assert_eq!(
        page["ticks"].as_array().and_then(|t| t.last()),
        Some(&json!("12")),
        "the legend's scale ends at the largest count: {page:#}"
    );
    let footer = browser.execute("return document.querySelector('footer').innerText", &[]);
    for needle in [
        "IP Geolocation by DB-IP",
        "DBIP-Country-Lite",
        "Metrics",
        "Health",
    ] {
        assert!(
            footer.as_str().unwrap_or("").contains(needle),
            "{needle} in the footer: {footer}"
        );
    }
    // Both the map and the start of the table fit a 1280x800 screen.
    let layout = browser.execute(
        "const m = document.getElementById('map').getBoundingClientRect();
         const t = document.querySelector('#rows tr').getBoundingClientRect();
         const w = document.querySelector('.tablewrap');
         return { mapBottom: m.bottom, mapWidth: m.width, rowTop: t.top, width: document.documentElement.scrollWidth,
                  tableOverflow: w.scrollWidth - w.clientWidth };",
        &[],
    );
    assert!(
        layout["mapBottom"].as_f64().unwrap_or(1e9) < 800.0,
        "{layout}"
    );
    assert!(
        layout["mapWidth"].as_f64().unwrap_or(0.0) > 640.0,
        "{layout}"
    );
    assert!(layout["rowTop"].as_f64().unwrap_or(1e9) < 800.0, "{layout}");
    assert!(
        layout["width"].as_f64().unwrap_or(1e9) <= 1280.0,
        "no sideways scrolling: {layout}"
    );
    assert!(
        layout["tableOverflow"].as_f64().unwrap_or(1e9) <= 0.0,
        "every column of the table fits: {layout}"
    );

    // Screenshots, light and dark, with the tooltip over Germany.
    browser.hover("#map path[data-cc='DE']");
    let tip = browser.execute("return document.getElementById('tip').innerText", &[]);
    assert!(
        tip.as_str().unwrap_or("").contains("Germany"),
        "tooltip: {tip}"
    );
    let desktop_light = dir.join("map-desktop-light.png");
    browser.screenshot(&desktop_light);
    browser.dark(true);
    settle();
    let background = browser.execute(
        "return getComputedStyle(document.body).backgroundColor",
        &[],
    );
    assert_ne!(
        background,
        json!("rgb(243, 245, 248)"),
        "dark theme follows the browser"
    );
    browser.screenshot(&dir.join("map-desktop-dark.png"));
    browser.dark(false);
    browser.hover("header h1");

    // One direction at a time; the choice goes into the URL.
    browser.click(".seg button[data-mode='outbound']");
    let outbound = counts(&[
        ("BR", 1),
        ("DE", 3),
        ("GB", 5),
        ("IN", 2),
        ("JP", 2),
        ("SG", 4),
        ("US", 12),
        ("ZA", 1),
    ]);
    let page = wait_map(&browser, &outbound);
    assert_eq!(page["map"], outbound, "outbound: {page:#}");
    assert_eq!(page["hash"], "#outbound");
    assert_eq!(page["total"]["countries"], 8);
    browser.click(".seg button[data-mode='inbound']");
    let inbound = counts(&[("AU", 1), ("JP", 1)]);
    let page = wait_map(&browser, &inbound);
    assert_eq!(page["map"], inbound, "inbound: {page:#}");
    assert_eq!(page["hash"], "#inbound");
    assert_eq!(
        page["rows"]["JP"]["order"], 0,
        "sorted by inbound: {page:#}"
    );
    browser.click(".seg button[data-mode='both']");
    let page = wait_map(&browser, &counts(&both));
    assert_eq!(page["map"], counts(&both));

    // A link with filters this exporter cannot apply (no --labels): the
    // page drops them and shows everything rather than failing each poll.
    browser.navigate(&format!(
        "http://{}/#outbound&service=443&country=DE",
        exporter.addr
    ));
    let dropped = browser.wait_for(
        Duration::from_secs(10),
        "return location.hash === '#outbound' || null",
    );
    assert_eq!(dropped, json!(true), "filters dropped from the URL");
    let page = wait_map(&browser, &outbound);
    assert_eq!(page["map"], outbound, "filters dropped: {page:#}");
    assert_eq!(page["state"], "live", "{page:#}");
    browser.click(".seg button[data-mode='both']");
    let page = wait_map(&browser, &counts(&both));
    assert_eq!(page["map"], counts(&both));

    // Sorting: by name, ascending.
    browser.click("th[data-key='name'] button");
    let page = read(&browser);
    assert_eq!(
        page["rows"]["AU"]["order"], 0,
        "Australia first by name: {page:#}"
    );
    browser.click("th[data-key='total'] button");
    assert_eq!(read(&browser)["rows"]["US"]["order"], 0);

    // A connection closes: the page follows without a reload.
    browser.execute("window.__testMarker = 'same page'", &[]);
    let before = read(&browser)["updated"].as_u64().unwrap_or(0);
    drop(de.pop());
    let after_close = counts(&[
        ("AU", 1),
        ("BR", 1),
        ("DE", 2),
        ("GB", 5),
        ("IN", 2),
        ("JP", 3),
        ("SG", 4),
        ("US", 12),
        ("ZA", 1),
    ]);
    let page = wait_map(&browser, &after_close);
    assert_eq!(page["map"], after_close, "DE drops to 2 live: {page:#}");
    assert_eq!(page["rows"]["DE"]["total"], 2);
    assert_eq!(page["rows"]["DE"]["closed"], 1);
    assert_eq!(
        page["marker"], "same page",
        "updated in place, not reloaded"
    );
    assert!(page["updated"].as_u64().unwrap_or(0) > before);

    // Phone width: map above the table, nothing wider than the screen but
    // the table, which scrolls in its card.
    browser.viewport(390, 844, true);
    settle();
    let phone = browser.execute(
        "const m = document.getElementById('map').getBoundingClientRect();
         const t = document.getElementById('table').getBoundingClientRect();
         return { mapBottom: m.bottom, tableTop: t.top, mapWidth: m.width,
                  width: document.documentElement.scrollWidth };",
        &[],
    );
    assert!(
        phone["mapBottom"].as_f64().unwrap_or(1e9) <= phone["tableTop"].as_f64().unwrap_or(0.0),
        "map above the table: {phone}"
    );
    assert!(
        phone["width"].as_f64().unwrap_or(1e9) <= 390.0,
        "no page-wide sideways scrolling: {phone}"
    );
    assert!(phone["mapWidth"].as_f64().unwrap_or(0.0) > 340.0, "{phone}");
    browser.screenshot(&dir.join("map-phone-light.png"));
    browser.dark(true);
    settle();
    browser.screenshot(&dir.join("map-phone-dark.png"));
    let full = browser.execute("return document.documentElement.scrollHeight", &[]);
    browser.viewport(
        390,
        u32::try_from(full.as_u64().unwrap_or(844)).unwrap_or(844),
        true,
    );
    settle();
    browser.screenshot(&dir.join("map-phone-dark-full.png"));
    browser.dark(false);
    browser.viewport(1280, 800, false);

    // The exporter goes away: the page says so and keeps the last numbers.
    let status = exporter.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let state = browser.wait_for(
        Duration::from_secs(10),
        "return document.body.dataset.state === 'offline' || null",
    );
    assert_eq!(
        state,
        json!(true),
        "offline badge after the exporter stopped"
    );
    assert_eq!(read(&browser)["map"], after_close, "last numbers kept");

    publish(&desktop_light, "map.png");
    println!("screenshots in {}", dir.display());
    drop((de, held, local));
}

/// What the page's view controls and networks card show.
const READ_OPTIONS: &str = r"
const asns = [...document.querySelectorAll('#asn-rows tr[data-asn]')].map((tr) => ({
  asn: tr.dataset.asn,
  label: tr.children[0].textContent,
  org: tr.children[1].textContent,
  in: Number(tr.querySelector('[data-k=in]').dataset.v),
  out: Number(tr.querySelector('[data-k=out]').dataset.v),
}));
const sel = document.getElementById('service');
const bytesBtn = document.querySelector('#colour button[data-colour=bytes]');
const w = document.querySelector('.tablewrap');
return {
  asns,
  asnTitle: document.getElementById('asn-title').textContent,
  asnEmpty: !document.getElementById('asn-empty').hidden,
  asnCard: !document.getElementById('asncard').hidden,
  services: [...sel.options].map((o) => o.value),
  serviceShown: !document.getElementById('service-control').hidden,
  service: document.body.dataset.service,
  colour: document.body.dataset.colour,
  country: document.body.dataset.country,
  bytesDisabled: bytesBtn.disabled,
  scale: document.getElementById('scale-title').textContent,
  heads: [...document.querySelectorAll('#table th[data-key]')].map((th) => th.dataset.key),
  selectedRow: [...document.querySelectorAll('#rows tr.sel')].map((tr) => tr.dataset.cc),
  width: document.documentElement.scrollWidth,
  tableOverflow: w.scrollWidth - w.clientWidth,
};";

fn read_options(browser: &Browser) -> Json {
    browser.execute(READ_OPTIONS, &[])
}

/// Read the page until `ok` holds of what it shows, at most 10 s.
fn wait_options(browser: &Browser, what: &str, ok: impl Fn(&Json) -> bool) -> Json {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = read_options(browser);
        if ok(&page) {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the page shows {page:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn asn_row(asn: &str, org: &str, inbound: u64, outbound: u64) -> Json {
    let label = match asn {
        "unknown" => "—".to_owned(),
        "other" => "Other".to_owned(),
        n => format!("AS{n}"),
    };
    json!({ "asn": asn, "label": label, "org": org, "in": inbound, "out": outbound })
}

fn choose_service(browser: &Browser, service: &str) {
    browser.execute(
        "const s = document.getElementById('service');
         s.value = arguments[0];
         s.dispatchEvent(new Event('change'));",
        &[json!(service)],
    );
}

/// With `--labels service,asn` and `--metrics.bytes` the page offers a
/// service filter, colouring by bytes, and each country's networks: all
/// checked against exactly known connections and payloads, in the
/// browser.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn map_page_filters_by_service_colours_by_bytes_and_lists_networks() {
    use std::io::{Read as _, Write as _};

    const OUT_THREAD: &str = "geoip-map-out";
    let dir = temp_dir("browser-options");
    let (country_db, asn_db) = (dir.join("country.mmdb"), dir.join("asn.mmdb"));
    geoip_tests::fixtures::write_database(&country_db);
    geoip_tests::fixtures::write_asn_labels_database(&asn_db);
    let net = TestNet::create("mapopt", &[DE_V4, DE_V6, JP_V4, BR_V4]);
    let remote = net.serve(SERVICE_PORT);
    let (first, first_port) = host_listener();
    let (second, second_port) = host_listener();
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let exporter = Exporter::start(
        &dir,
        &[
            "--geoip.database",
            &path(&country_db),
            "--geoip.database",
            &path(&asn_db),
            "--labels=service,asn",
            "--metrics.bytes",
        ],
    );

    // Outbound, made by a thread the kernel names: DE 3 (AS64500), JP 1
    // (AS64501), BR 1 (no AS); and one to DE that carries 1,000 bytes
    // out and 300 back, then closes.
    let (mut held, mut payload) = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(OUT_THREAD.into())
            .spawn_scoped(s, || {
                let held: Vec<TcpStream> = [DE_V4, DE_V4, DE_V6, JP_V4, BR_V4]
                    .iter()
                    .map(|h| net.connect_to(sock(h, SERVICE_PORT)))
                    .collect();
                (held, net.connect_to(sock(DE_V4, SERVICE_PORT)))
            })
            .expect("thread")
            .join()
            .expect("connected")
    });
    let mut payload_srv = remote.take(payload.local_addr().expect("address"));
    payload.write_all(&[b'a'; 1000]).expect("write");
    let mut buf = vec![0u8; 1000];
    payload_srv.read_exact(&mut buf).expect("read");
    payload_srv.write_all(&[b'b'; 300]).expect("write");
    payload.read_exact(&mut buf[..300]).expect("read");
    payload
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    while payload_srv.read(&mut buf).is_ok_and(|n| n > 0) {}
    drop(payload_srv);
    while payload.read(&mut buf).is_ok_and(|n| n > 0) {}
    drop(payload);
    // Inbound: JP 2 to the first port, DE 1 to the second.
    for (source, port, server) in [
        (JP_V4, first_port, &first),
        (JP_V4, first_port, &first),
        (DE_V4, second_port, &second),
    ] {
        let client = net.connect_from(source, sock(HOST_V4, port));
        held.push(server.take(client.local_addr().expect("client address")));
        held.push(client);
    }
    wait_api(
        &exporter,
        &[("BR", 1), ("DE", 4), ("JP", 3)].into_iter().collect(),
    );
    // The closed connection's last bytes.
    let _ = exporter.wait_for(|s| {
        s.get("geoip_sent_bytes_total{country=\"DE\",direction=\"outbound\"}")
            .copied()
            >= Some(1000.0)
    });

    let browser = Browser::start(&dir);
    browser.viewport(1280, 800, false);
    browser.dark(false);
    browser.navigate(&format!("http://{}/", exporter.addr));
    let both = counts(&[("BR", 1), ("DE", 4), ("JP", 3)]);
    let page = wait_map(&browser, &both);
    assert_eq!(page["map"], both, "{page:#}");

    // Every service, busiest first; the networks of all countries.
    let (first_label, second_label) = (first_port.to_string(), second_port.to_string());
    let all_nets = [
        asn_row("64500", "Deutsche Example", 1, 3),
        asn_row("64501", "Japan Example", 2, 1),
        asn_row("unknown", "Not in the ASN database", 0, 1),
    ];
    let opts = wait_options(&browser, "networks of all countries", |p| {
        p["asns"] == json!(all_nets)
    });
    assert_eq!(
        opts["services"],
        json!(["", OUT_THREAD, first_label, second_label]),
        "{opts:#}"
    );
    assert_eq!(opts["asnTitle"], "Networks · All countries");
    assert_eq!(opts["colour"], "connections");
    assert_eq!(opts["bytesDisabled"], false);

    // One service: its countries only; bytes (counted by country, not by
    // service) cannot colour it.
    choose_service(&browser, &first_label);
    let page = wait_map(&browser, &counts(&[("JP", 2)]));
    assert_eq!(
        page["map"],
        counts(&[("JP", 2)]),
        "port {first_port}: {page:#}"
    );
    assert_eq!(page["rows"]["JP"]["in"], 2);
    let opts = wait_options(&browser, "networks of one port", |p| {
        p["asns"] == json!([asn_row("64501", "Japan Example", 2, 0)])
    });
    assert_eq!(opts["service"], first_label);
    assert_eq!(opts["bytesDisabled"], true);
    assert!(
        read(&browser)["hash"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("service={first_port}")),
        "the service goes into the URL"
    );
    choose_service(&browser, OUT_THREAD);
    let outbound = counts(&[("BR", 1), ("DE", 3), ("JP", 1)]);
    let page = wait_map(&browser, &outbound);
    assert_eq!(page["map"], outbound, "{OUT_THREAD}: {page:#}");
    choose_service(&browser, "");
    let page = wait_map(&browser, &both);
    assert_eq!(page["map"], both);

    // Colour by bytes: only DE carried any, 1,300 both ways; the table
    // shows received and sent.
    browser.click("#colour button[data-colour='bytes']");
    let bytes = counts(&[("DE", 1300)]);
    let page = wait_map(&browser, &bytes);
    assert_eq!(page["map"], bytes, "by bytes: {page:#}");
    assert_eq!(page["rows"]["DE"]["rx"], 300, "{page:#}");
    assert_eq!(page["rows"]["DE"]["tx"], 1000);
    assert_eq!(page["rows"]["DE"]["order"], 0);
    let opts = read_options(&browser);
    assert_eq!(opts["colour"], "bytes");
    assert_eq!(
        opts["heads"],
        json!(["cc", "name", "in", "out", "total", "rx", "tx"])
    );
    assert_eq!(opts["scale"], "Bytes since start (received + sent)");
    assert!(
        opts["tableOverflow"].as_f64().unwrap_or(1e9) <= 0.0,
        "{opts:#}"
    );
    assert!(opts["width"].as_f64().unwrap_or(1e9) <= 1280.0, "{opts:#}");
    let ticks = read(&browser)["ticks"].clone();
    assert_eq!(
        ticks.as_array().and_then(|t| t.last()),
        Some(&json!("1.30 kB")),
        "{ticks}"
    );
    browser.click(".seg button[data-mode='inbound']");
    let page = wait_map(&browser, &counts(&[]));
    assert_eq!(page["map"], counts(&[]), "no inbound bytes: {page:#}");
    browser.click(".seg button[data-mode='both']");
    browser.click("#colour button[data-colour='connections']");
    let page = wait_map(&browser, &both);
    assert_eq!(page["map"], both);

    // A country clicked: its networks; clicked again: all countries.
    browser.click("#rows tr[data-cc='DE']");
    let opts = wait_options(&browser, "networks of DE", |p| {
        p["asns"] == json!([asn_row("64500", "Deutsche Example", 1, 3)])
    });
    assert_eq!(opts["asnTitle"], "Networks · Germany");
    assert_eq!(opts["country"], "DE");
    assert_eq!(opts["selectedRow"], json!(["DE"]));
    let light = dir.join("map-options-light.png");
    browser.screenshot(&light);
    publish(&light, "map-options.png");
    browser.execute(
        "document.querySelector(\"#map [data-cc='JP']\").dispatchEvent(new MouseEvent('click', { bubbles: true }))",
        &[],
    );
    let opts = wait_options(&browser, "networks of JP, clicked on the map", |p| {
        p["asns"] == json!([asn_row("64501", "Japan Example", 2, 1)])
    });
    assert_eq!(opts["country"], "JP");
    browser.click("#asn-all");
    let _ = wait_options(&browser, "all countries again", |p| {
        p["asns"] == json!(all_nets)
    });

    // The whole view comes back from the URL.
    browser.navigate(&format!(
        "http://{}/#outbound&service={OUT_THREAD}&country=DE",
        exporter.addr
    ));
    let opts = wait_options(&browser, "the view from the URL", |p| {
        p["asns"] == json!([asn_row("64500", "Deutsche Example", 0, 3)])
    });
    assert_eq!(opts["service"], OUT_THREAD);
    assert_eq!(opts["country"], "DE");
    let page = wait_map(&browser, &outbound);
    assert_eq!(page["map"], outbound);
    assert_eq!(page["mode"], "outbound");
    // A service with no connections now, in the URL: an empty page that
    // says so, not an error.
    browser.navigate(&format!(
        "http://{}/#service=sshd&country=DE",
        exporter.addr
    ));
    let opts = wait_options(&browser, "a service with no connections", |p| {
        p["asnEmpty"] == true
    });
    assert_eq!(read(&browser)["state"], "live");
    assert!(
        opts["services"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("sshd"))),
        "{opts:#}"
    );
    browser.dark(true);
    browser.navigate(&format!("http://{}/#country=DE", exporter.addr));
    let _ = wait_options(&browser, "dark", |p| {
        p["asns"] == json!([asn_row("64500", "Deutsche Example", 1, 3)])
    });
    settle();
    browser.screenshot(&dir.join("map-options-dark.png"));
    // Phone width: the networks card between the map and the table.
    browser.viewport(390, 844, true);
    settle();
    let phone = browser.execute(
        "const m = document.getElementById('map').getBoundingClientRect();
         const a = document.getElementById('asncard').getBoundingClientRect();
         const t = document.getElementById('table').getBoundingClientRect();
         return { mapBottom: m.bottom, asnTop: a.top, asnBottom: a.bottom, tableTop: t.top,
                  width: document.documentElement.scrollWidth };",
        &[],
    );
    let at = |k: &str| phone[k].as_f64().unwrap_or(f64::NAN);
    assert!(
        at("mapBottom") <= at("asnTop") && at("asnBottom") <= at("tableTop"),
        "map, then networks, then the table: {phone}"
    );
    assert!(phone["width"].as_f64().unwrap_or(1e9) <= 390.0, "{phone}");
    browser.screenshot(&dir.join("map-options-phone-dark.png"));
    println!("screenshots in {}", dir.display());
    assert_eq!(exporter.stop(libc::SIGTERM).code(), Some(0));
    drop((held, first, second, remote));
}
