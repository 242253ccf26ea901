#!/usr/bin/env python3
"""Derives the two small tables next to this script from the npm packages
world-atlas@2.0.2 and i18n-iso-countries@7.14.0 (see LICENSES.md):

    npm pack world-atlas@2.0.2 i18n-iso-countries@7.14.0 --pack-destination /tmp/x
    mkdir -p /tmp/x/wa /tmp/x/i18n
    tar xzf /tmp/x/world-atlas-2.0.2.tgz -C /tmp/x/wa
    tar xzf /tmp/x/i18n-iso-countries-7.14.0.tgz -C /tmp/x/i18n
    python3 derive.py /tmp/x/wa/package /tmp/x/i18n/package

- iso-numeric.json: ISO 3166-1 numeric -> alpha-2 (from i18n-iso-countries'
  codes.json), plus the features of countries-110m.json that have no numeric
  code but do have an alpha-2 user-assigned code, by name (Kosovo: XK).
- small-countries.json: alpha-2 -> [longitude, latitude] (0.1 degree) of
  every country that countries-110m.json has no shape for, drawn as a dot on
  the map: the area centroid of its largest polygon in countries-50m.json;
  for the few that the 50m file has no shape for either (they are part of
  another feature there), the coordinates in FALLBACK.
"""

import json
import sys
from pathlib import Path

# Places that world-atlas 50m has no feature of their own for: [lon, lat].
FALLBACK = {
    "BQ": [-68.3, 12.2],   # Bonaire
    "BV": [3.4, -54.4],    # Bouvet Island
    "CC": [96.8, -12.2],   # Cocos (Keeling) Islands
    "CX": [105.7, -10.5],  # Christmas Island
    "GF": [-53.2, 4.0],    # French Guiana
    "GI": [-5.4, 36.1],    # Gibraltar
    "GP": [-61.6, 16.2],   # Guadeloupe
    "MQ": [-61.0, 14.6],   # Martinique
    "RE": [55.5, -21.1],   # Réunion
    "SJ": [16.0, 78.5],    # Svalbard and Jan Mayen
    "TK": [-171.8, -9.2],  # Tokelau
    "TV": [179.2, -8.5],   # Tuvalu
    "UM": [166.6, 19.3],   # US Minor Outlying Islands (Wake Island)
    "YT": [45.1, -12.8],   # Mayotte
}


def arcs_of(topo):
    """Absolute [lon, lat] points of every arc (quantized, delta-encoded)."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append([x * sx + tx, y * sy + ty])
        out.append(pts)
    return out


def ring(arcs, indexes):
    pts = []
    for i in indexes:
        a = arcs[i] if i >= 0 else arcs[~i][::-1]
        pts.extend(a if not pts else a[1:])
    return pts


def centroid(pts):
    """Planar area and centroid of a ring (lon/lat as plane; fine for small shapes)."""
    a = cx = cy = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        c = x0 * y1 - x1 * y0
        a += c
        cx += (x0 + x1) * c
        cy += (y0 + y1) * c
    if abs(a) < 1e-12:
        n = len(pts)
        return 0.0, [sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n]
    return abs(a) / 2, [cx / (3 * a), cy / (3 * a)]


def main(world_atlas, i18n):
    codes = json.loads((i18n / "codes.json").read_text())
    numeric = {num: a2 for a2, _a3, num, *_ in codes}
    t110 = json.loads((world_atlas / "countries-110m.json").read_text())
    on_map = {numeric[g["id"]] for g in t110["objects"]["countries"]["geometries"] if g.get("id") in numeric}
    on_map.add("XK")
    here = Path(__file__).parent
    (here / "iso-numeric.json").write_text(
        json.dumps({"numeric": dict(sorted(numeric.items())), "names": {"Kosovo": "XK"}}, separators=(",", ":"))
        + "\n"
    )
    t50 = json.loads((world_atlas / "countries-50m.json").read_text())
    arcs = arcs_of(t50)
    points = {}
    for g in t50["objects"]["countries"]["geometries"]:
        a2 = numeric.get(g.get("id"))
        if a2 is None or a2 in on_map:
            continue
        polys = [g["arcs"]] if g["type"] == "Polygon" else g["arcs"]
        best = max((centroid(ring(arcs, p[0])) for p in polys), key=lambda c: c[0])
        points[a2] = [round(best[1][0], 1), round(best[1][1], 1)]
    for a2, pt in FALLBACK.items():
        points.setdefault(a2, pt)
    missing = sorted(set(numeric.values()) - on_map - set(points) - {"AQ"})
    if missing:
        sys.exit(f"no shape and no point for {missing}")
    (here / "small-countries.json").write_text(json.dumps(dict(sorted(points.items())), separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
