#!/usr/bin/env python3
"""Turns bench/ab.sh's JSON results into tables (Markdown, on stdout and in
bench/out/ab-summary.md) and the latency-vs-rate plot
(docs/img/latency-vs-rate.svg). No dependencies beyond the standard library."""
import glob, json, os, re, statistics

OUT = "bench/out"
SVG = "docs/img/latency-vs-rate.svg"


def load(pattern):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(OUT, pattern)))]


def median(values):
    return statistics.median(values) if values else None


def measure(label):
    m = {}
    for rate in (5000, 20000):
        runs = load(f"ab-{label}-lat{rate}-r*.json")
        m[f"p99 at {rate // 1000}k/s, one instance (ms)"] = median([r["latency_us"]["p99"] / 1000 for r in runs])
        m[f"lost at {rate // 1000}k/s, one instance"] = sum(r["lost"] + r["duplicated"] for r in runs) if runs else None
        runs = load(f"ab-{label}-redis{rate}-r*.json")
        m[f"p99 at {rate // 1000}k/s, two instances via Redis (ms)"] = median([r["latency_us"]["p99"] / 1000 for r in runs])
        m[f"lost at {rate // 1000}k/s, two instances"] = sum(r["lost"] + r["duplicated"] for r in runs) if runs else None
    m["server CPU per event at 20k/s (µs)"] = median([r["us_per_event"] for r in load(f"ab-{label}-cpu-r*.json")])
    m["server CPU per fanned-out event, 10 teachers/exam (µs)"] = median([r["us_per_event"] for r in load(f"ab-{label}-cpufan-r*.json")])
    m["RSS per idle connection (KB)"] = median([r["bytes_per_connection"] / 1000 for r in load(f"ab-{label}-idle-r*.json")])
    m["rounds"] = len(load(f"ab-{label}-cpu-r*.json")) or len(load(f"ab-{label}-redis5000-r*.json"))
    return m


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)


# Servers in the table: examwatch twice (SQLite persistence, the default;
# and `examwatch-mem`, events.persist = false), then the peers.
OURS = [("examwatch", "examwatch"), ("examwatch-mem", "examwatch-mem")]
PEERS = [("node-ws", "Node `ws`"), ("socketio", "Socket.IO"), ("socketioxide", "socketioxide")]
CPU_FAN = "server CPU per fanned-out event, 10 teachers/exam (µs)"
CPU_ONE = "server CPU per event at 20k/s (µs)"
RSS = "RSS per idle connection (KB)"
# Issue 17's targets, as (measure, our server, the most its value may be as
# a multiple of the best peer's in the same run).
TARGETS = [
    (CPU_FAN, "examwatch-mem", 0.8),
    (CPU_FAN, "examwatch", 1.0),
    (CPU_ONE, "examwatch-mem", 0.8),
    (CPU_ONE, "examwatch", 1.0),
    (RSS, "examwatch", 0.5),
]


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def best_peer(data, key):
    """The best (lowest) peer value of a measure and its label, or None."""
    vals = [(data[l][key], l) for l, _ in PEERS if number(data[l][key]) and data[l][key] > 0]
    return min(vals) if vals else None


def table():
    labels = [l for l, _ in OURS + PEERS]
    data = {l: measure(l) for l in labels}
    head = " | ".join(name for _, name in OURS + PEERS)
    ratios = " | ".join(f"{name} / best peer" for _, name in OURS)
    rows = [f"| measure (median of rounds) | {head} | {ratios} |",
            "|---|" + "---|" * (len(labels) + len(OURS))]
    for key in data["examwatch"]:
        vals = [data[l][key] for l in labels]
        best = best_peer(data, key)
        cells = []
        for l, _ in OURS:
            v = data[l][key]
            if key.startswith(("lost", "rounds")) or not number(v) or best is None:
                cells.append("—")
            else:
                cells.append(f"{v / best[0]:.2f}")
        rows.append(f"| {key} | " + " | ".join(fmt(v) for v in vals) + " | " + " | ".join(cells) + " |")
    return "\n".join(rows), data


