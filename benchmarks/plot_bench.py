"""Plot speedup against changed share, with the cone-ideal line, from run_bench.py's JSON.

    python benchmarks/plot_bench.py docs/results/bench-576x768-fused-2026-11-30.json docs/images/speedup_vs_change.png
"""

from __future__ import annotations

import json
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    rows = json.load(open(src))["rows"]
    models = sorted({r["model"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, model in enumerate(models):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["changed_fraction"])
        x = [100 * r["changed_fraction"] for r in rs]
        color = f"C{i}"
        ax.plot(x, [r["speedup"] for r in rs], "o-", color=color, label=f"{model}: measured")
        ax.plot(x, [r["cone_speedup"] for r in rs], "--", color=color, label=f"{model}: cone-ideal (exact limit)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="changed pixels per frame (%)",
           ylabel="speedup vs best torch eager", title="fxsparse exact mode, 576x768, 2 threads")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.savefig(dst, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(*sys.argv[1:3])
