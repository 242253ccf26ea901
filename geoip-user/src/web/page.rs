//! The live map at `/`: one self-contained page (`assets/map.html`, inline
//! CSS and JavaScript, no request anywhere but this exporter) and the
//! country shapes it draws (`OUT_DIR/world.json`, made by
//! `build/worldmap.rs` from Natural Earth via world-atlas; see
//! `assets/world/LICENSES.md`). The page polls `/api/v1/countries` (and,
//! with `--labels asn`, `/api/v1/asns`).

use crate::geo::DatabaseInfo;

/// The page as shipped, with `__PLACEHOLDERS__` that [`render`] fills.
pub(crate) const MAP_HTML: &str = include_str!("../../assets/map.html");

/// `{"viewBox": "...", "countries": {"DE": "M...z", ...}, "points": {"SG": [x, y], ...}}`.
pub(crate) const WORLD_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/world.json"));

/// The page for this exporter: the links to its metrics and health, the
/// database in use, and DB-IP's attribution where its data is shown.
pub(crate) fn render(telemetry_path: &str, db: &DatabaseInfo) -> String {
    let db_path = db.path.display().to_string();
    // DB-IP's licence (CC BY 4.0) asks for a link wherever its data is shown.
    let attribution = if db.database_type.to_ascii_lowercase().contains("dbip")
        || db_path.to_ascii_lowercase().contains("dbip")
    {
        "<a href=\"https://db-ip.com\">IP Geolocation by DB-IP</a>"
    } else {
        ""
    };
    MAP_HTML
        .replace("__TELEMETRY_PATH__", &escape(telemetry_path))
        .replace("__DATABASE_TYPE__", &escape(&db.database_type))
        .replace("__DATABASE_PATH__", &escape(&db_path))
        .replace("__ATTRIBUTION__", attribution)
        .replace("__VERSION__", env!("CARGO_PKG_VERSION"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The pure part of the build step, compiled here for its unit tests.
#[cfg(test)]
#[path = "../../build/topojson.rs"]
mod topojson;

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn db(path: &str, kind: &str) -> DatabaseInfo {
        DatabaseInfo {
            path: path.into(),
            database_type: kind.into(),
            build_epoch: 0,
            ip_version: 6,
        }
    }

    #[test]
    fn world_json_has_the_countries_and_stays_small() {
        let world: Value = serde_json::from_str(WORLD_JSON).unwrap();
        assert!(
            WORLD_JSON.len() < 150_000,
            "world.json is {} bytes",
            WORLD_JSON.len()
        );
        let view: Vec<f64> = world["viewBox"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(view[..3], [0.0, 0.0, 1000.0]);
        assert!((400.0..520.0).contains(&view[3]), "height {}", view[3]);
        let countries = world["countries"].as_object().unwrap();
        for cc in ["DE", "JP", "BR", "US", "AU", "RU", "FJ", "XK", "ZA"] {
            let d = countries[cc].as_str().unwrap_or_default();
            assert!(d.starts_with('M') && d.ends_with('z'), "{cc}: {d:.40}");
        }
        assert!(!countries.contains_key("AQ"), "Antarctica is left out");
        assert!(countries.contains_key("_Somaliland"), "no holes in the map");
        assert!(
            (170..185).contains(&countries.len()),
            "{} shapes",
            countries.len()
        );
        let points = world["points"].as_object().unwrap();
        for cc in ["SG", "HK", "MT", "BH", "LU"] {
            assert!(
                points.contains_key(cc) || countries.contains_key(cc),
                "{cc} is on the map"
            );
        }
        assert!(!points.keys().any(|k| countries.contains_key(k)));
        // Every coordinate inside the view box: Germany near the middle top,
        // Japan right, Brazil left and south of the equator.
        let first = |cc: &str| -> (f64, f64) {
            let d = countries[cc].as_str().unwrap();
            let mut it = d[1..]
                .split(|c: char| !c.is_ascii_digit())
                .map(|n| n.parse::<f64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        };
        let (de, jp, br) = (first("DE"), first("JP"), first("BR"));
        assert!((480.0..560.0).contains(&de.0) && de.1 < 150.0, "DE {de:?}");
        assert!(jp.0 > 800.0 && (100.0..250.0).contains(&jp.1), "JP {jp:?}");
        assert!(br.0 < 400.0 && br.1 > 220.0, "BR {br:?}");
    }

    #[test]
    fn page_is_self_contained() {
        for needle in ["http://", "https://", "//cdn", "<link", "@import", "src="] {
            assert!(!MAP_HTML.contains(needle), "{needle} in map.html");
        }
        // Relative, so the page works behind a reverse proxy's path prefix.
        assert!(MAP_HTML.contains("getJson(`api/v1/countries${q}`"));
        assert!(MAP_HTML.contains("getJson(`api/v1/asns"));
        assert!(MAP_HTML.contains("fetch('assets/world.json')"));
        assert!(!MAP_HTML.contains("'/api") && !MAP_HTML.contains("`/api"));
    }

    #[test]
    fn render_fills_links_escapes_and_attributes_db_ip() {
        let page = render("/m\"x", &db("/data/dbip-country.mmdb", "DBIP-Country <b>"));
        assert!(page.contains("<a href=\"/m&quot;x\">"), "telemetry link");
        assert!(page.contains("href=\"/healthz\""));
        assert!(page.contains("DBIP-Country &lt;b&gt;"));
        assert!(page.contains("/data/dbip-country.mmdb"));
        assert!(page.contains("<a href=\"https://db-ip.com\">IP Geolocation by DB-IP</a>"));
        assert!(!page.contains("__"), "every placeholder filled");

        let by_path = render("/metrics", &db("/x/dbip.mmdb", "GeoLite2-Country"));
        assert!(by_path.contains("IP Geolocation by DB-IP"));
        let other = render(
            "/metrics",
            &db("/x/GeoLite2-Country.mmdb", "GeoLite2-Country"),
        );
        assert!(!other.contains("db-ip.com"));
        assert!(other.contains("<a href=\"/metrics\">"));
    }

    /// Delta-encoded quantized arcs, a reversed arc (`~1`), a hole, and a
    /// `MultiPolygon`; a null geometry is skipped.
    #[test]
    fn topojson_decodes_arcs_polygons_and_reversals() {
        let topo = json!({
            "type": "Topology",
            "transform": {"scale": [0.5, 2.0], "translate": [10.0, -10.0]},
            "arcs": [
                [[0, 0], [4, 0], [0, 2]],
                [[0, 0], [0, 2], [4, 0]],
                [[1, 1], [1, 0], [0, 1], [-1, 0]]
            ],
            "objects": {"c": {"type": "GeometryCollection", "geometries": [
                {"type": "Polygon", "id": "276", "properties": {"name": "A"},
                 "arcs": [[0, -2], [2]]},
                {"type": "MultiPolygon", "properties": {"name": "B"},
                 "arcs": [[[0, -2]], [[2]]]},
                {"type": null, "id": "000"}
            ]}}
        });
        let f = topojson::decode(&topo, "c").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].id.as_deref(), Some("276"));
        assert_eq!(f[0].name, "A");
        assert_eq!(f[1].id, None);
        // Arc 0: (0,0) (4,0) (4,2); arc 1 reversed: (4,2) (0,2) (0,0);
        // the shared point once; then scale and translate.
        let outer = [[0, 0], [4, 0], [4, 2], [0, 2], [0, 0]]
            .map(|[x, y]| [f64::from(x) * 0.5 + 10.0, f64::from(y) * 2.0 - 10.0]);
        assert_eq!(
            f[0].polygons,
            vec![vec![
                outer.to_vec(),
                vec![[10.5, -8.0], [11.0, -8.0], [11.0, -6.0], [10.5, -6.0]],
            ]]
        );
        assert_eq!(f[1].polygons.len(), 2);
        assert_eq!(f[1].polygons[0][0], outer.to_vec());

        let bad = json!({"arcs": [], "objects": {"c": {"geometries": [{"type": "Polygon", "arcs": [[5]]}]}}});
        assert_eq!(
            topojson::decode(&bad, "c").unwrap_err().to_string(),
            "TopoJSON: a geometry refers to arc 5, which does not exist"
        );
        let point = json!({"arcs": [], "objects": {"c": {"geometries": [{"type": "Point"}]}}});
        assert!(
            topojson::decode(&point, "c")
                .unwrap_err()
                .to_string()
                .contains("\"Point\"")
        );
    }

    #[test]
    fn rings_become_compact_relative_paths() {
        // Repeated points and the closing point go; a ring with no area goes.
        let square =
            topojson::clean_ring([[10, 10], [20, 10], [20, 10], [20, 25], [10, 25], [10, 10]])
                .unwrap();
        assert_eq!(square, [[10, 10], [20, 10], [20, 25], [10, 25]]);
        assert_eq!(topojson::clean_ring([[1, 1], [2, 2], [3, 3], [1, 1]]), None);
        assert_eq!(topojson::clean_ring([[1, 1], [1, 1], [1, 1]]), None);
        let triangle = topojson::clean_ring([[30, 5], [33, 9], [28, 7]]).unwrap();
        assert_eq!(
            topojson::svg_path(&[square, triangle]),
            "M10 10h10v15h-10zm20-5l3 4-5-2z"
        );
    }

    #[test]
    fn rings_across_the_antimeridian_are_split() {
        // A box from 170°E across 180° to 170°W.
        let ring = [
            [170.0, 0.0],
            [-170.0, 0.0],
            [-170.0, 10.0],
            [170.0, 10.0],
            [170.0, 0.0],
        ];
        let mut parts = topojson::split_antimeridian(&ring);
        parts.sort_by(|a, b| a[0][0].total_cmp(&b[0][0]));
        assert_eq!(parts.len(), 2, "{parts:?}");
        for part in &parts {
            assert!(
                part.iter().all(|p| (-180.0..=180.0).contains(&p[0])),
                "{part:?}"
            );
            assert_eq!(part.first(), part.last(), "closed");
        }
        let lons = |part: &[topojson::LonLat]| -> (f64, f64) {
            part.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
                (lo.min(p[0]), hi.max(p[0]))
            })
        };
        assert_eq!(lons(&parts[0]), (-180.0, -170.0));
        assert_eq!(lons(&parts[1]), (170.0, 180.0));
        // A ring that does not cross stays as it is.
        let plain = [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 1.0]];
        assert_eq!(topojson::split_antimeridian(&plain), vec![plain.to_vec()]);
    }

    #[test]
    fn equal_earth_projects_known_points() {
        let close =
            |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4;
        assert!(close(topojson::equal_earth([0.0, 0.0]), [0.0, 0.0]));
        // The projection's published extent: x = ±2.7064, y = ±1.3173.
        let edge = topojson::equal_earth([180.0, 0.0]);
        assert!((edge[0] - 2.706_4).abs() < 1e-3, "{edge:?}");
        let pole = topojson::equal_earth([0.0, 90.0]);
        assert!((pole[1] - 1.317_3).abs() < 1e-3, "{pole:?}");
        let south = topojson::equal_earth([-90.0, -45.0]);
        assert!(south[0] < 0.0 && south[1] < 0.0);
    }
}
