"""Plots of the scale series: ``bench/results/scale-<series>.json`` -> ``docs/img/scale-<series>.png``.

Run ``python bench/plot.py [--quick] [--series nodes,ports] [--out docs/img]`` after
``python bench/scale.py``. Needs matplotlib (``pip install -e '.[bench]'``); nothing else in
the project does.

Every series gets one PNG: a row of log-log panels, one per measured quantity. A panel of
totals (time or memory for the whole size) carries a dashed reference ``∝ x`` through each
curve's first point: a curve steeper than the reference grows faster than linearly. A panel of per-item
costs (latency, bytes per item, throughput) carries a flat reference instead: there, "linear
growth" of the total is a flat line. ``--quick`` plots the ``-quick`` results.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rows(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _div(a, b):
    return None if a is None or b in (None, 0) else a / b


# One entry per series: a list of panels (title, y label, reference, curves); a curve is
# (label, row filter, x function, y function). reference: "linear" (y ∝ x) or "flat".
PANELS = {
    "nodes": [
        (
            "time until every node sees every other",
            "s",
            "linear",
            [("mesh", {}, lambda r: r["links"], lambda r: r["mesh_s"])],
            "node pairs n(n-1)/2",
        ),
        (
            "memory of all links, per node",
            "bytes",
            "linear",
            [
                (
                    "RSS growth / node",
                    {},
                    lambda r: r["nodes"],
                    lambda r: r["rss_per_peer_bytes"] and r["rss_per_peer_bytes"] * (r["nodes"] - 2),
                )
            ],
        ),
        (
            "aggregate messages/s, every pair",
            "msgs/s",
            "flat",
            [("all pairs", {}, lambda r: r["nodes"], lambda r: r["msgs_per_s"])],
        ),
    ],
    "ports": [
        (
            "RSS growth",
            "bytes",
            "linear",
            [
                ("callback", {"kind": "callback"}, lambda r: r["ports"], lambda r: r["rss_growth_bytes"]),
                ("greenlet", {"kind": "greenlet"}, lambda r: r["ports"], lambda r: r["rss_growth_bytes"]),
            ],
        ),
        (
            "time to create them all",
            "s",
            "linear",
            [
                ("callback", {"kind": "callback"}, lambda r: r["ports"], lambda r: r["create_total_s"]),
                ("greenlet", {"kind": "greenlet"}, lambda r: r["ports"], lambda r: r["create_total_s"]),
            ],
        ),
        (
            "one message to a random port",
            "µs",
            "flat",
            [
                ("local snd", {"kind": "callback"}, lambda r: r["ports"], lambda r: r["snd_local_ns"] / 1000),
                ("remote round trip p50", {"kind": "callback"}, lambda r: r["ports"], lambda r: r["remote_rtt_p50_us"]),
            ],
        ),
    ],
    "db": [
        (
            "seed RSS growth",
            "bytes",
            "linear",
            [("seed", {}, lambda r: r["keys"], lambda r: r["seed_rss_growth_bytes"] or None)],
        ),
        (
            "a joining node sees every key",
            "s",
            "linear",
            [
                ("db_mon join", {}, lambda r: r["keys"], lambda r: r["join_s"]),
                ("db_family", {}, lambda r: r["keys"], lambda r: r["family_s"]),
            ],
        ),
        (
            "a node leaves (SIGKILL) -> watcher sees it",
            "ms",
            "flat",
            [("leave", {}, lambda r: r["keys"], lambda r: r["leave_s"] * 1000)],
        ),
    ],
    "msgsize": [
        (
            "time per message, one link",
            "µs",
            "linear",
            [
                ("aemp_green", {}, lambda r: r["bytes"], lambda r: r["bytes"] / r["aemp_mb_s"]),
                ("bare gevent socket", {}, lambda r: r["bytes"], lambda r: r["bytes"] / r["raw_mb_s"]),
            ],
        ),
        (
            "throughput",
            "MB/s",
            "flat",
            [
                ("aemp_green", {}, lambda r: r["bytes"], lambda r: r["aemp_mb_s"]),
                ("bare gevent socket", {}, lambda r: r["bytes"], lambda r: r["raw_mb_s"]),
            ],
        ),
    ],
    "monitors": [
        (
            "remote node SIGKILLed -> monitors fire",
            "ms",
            "linear",
            [
                ("all fired", {}, lambda r: r["monitors"], lambda r: r["all_fired_ms"]),
                ("first fired", {}, lambda r: r["monitors"], lambda r: r["first_fired_ms"]),
                ("installing them", {}, lambda r: r["monitors"], lambda r: 1000 * r["monitors"] / r["mon_per_s"]),
            ],
        ),
        (
            "k guards on one port: make, cancel all (CPU)",
            "ms",
            "linear",
            [
                ("make", {}, lambda r: r["monitors"], lambda r: r.get("one_port_mon_ms")),
                ("cancel, newest first", {}, lambda r: r["monitors"], lambda r: r.get("one_port_cancel_ms")),
            ],
        ),
        (
            "watcher memory per monitor",
            "bytes",
            "flat",
            [("per monitor", {}, lambda r: r["monitors"], lambda r: r["watcher_bytes_per_monitor"])],
        ),
    ],
    "wan": [
        (
            "database converges after a join",
            "ms",
            "linear",
            [
                ("20 ms", {"delay_ms": 20}, lambda r: r["nodes"], lambda r: r["converge_ms"]),
                ("0 ms", {"delay_ms": 0}, lambda r: r["nodes"], lambda r: r["converge_ms"]),
            ],
        ),
        (
            "node-down seen everywhere after SIGKILL",
            "ms",
            "linear",
            [
                ("link down, 20 ms", {"delay_ms": 20}, lambda r: r["nodes"], lambda r: r["down_everywhere_ms"]),
                ("db keys gone, 20 ms", {"delay_ms": 20}, lambda r: r["nodes"], lambda r: r["db_delete_everywhere_ms"]),
                ("link down, 0 ms", {"delay_ms": 0}, lambda r: r["nodes"], lambda r: r["down_everywhere_ms"]),
                ("db keys gone, 0 ms", {"delay_ms": 0}, lambda r: r["nodes"], lambda r: r["db_delete_everywhere_ms"]),
            ],
        ),
    ],
}  # fmt: skip

X_LABEL = {
    "nodes": "nodes",
    "ports": "ports",
    "db": "keys",
    "msgsize": "message bytes",
    "monitors": "monitors",
    "wan": "nodes",
}


def _human(v):
    """10 -> "10", 10000 -> "10k", 1000000 -> "1M"."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return ("%g" % (v / div)) + suffix
    return "%g" % v


