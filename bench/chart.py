#!/usr/bin/env python3
"""Draws the benchmark chart: an SVG with, per scenario, a bar of req/s (log scale) and a
bar of server CPU µs per request, the two limits of the same run (bare axum handler, one
Redis GET per request) as dashed lines. Python 3 standard library only. The title names
the commit, or the results' optional "label" field.

Usage: bench/chart.py <results.json> <chart.svg>
"""

import json
import math
import sys
from xml.sax.saxutils import escape

SHORT = {
    "a": "(a) GET cached",
    "b": "(b) GET uncached, first requests",
    "b_after": "(b) then 1,000 GETs",
    "c": "(c) 90/10 GET/PUT",
    "d": "(d) batch of 50",
    "e16": "(e) login storm, default pool",
    "e16_after": "(e) then 1,000 GETs",
    "e4": "(e) login storm, pool of 4",
    "e4_after": "(e) then 1,000 GETs (pool 4)",
}
ORDER = ["a", "c", "d", "b", "b_after", "e16", "e16_after", "e4", "e4_after"]

LABEL_W, PANEL_W, GAP, ROW_H, TOP, PAD = 230, 330, 40, 26, 78, 14
COLORS = {"rps": "#4C78A8", "cpu": "#F58518", "bare": "#2CA02C", "redis": "#D62728"}


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def fmt_num(v):
    if v >= 10000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        data = json.load(f)
    rows = {r["id"]: r for r in data["rows"]}
    scen = [rows[i] for i in ORDER if i in rows] + [
        r for r in data["rows"] if r["kind"] == "scenario" and r["id"] not in ORDER and r["id"] in rows
    ]
    bare, rget = rows.get("bare"), rows.get("redis_get")

    n = len(scen)
    height = TOP + n * ROW_H + 64
    width = LABEL_W + 2 * PANEL_W + GAP + 30
    x1 = LABEL_W  # req/s panel
    x2 = LABEL_W + PANEL_W + GAP  # CPU panel
    out = []
    add = out.append
    add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">')
    add(f'<rect width="{width}" height="{height}" fill="white"/>')
    m = data.get("machine", {})
    g = data.get("git", {})
    title = f"user-api benchmark, {data.get('date', '')[:10]}, " + (data.get("label") or f"commit {g.get('commit', '?')}")
    add(f'<text x="{PAD}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>')
    cfg = data.get("config", {})
    sub = (f"{m.get('cores', '?')} cores ({m.get('cpu', '?')}), {cfg.get('profiles', '?')} profiles, "
           f"wrk {cfg.get('wrk_threads', 2)} threads / {cfg.get('wrk_connections', 32)} connections, "
           f"{cfg.get('secs_per_scenario', '?')} s per timed scenario")
    add(f'<text x="{PAD}" y="40" fill="#555">{escape(sub)}</text>')

    # req/s: log scale from 10^lo to 10^hi
    rps_vals = [r["rps"] for r in scen if r.get("rps")] + [x["rps"] for x in (bare, rget) if x]
    lo = math.floor(math.log10(max(min(rps_vals), 1))) if rps_vals else 1
    hi = math.ceil(math.log10(max(rps_vals))) if rps_vals else 5
    hi = max(hi, lo + 1)

    def xr(v):
        v = max(v, 10 ** lo)
        return x1 + (math.log10(v) - lo) / (hi - lo) * PANEL_W

    cpu_vals = [r["cpu_us_per_req"] for r in scen if r.get("cpu_us_per_req")] + [
        x["cpu_us_per_req"] for x in (bare, rget) if x and x.get("cpu_us_per_req")]
    cmax = nice_max(max(cpu_vals) if cpu_vals else 1)

    def xc(v):
        return x2 + v / cmax * PANEL_W

    y0, y1 = TOP, TOP + n * ROW_H
    add(f'<text x="{x1}" y="{TOP - 22}" font-weight="bold">requests per second (log scale)</text>')
    add(f'<text x="{x2}" y="{TOP - 22}" font-weight="bold">server CPU µs per request</text>')
    for d in range(lo, hi + 1):
        x = xr(10 ** d)
        add(f'<line x1="{x:.1f}" y1="{y0 - 6}" x2="{x:.1f}" y2="{y1}" stroke="#ddd"/>')
        add(f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle" fill="#555">{fmt_num(10 ** d)}</text>')
    for k in range(0, 5):
        v = cmax * k / 4
        x = xc(v)
        add(f'<line x1="{x:.1f}" y1="{y0 - 6}" x2="{x:.1f}" y2="{y1}" stroke="#ddd"/>')
        add(f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle" fill="#555">{v:g}</text>')

    for i, r in enumerate(scen):
        y = TOP + i * ROW_H
        label = SHORT.get(r["id"], r["scenario"][:34])
        add(f'<text x="{LABEL_W - 8}" y="{y + ROW_H / 2 + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        bh = ROW_H - 8
        if r.get("rps"):
            w = xr(r["rps"]) - x1
            add(f'<rect x="{x1}" y="{y + 4}" width="{max(w, 1):.1f}" height="{bh}" fill="{COLORS["rps"]}"/>')
            bad = f", {r['non2xx']} non-2xx" if r.get("non2xx") else ""
            add(f'<text x="{x1 + w + 4:.1f}" y="{y + ROW_H / 2 + 4:.1f}" fill="#222">'
                f'{fmt_num(r["rps"])}{escape(bad)}</text>')
        if r.get("cpu_us_per_req"):
            w = xc(r["cpu_us_per_req"]) - x2
            add(f'<rect x="{x2}" y="{y + 4}" width="{max(w, 1):.1f}" height="{bh}" fill="{COLORS["cpu"]}"/>')
            add(f'<text x="{x2 + w + 4:.1f}" y="{y + ROW_H / 2 + 4:.1f}" fill="#222">'
                f'{r["cpu_us_per_req"]:.0f}</text>')

    legend = []
    for lim, key, name in ((bare, "bare", "bare axum handler"), (rget, "redis", "one Redis GET per request")):
        if not lim:
            continue
        x = xr(lim["rps"])
        add(f'<line x1="{x:.1f}" y1="{y0 - 6}" x2="{x:.1f}" y2="{y1}" stroke="{COLORS[key]}" '
            f'stroke-width="2" stroke-dasharray="6,4"/>')
        if lim.get("cpu_us_per_req"):
            x = xc(lim["cpu_us_per_req"])
            add(f'<line x1="{x:.1f}" y1="{y0 - 6}" x2="{x:.1f}" y2="{y1}" stroke="{COLORS[key]}" '
                f'stroke-width="2" stroke-dasharray="6,4"/>')
        legend.append((key, f"limit: {name} ({fmt_num(lim['rps'])} req/s, "
                            f"{lim.get('cpu_us_per_req') or 0:.0f} µs CPU/req)"))
    ly = y1 + 36
    lx = PAD
    for key, text in legend:
        add(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 26}" y2="{ly - 4}" stroke="{COLORS[key]}" '
            f'stroke-width="2" stroke-dasharray="6,4"/>')
        add(f'<text x="{lx + 32}" y="{ly}">{escape(text)}</text>')
        lx += 32 + 7 * len(text) + 24
    add("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
