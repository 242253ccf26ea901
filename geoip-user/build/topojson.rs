//! The pure part of the map's build step: decode `TopoJSON` (as world-atlas
//! ships it), project with Equal Earth, and write compact SVG paths. No file
//! or environment access here, so geoip-user's unit tests compile this file
//! too (`src/web/page.rs`).

use std::fmt::{self, Write as _};

use serde_json::Value;

/// What is wrong with a `TopoJSON` document.
#[derive(Debug)]
pub(crate) enum Error {
    /// A member the format requires is missing or has the wrong type.
    Missing(&'static str),
    /// A geometry refers to an arc the topology does not have.
    NoSuchArc(i64),
    /// A geometry type this decoder does not handle.
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(what) => write!(f, "TopoJSON: missing or malformed {what}"),
            Self::NoSuchArc(i) => write!(
                f,
                "TopoJSON: a geometry refers to arc {i}, which does not exist"
            ),
            Self::Unsupported(kind) => write!(
                f,
                "TopoJSON: geometry type {kind:?} not supported (only Polygon and MultiPolygon)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Longitude and latitude in degrees.
pub(crate) type LonLat = [f64; 2];

/// One geometry of a `TopoJSON` geometry collection.
#[derive(Debug)]
pub(crate) struct Feature {
    pub(crate) id: Option<String>,
    pub(crate) name: String,
    /// Polygons, each a list of rings (the exterior first), each ring
    /// closed (its last point equals its first).
    pub(crate) polygons: Vec<Vec<Vec<LonLat>>>,
}

/// The geometries of the collection `object` of `topology`, with their arcs
/// stitched into rings of absolute coordinates.
pub(crate) fn decode(topology: &Value, object: &str) -> Result<Vec<Feature>, Error> {
    let arcs = decode_arcs(topology)?;
    let geometries = topology
        .get("objects")
        .and_then(|o| o.get(object))
        .and_then(|o| o.get("geometries"))
        .and_then(Value::as_array)
        .ok_or(Error::Missing("objects.<name>.geometries"))?;
    let mut features = Vec::with_capacity(geometries.len());
    for g in geometries {
        let kind = g.get("type").and_then(Value::as_str).unwrap_or("null");
        let polygons = match kind {
            "Polygon" => vec![polygon(&arcs, g.get("arcs"))?],
            "MultiPolygon" => g
                .get("arcs")
                .and_then(Value::as_array)
                .ok_or(Error::Missing("MultiPolygon arcs"))?
                .iter()
                .map(|p| polygon(&arcs, Some(p)))
                .collect::<Result<_, _>>()?,
            "null" => continue,
            other => return Err(Error::Unsupported(other.to_owned())),
        };
        let id = match g.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let name = g
            .get("properties")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        features.push(Feature { id, name, polygons });
    }
    Ok(features)
}

/// Every arc as absolute coordinates: quantized arcs (with a `transform`)
/// are delta-encoded, the others are not.
fn decode_arcs(topology: &Value) -> Result<Vec<Vec<LonLat>>, Error> {
    let pair = |v: &Value, what: &'static str| -> Result<[f64; 2], Error> {
        match v.as_array().map(Vec::as_slice) {
            Some([a, b, ..]) => Ok([
                a.as_f64().ok_or(Error::Missing(what))?,
                b.as_f64().ok_or(Error::Missing(what))?,
            ]),
            _ => Err(Error::Missing(what)),
        }
    };
    let transform = match topology.get("transform") {
        Some(t) => Some((
            pair(
                t.get("scale").ok_or(Error::Missing("transform.scale"))?,
                "transform.scale",
            )?,
            pair(
                t.get("translate")
                    .ok_or(Error::Missing("transform.translate"))?,
                "transform.translate",
            )?,
        )),
        None => None,
    };
    topology
        .get("arcs")
        .and_then(Value::as_array)
        .ok_or(Error::Missing("arcs"))?
        .iter()
        .map(|arc| {
            let points = arc.as_array().ok_or(Error::Missing("arc"))?;
            let mut at = [0.0, 0.0];
            points
                .iter()
                .map(|p| {
                    let p = pair(p, "arc position")?;
                    Ok(match transform {
                        Some((scale, translate)) => {
                            at = [at[0] + p[0], at[1] + p[1]];
                            [
                                at[0] * scale[0] + translate[0],
                                at[1] * scale[1] + translate[1],
                            ]
                        }
                        None => p,
                    })
                })
                .collect()
        })
        .collect()
}

fn polygon(arcs: &[Vec<LonLat>], rings: Option<&Value>) -> Result<Vec<Vec<LonLat>>, Error> {
    rings
        .and_then(Value::as_array)
        .ok_or(Error::Missing("Polygon arcs"))?
        .iter()
        .map(|ring| {
            let indexes = ring.as_array().ok_or(Error::Missing("ring"))?;
            let mut points: Vec<LonLat> = Vec::new();
            for index in indexes {
                let i = index.as_i64().ok_or(Error::Missing("arc index"))?;
                // A negative index is the one's complement of an arc to be
                // read backwards.
                let (arc_index, reversed) = if i < 0 { (!i, true) } else { (i, false) };
                let arc = usize::try_from(arc_index)
                    .ok()
                    .and_then(|a| arcs.get(a))
                    .ok_or(Error::NoSuchArc(i))?;
                let mut arc = arc.clone();
                if reversed {
                    arc.reverse();
                }
                // Consecutive arcs share their joining point.
                let skip = usize::from(!points.is_empty());
                points.extend(arc.into_iter().skip(skip));
            }
            Ok(points)
        })
        .collect()
}

/// `ring` (closed, in degrees) as rings that stay within longitudes
/// −180..180 without jumping across the antimeridian. Natural Earth's
/// Russia and Fiji cross it: their rings jump from 180 to −180 and would
/// draw a band across the whole map. Such a ring is made continuous (its
/// longitudes may go past ±180), then clipped to −180..180 once in place
/// and once shifted by 360° the other way.
pub(crate) fn split_antimeridian(ring: &[LonLat]) -> Vec<Vec<LonLat>> {
    let crosses = ring.windows(2).any(|w| (w[1][0] - w[0][0]).abs() > 180.0);
    if !crosses {
        return vec![ring.to_vec()];
    }
    let mut shift = 0.0;
    let mut unwrapped: Vec<LonLat> = Vec::with_capacity(ring.len());
    for (i, p) in ring.iter().enumerate() {
        if i > 0 {
            let step = p[0] - ring[i - 1][0];
            if step > 180.0 {
                shift -= 360.0;
            } else if step < -180.0 {
                shift += 360.0;
            }
        }
        unwrapped.push([p[0] + shift, p[1]]);
    }
    if shift != 0.0 {
        // Around a pole (Antarctica): leave it to the caller as it is.
        return vec![ring.to_vec()];
    }
    [-360.0, 0.0, 360.0]
        .into_iter()
        .filter_map(|offset| {
            let moved: Vec<LonLat> = unwrapped.iter().map(|p| [p[0] + offset, p[1]]).collect();
            let clipped = clip_longitude(&clip_longitude(&moved, 180.0, true), -180.0, false);
            (clipped.len() >= 3).then(|| {
                let mut closed = clipped;
                closed.push(closed[0]);
                closed
            })
        })
        .collect()
}

/// Sutherland–Hodgman: the part of polygon `ring` west (`keep_west`) or
/// east of the meridian `lon`, as an open ring.
fn clip_longitude(ring: &[LonLat], lon: f64, keep_west: bool) -> Vec<LonLat> {
    let inside = |p: &LonLat| if keep_west { p[0] <= lon } else { p[0] >= lon };
    let mut points: Vec<LonLat> = ring.to_vec();
    if points.len() > 1 && points.first() == points.last() {
        points.pop();
    }
    let mut out = Vec::with_capacity(points.len());
    for (i, b) in points.iter().enumerate() {
        let a = points[(i + points.len() - 1) % points.len()];
        let cross = |a: LonLat, b: &LonLat| {
            let t = (lon - a[0]) / (b[0] - a[0]);
            [lon, a[1] + t * (b[1] - a[1])]
        };
        match (inside(&a), inside(b)) {
            (true, true) => out.push(*b),
            (true, false) => out.push(cross(a, b)),
            (false, true) => {
                out.push(cross(a, b));
                out.push(*b);
            }
            (false, false) => {}
        }
    }
    out
}

/// The Equal Earth projection (Šavrič, Patterson, Jenny 2018) of a point in
/// degrees, in units of the Earth's radius, north up.
pub(crate) fn equal_earth([lon, lat]: LonLat) -> [f64; 2] {
    const A1: f64 = 1.340_264;
    const A2: f64 = -0.081_106;
    const A3: f64 = 0.000_893;
    const A4: f64 = 0.003_796;
    let m = 3f64.sqrt() / 2.0;
    let theta = (m * lat.to_radians().sin()).asin();
    let t2 = theta * theta;
    let t6 = t2 * t2 * t2;
    let x = lon.to_radians() * theta.cos()
        / (m * (A1 + 3.0 * A2 * t2 + t6 * (7.0 * A3 + 9.0 * A4 * t2)));
    let y = theta * (A1 + A2 * t2 + t6 * (A3 + A4 * t2));
    [x, y]
}

/// A ring in whole units of the view box, cleaned for output: no repeated
/// points, no closing point, `None` if nothing with an area is left.
pub(crate) fn clean_ring(points: impl IntoIterator<Item = [i32; 2]>) -> Option<Vec<[i32; 2]>> {
    let mut ring: Vec<[i32; 2]> = Vec::new();
    for p in points {
        if ring.last() != Some(&p) {
            ring.push(p);
        }
    }
    while ring.len() > 1 && ring.first() == ring.last() {
        ring.pop();
    }
    let twice_area: i64 = ring
        .iter()
        .zip(ring.iter().cycle().skip(1))
        .map(|(a, b)| i64::from(a[0]) * i64::from(b[1]) - i64::from(b[0]) * i64::from(a[1]))
        .sum();
    (ring.len() >= 3 && twice_area != 0).then_some(ring)
}

/// SVG path data for `rings` (each as [`clean_ring`] returns it): the first
/// ring starts absolute, everything else is relative (`m`, `l`, `h`, `v`),
/// with commands not repeated and no separator before a minus sign.
pub(crate) fn svg_path(rings: &[Vec<[i32; 2]>]) -> String {
    let mut d = String::new();
    let mut start: Option<[i32; 2]> = None;
    for ring in rings {
        let Some((&first, rest)) = ring.split_first() else {
            continue;
        };
        let mut last_cmd = match start {
            None => {
                push(&mut d, 'M', None, &[first[0], first[1]]);
                'M'
            }
            Some(s) => {
                push(&mut d, 'm', None, &[first[0] - s[0], first[1] - s[1]]);
                'm'
            }
        };
        start = Some(first);
        let mut at = first;
        for &p in rest {
            let (dx, dy) = (p[0] - at[0], p[1] - at[1]);
            let delta = [dx, dy];
            let (cmd, args) = match delta {
                [_, 0] => ('h', &delta[..1]),
                [0, _] => ('v', &delta[1..]),
                _ => ('l', &delta[..]),
            };
            push(&mut d, cmd, Some(last_cmd), args);
            last_cmd = cmd;
            at = p;
        }
        d.push('z');
    }
    d
}

/// Append `cmd` (unless it repeats `last`) and its numbers.
fn push(d: &mut String, cmd: char, last: Option<char>, args: &[i32]) {
    let mut separate = true;
    if last != Some(cmd) {
        d.push(cmd);
        separate = false;
    }
    for &n in args {
        if separate && n >= 0 {
            d.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(d, "{n}");
        separate = true;
    }
}