def targets(data):
    """Issue 17's ratio targets: met or behind, against the best peer."""
    rows = ["| target (issue 17) | ours | best peer | ratio | target | |", "|---|---|---|---|---|---|"]
    for key, ours, most in TARGETS:
        v, best = data[ours][key], best_peer(data, key)
        if not number(v) or best is None:
            rows.append(f"| {key} | {ours}: — | — | — | ≤ {most} | not measured |")
            continue
        ratio = v / best[0]
        verdict = "met" if ratio <= most else "behind"
        rows.append(f"| {key} | {ours}: {fmt(v)} | {best[1]}: {fmt(best[0])} | {ratio:.2f} | ≤ {most} | {verdict} |")
    return "\n".join(rows)


def curve(label):
    pts = []
    for f in glob.glob(os.path.join(OUT, f"ab-{label}-curve*.json")):
        r = json.load(open(f))
        rate = int(re.search(r"curve(\d+)", f).group(1))
        pts.append((rate, r["latency_us"]["p50"] / 1000, r["latency_us"]["p99"] / 1000, r["lost"]))
    return sorted(pts)


def plot(series):
    import math
    w, h, l, r, t, b = 720, 420, 70, 180, 30, 50
    rates = [p[0] for pts in series.values() for p in pts]
    lat = [v for pts in series.values() for p in pts for v in (p[1], p[2])]
    if not rates:
        return None
    xmax = max(rates) * 1.05
    ymin, ymax = math.log10(max(min(lat), 0.05)), math.log10(max(lat) * 1.5)
    X = lambda x: l + (w - l - r) * x / xmax
    Y = lambda y: t + (h - t - b) * (1 - (math.log10(max(y, 0.05)) - ymin) / (ymax - ymin))
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="18" font-size="14" text-anchor="middle">Latency vs offered rate (100 exams × 30 students × 1 teacher)</text>']
    for d in range(int(math.floor(ymin)), int(math.ceil(ymax)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** d
            if ymin <= math.log10(v) <= ymax:
                s.append(f'<line x1="{l}" x2="{w - r}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
                s.append(f'<text x="{l - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for x in range(0, int(xmax) + 1, 10000):
        s.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{t}" y2="{h - b}" stroke="#eee"/>')
        s.append(f'<text x="{X(x):.1f}" y="{h - b + 16}" text-anchor="middle">{x // 1000}k</text>')
    s.append(f'<text x="{(l + w - r) / 2}" y="{h - 10}" text-anchor="middle">offered rate (events/s)</text>')
    s.append(f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">latency (ms, log)</text>')
    colors = {"examwatch": "#c0392b", "node-ws": "#2471a3"}
    k = 0
    for label, pts in series.items():
        for idx, dash in ((1, "4 3"), (2, "")):
            path = " ".join(f"{'M' if i == 0 else 'L'}{X(p[0]):.1f},{Y(p[idx]):.1f}" for i, p in enumerate(pts))
            s.append(f'<path d="{path}" fill="none" stroke="{colors.get(label, "#555")}" stroke-width="2" stroke-dasharray="{dash}"/>')
            for p in pts:
                s.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[idx]):.1f}" r="3" fill="{colors.get(label, "#555")}"/>')
            name = f"{label} {'p50' if idx == 1 else 'p99'}"
            s.append(f'<line x1="{w - r + 10}" x2="{w - r + 40}" y1="{t + 20 + 18 * k}" y2="{t + 20 + 18 * k}" stroke="{colors.get(label, "#555")}" stroke-width="2" stroke-dasharray="{dash}"/>')
            s.append(f'<text x="{w - r + 46}" y="{t + 24 + 18 * k}">{name}</text>')
            k += 1
    s.append("</svg>")
    return "\n".join(s)


if __name__ == "__main__":
    md, data = table()
    series = {l: curve(l) for l in ("examwatch", "node-ws")}
    lines = [md, "", targets(data), "", "| offered rate | " + " | ".join(f"{l} p50 / p99 ms (lost)" for l in series) + " |",
             "|---|" + "---|" * len(series)]
    rates = sorted({p[0] for pts in series.values() for p in pts})
    for rate in rates:
        cells = []
        for pts in series.values():
            p = next((p for p in pts if p[0] == rate), None)
            cells.append(f"{p[1]:.2f} / {p[2]:.2f} ({p[3]})" if p else "—")
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    open(os.path.join(OUT, "ab-summary.md"), "w").write(text + "\n")
    json.dump(data, open(os.path.join(OUT, "ab-summary.json"), "w"), indent=2)
    svg = plot(series)
    if svg:
        os.makedirs(os.path.dirname(SVG), exist_ok=True)
        open(SVG, "w").write(svg)
        print(f"wrote {SVG}")
