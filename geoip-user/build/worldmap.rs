//! The map page's country shapes: `assets/world/` (Natural Earth 1:110m
//! admin-0 countries as world-atlas ships them, see its `LICENSES.md`) to
//! `OUT_DIR/world.json`, which `src/web/page.rs` embeds:
//!
//! ```json
//! {"viewBox": "0 0 1000 436",
//!  "countries": {"DE": "M517 114l2-1...z", "_N. Cyprus": "M...z", ...},
//!  "points": {"SG": [776, 272], ...}}
//! ```
//!
//! Shapes are keyed by ISO 3166-1 alpha-2 code; a shape without one (for
//! example N. Cyprus, Somaliland) is keyed `_<name>`, drawn but never
//! coloured. `points` places the countries too small for the 1:110m shapes
//! (Singapore, Hong Kong, Malta, ...) as dots.
//!
//! Projection: Equal Earth (equal-area, so no country looks bigger than it
//! is), fitted to a view box 1000 units wide, coordinates rounded to whole
//! units. Antarctica is left out: it would take a sixth of the height for a
//! continent that has next to no connections; a count there still shows in
//! the page's list of countries not on the map.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};

#[path = "topojson.rs"]
mod topojson;

/// Width of the view box; the height follows from the projection.
const WIDTH: f64 = 1000.0;
/// Space around the land, in view-box units.
const MARGIN: f64 = 4.0;
/// Left out of the map (see the module documentation).
const LEFT_OUT: &[&str] = &["AQ"];

pub(crate) fn generate(out_dir: &Path) -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let dir = Path::new(&manifest_dir).join("assets/world");
    let read = |name: &str| -> anyhow::Result<Value> {
        let path = dir.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    };
    let topology = read("countries-110m.json")?;
    let codes = read("iso-numeric.json")?;
    let small = read("small-countries.json")?;
    println!("cargo:rerun-if-changed=build/topojson.rs");
    println!("cargo:rerun-if-changed=build/worldmap.rs");

    let code_of = |f: &topojson::Feature| -> Option<String> {
        let by_number = f.id.as_ref().and_then(|id| codes["numeric"][id].as_str());
        by_number
            .or_else(|| codes["names"][&f.name].as_str())
            .map(str::to_owned)
    };
    let features: Vec<(String, topojson::Feature)> = topojson::decode(&topology, "countries")?
        .into_iter()
        .map(|f| (code_of(&f).unwrap_or_else(|| format!("_{}", f.name)), f))
        .filter(|(code, _)| !LEFT_OUT.contains(&code.as_str()))
        .collect();

    // Fit: the full width of the projection (±180° at the equator), the
    // height of the land that is kept.
    let x_max = topojson::equal_earth([180.0, 0.0])[0];
    let scale = (WIDTH - 2.0 * MARGIN) / (2.0 * x_max);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, f) in &features {
        for p in f.polygons.iter().flatten().flatten() {
            let y = topojson::equal_earth(*p)[1];
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !y_min.is_finite() {
        return Err(anyhow!("countries-110m.json has no shapes"));
    }
    let height = ((y_max - y_min) * scale + 2.0 * MARGIN).ceil();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "rounded, within the view box"
    )]
    let to_view = |p: topojson::LonLat| -> [i32; 2] {
        let [x, y] = topojson::equal_earth(p);
        [
            ((x + x_max) * scale + MARGIN).round() as i32,
            ((y_max - y) * scale + MARGIN).round() as i32,
        ]
    };

    let mut countries: BTreeMap<String, String> = BTreeMap::new();
    let mut points: BTreeMap<String, [i32; 2]> = BTreeMap::new();
    for (code, f) in &features {
        let rings: Vec<Vec<[i32; 2]>> = f
            .polygons
            .iter()
            .flatten()
            .flat_map(|ring| topojson::split_antimeridian(ring))
            .filter_map(|ring| topojson::clean_ring(ring.iter().map(|p| to_view(*p))))
            .collect();
        if rings.is_empty() {
            // Too small to draw at this scale: a dot at its first point.
            if let Some(p) = f.polygons.iter().flatten().flatten().next() {
                points.insert(code.clone(), to_view(*p));
            }
            continue;
        }
        let d = topojson::svg_path(&rings);
        countries
            .entry(code.clone())
            .and_modify(|old| old.push_str(&d))
            .or_insert(d);
    }
    for (code, at) in small
        .as_object()
        .ok_or_else(|| anyhow!("small-countries.json: expected an object"))?
    {
        let lon_lat = at
            .as_array()
            .and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?]));
        let lon_lat = lon_lat.ok_or_else(|| {
            anyhow!("small-countries.json: {code}: expected [longitude, latitude]")
        })?;
        if !countries.contains_key(code) {
            points.insert(code.clone(), to_view(lon_lat));
        }
    }

    let world = json!({
        "viewBox": format!("0 0 {WIDTH} {height}"),
        "countries": countries,
        "points": points,
    });
    let out = out_dir.join("world.json");
    fs::write(&out, world.to_string()).with_context(|| format!("cannot write {}", out.display()))
}