def plot_series(name, data, out_dir):
    """Write ``scale-<name>.png`` for the loaded JSON ``data``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels = PANELS[name]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, ylabel, ref, curves, *xlabel) in zip(axes[0], panels):
        drawn = False
        xs_all = set()
        for label, match, fx, fy in curves:
            pts = []
            for r in _rows(data["rows"], **match):
                try:
                    y = fy(r)
                except (KeyError, TypeError, ZeroDivisionError):
                    y = None
                if y:
                    pts.append((fx(r), y))
            if not pts:
                continue
            xs, ys = zip(*sorted(pts))
            (line,) = ax.plot(xs, ys, "o-", label=label)
            xs_all.update(xs)
            if len(xs) > 1:  # the reference through this curve's first point
                x0, y0, x1 = xs[0], ys[0], xs[-1]
                ref_ys = [y0, y0 * x1 / x0] if ref == "linear" else [y0, y0]
                ax.plot(
                    [x0, x1],
                    ref_ys,
                    "--",
                    color=line.get_color(),
                    alpha=0.45,
                    label=None if drawn else ("∝ x (linear)" if ref == "linear" else "constant"),
                )
                drawn = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel[0] if xlabel else X_LABEL[name])
        if xs_all:
            ax.set_xticks(sorted(xs_all))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _human(v)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "scale: %s (%s%s)" % (name, data.get("when", "?"), ", quick" if data.get("quick") else ""),
        fontsize=11,
    )
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("scale-%s.png" % name)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default=",".join(PANELS), help="comma list of series")
    ap.add_argument("--quick", action="store_true", help="plot the -quick result files")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    args = ap.parse_args()
    for name in [s for s in args.series.split(",") if s]:
        if name not in PANELS:
            ap.error("unknown series %s (known: %s)" % (name, ", ".join(PANELS)))
        src = Path(args.results) / ("scale-%s%s.json" % (name, "-quick" if args.quick else ""))
        if not src.exists():
            print("no %s: skipped (run bench/scale.py --series %s)" % (src, name), file=sys.stderr)
            continue
        data = json.loads(src.read_text())
        if not data.get("rows"):
            print("%s has no rows (series skipped?): no plot" % src, file=sys.stderr)
            continue
        print("wrote %s" % plot_series(name, data, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
