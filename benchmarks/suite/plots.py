"""Learning-curve plots: a metric against optimizer steps, one panel per data set, a line per method and
step count, the 95% interval over seeds shaded. Needs matplotlib (``pip install -e ".[plot]"``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.suite.spec import BY_NAME, Suite
from benchmarks.suite.stats import group

_STYLE = {1: "-", 2: "--", 4: ":", 10: "-.", 100: (0, (1, 1))}


def plot_curves(recs: list[dict], suite: Suite, folder: Path, metric: str | None = None) -> list[Path]:
    """One PNG per suite (``<folder>/<suite>-<metric>.png``); returns the files written (none without
    matplotlib: a one-line hint is printed instead)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e \".[plot]\")")
        return []
    metric = metric or ("sliced_w2" if suite.part == "toy" else "fid")
    summ = group([r for r in recs if r["run_steps"] == suite.budget])
    fig, axes = plt.subplots(1, len(suite.datasets), figsize=(5.5 * len(suite.datasets), 5.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ds in zip(axes[0], suite.datasets):
        rows = [(n, None, BY_NAME[n].label) for n in suite.entries] + [
            (n, v.name, f"{BY_NAME[n].label}, {v.label}") for v in suite.variants if v.name
            for n in suite.entries if n in v.entries]
        for i, (name, variant, text) in enumerate(rows):
            nfes = BY_NAME[name].nfe(suite.part)
            # the 1-step curves, and flow matching's most steps (the reference)
            for k in [k for k in nfes if k == 1 or (name == "flow_matching" and k == max(nfes))]:
                pts = sorted((key[5], s) for key, s in summ.items()
                             if key[1:5] == (ds, name, variant, suite.budget) and key[6:] == (k, metric))
                if not pts:
                    continue
                x = [p for p, _ in pts]
                y = [s.mean for _, s in pts]
                lo = [max(s.low, s.mean / 3) if s.n > 1 else s.mean for _, s in pts]  # log axis: clipped
                hi = [s.high if s.n > 1 else s.mean for _, s in pts]
                c = colours[i % len(colours)]
                ax.plot(x, y, linestyle=_STYLE.get(k, "-"), color=c, marker="o", ms=3,
                        label=f"{text}, {k} step{'s' if k > 1 else ''}")
                ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        floor = [s.mean for key, s in group(recs).items() if key[1:3] == (ds, "data") and key[7] == metric]
        if floor:
            ax.axhline(floor[0], color="grey", linewidth=0.8, label="data (noise floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(ds)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{suite.description} (mean over seeds, 95% interval shaded)", fontsize=9)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{suite.name}-{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
