"""Tables and plots generated from the records (`python -m benchmarks.suite report`).

Every number is a mean over seeds with its 95% Student-t interval (``stats``), from the records of
``docs/results/*.jsonl``. Each table goes between the markers ``<!-- suite:NAME:begin -->`` and
``<!-- suite:NAME:end -->`` of docs/results.md (and a compact one into README.md); text outside the
markers is written by hand and kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from benchmarks.suite import records
from benchmarks.suite.spec import BY_NAME
from benchmarks.suite.stats import Summary, disjoint, group
from benchmarks.suite.suites import SUITES

METRIC_LABEL = {"sliced_w2": "sliced W2", "energy": "energy", "precision": "precision", "recall": "recall",
                "fid": "FID", "kid": "KID x 1000"}
INTERVAL_NOTE = ("Each cell: mean over seeds ± the half-width of the two-sided 95% Student-t interval of "
                 "the mean (t_{0.975, n-1} s / sqrt(n); 4.30 s / sqrt(3) for 3 seeds).")


def label(name: str) -> str:
    return "data (noise floor)" if name == "data" else (BY_NAME[name].label if name in BY_NAME else name)


def update_section(path: Path, name: str, body: str) -> None:
    """Replace the text between the markers of `name` in `path` (appended when missing), atomically."""
    begin, end = f"<!-- suite:{name}:begin -->", f"<!-- suite:{name}:end -->"
    text = path.read_text() if path.is_file() else "# Measured quality\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(s: Summary | None, metric: str) -> str:
    if s is None:
        return ""
    if metric == "kid":
        s = Summary(s.mean * 1000, s.half * 1000, s.n, s.values)
    digits = {"sliced_w2": 3, "energy": 4, "precision": 2, "recall": 2, "fid": 1, "kid": 1}[metric]
    return s.text(digits)


def final_steps(summ: dict, setup: str, dataset: str, method: str, variant, run_steps: int) -> int | None:
    """The largest ``train_steps`` measured for a row of a run length (its end of training)."""
    got = [k[5] for k in summ if k[:5] == (setup, dataset, method, variant, run_steps)]
    return max(got) if got else None


def rows_of(suite) -> list[tuple[str, str | None, str]]:
    """(entry, variant or None, label) of every row of a head-to-head: each entry, then each of the
    suite's variants that applies to it."""
    out = []
    for name in suite.entries:
        out.append((name, None, label(name)))
        out += [(name, v.name, f"{label(name)}, {v.label}")
                for v in suite.variants if v.name and name in v.entries]
    return out


def head_to_head(recs: list[dict], suite_name: str) -> str:
    """Per data set: every entry at each of its step counts, at the end of training, all metrics."""
    suite = SUITES[suite_name]
    summ = group(recs)
    metrics = ("sliced_w2", "energy", "precision", "recall") if suite.part == "toy" else ("fid", "kid")
    lines = [f"Suite `{suite.name}` ({suite.description}); setup `{suite.setup}`: preset "
             f"`{suite.preset}` with {', '.join(suite.base) or 'no overrides'}; "
             f"{suite.samples:,} samples per measurement. "
             + INTERVAL_NOTE, ""]
    for ds in suite.datasets:
        lines += [f"**{ds}**", "", "| method | steps | " + " | ".join(METRIC_LABEL[m] for m in metrics)
                  + " | seeds | train steps |", "|---|---:|" + "---:|" * len(metrics) + "---:|---:|"]
        for name, variant, text in (("data", None, label("data")), *rows_of(suite)):
            run_steps = 0 if name == "data" else suite.budget
            last = final_steps(summ, suite.setup, ds, name, variant, run_steps)
            if last is None:
                continue
            nfes = [None] if name == "data" else BY_NAME[name].nfe(suite.part)
            for k in nfes:
                cells = [summ.get((suite.setup, ds, name, variant, run_steps, last, k, m)) for m in metrics]
                if all(c is None for c in cells):
                    continue
                n = max(c.n for c in cells if c is not None)
                steps = "-" if k is None else ("adaptive" if adaptive(name) else k)
                lines.append(f"| {text} | {steps} | "
                             + " | ".join(_cell(c, m) for c, m in zip(cells, metrics))
                             + f" | {n} | {last if name != 'data' else '-'} |")
        lines.append("")
    return "\n".join(lines)


FAMILY = ("meanflow", "imf", "alphaflow", "meanflow_kim", "dmf")
"""The MeanFlow family's entries in the frontier goal (issue 22: the best 1-step row within 1.5x of
100-step flow matching)."""


def frontier_goal(recs: list[dict], suite_name: str = "frontier", factor: float = 1.5) -> str:
    """Per data set: each MeanFlow-family row's 1-step sliced W2 over 100-step flow matching's, and
    whether the best meets ``factor``."""
    suite = SUITES[suite_name]
    summ = group(recs)
    lines = [f"**Goal**: best MeanFlow-family 1-step sliced W2 <= {factor}x 100-step flow matching's "
             "(means over seeds).", "", "| data set | flow matching, 100 steps | "
             + " | ".join(f"{text} (ratio)" for _, _, text in _family(suite))
             + " | best | met |", "|---|---:|" + "---:|" * len(_family(suite)) + "---|---|"]
    for ds in suite.datasets:
        fm = summ.get((suite.setup, ds, "flow_matching", None, suite.budget, suite.budget, 100, "sliced_w2"))
        if fm is None:
            continue
        cells, best = [], None
        for name, variant, text in _family(suite):
            c = summ.get((suite.setup, ds, name, variant, suite.budget, suite.budget, 1, "sliced_w2"))
            cells.append("" if c is None else f"{c.text(3)} ({c.mean / fm.mean:.2f})")
            if c is not None and (best is None or c.mean < best[0]):
                best = (c.mean, text)
        ratio = None if best is None else best[0] / fm.mean
        verdict = "" if ratio is None else ("yes" if ratio <= factor else f"no ({ratio:.2f}x)")
        lines.append(f"| {ds} | {fm.text(3)} | " + " | ".join(cells)
                     + f" | {'' if best is None else best[1]} | {verdict} |")
    return "\n".join(lines)


def _family(suite) -> list[tuple[str, str | None, str]]:
    return [row for row in rows_of(suite) if row[0] in FAMILY]


def adaptive(name: str) -> bool:
    """Whether the entry's sampler picks its own steps (its ``nfe`` field is 1 sampler call)."""
    return dict(BY_NAME[name].sample_kwargs).get("ode_solver") == "rk45" if name in BY_NAME else False


def measured_nfe(recs: list[dict], ds: str, name: str) -> float | None:
    """Mean network evaluations per sample that an adaptive sampler took, over its records."""
    got = [r["nfe_measured"] for r in recs if r["dataset"] == ds and r["method"] == name
           and r.get("nfe_measured") is not None]
    return sum(got) / len(got) if got else None


def best_text(summ: dict, suite, ds: str, name: str, metric: str, nfe_used: float | None = None,
              variant: str | None = None) -> tuple[str, str]:
    """(1-step cell, best multi-step cell ``"value (k)"``) of one entry (and variant) on one data set;
    an adaptive sampler's value goes in the second cell with its measured NFE (`nfe_used`)."""
    last = final_steps(summ, suite.setup, ds, name, variant, suite.budget)
    if last is None:
        return "", ""
    if adaptive(name):
        s = summ.get((suite.setup, ds, name, variant, suite.budget, last, 1, metric))
        return "", "" if s is None else f"{_cell(s, metric)} (adaptive, {nfe_used or 0:.0f} NFE)"
    cells = {k: summ.get((suite.setup, ds, name, variant, suite.budget, last, k, metric))
             for k in BY_NAME[name].nfe(suite.part)}
    cells = {k: c for k, c in cells.items() if c is not None}
    one = _cell(cells.get(1), metric)
    multi = {k: c for k, c in cells.items() if k != 1}
    if not multi:
        return one, ""
    k = min(multi, key=lambda j: multi[j].mean)
    return one, f"{_cell(multi[k], metric)} ({k})"


def compact(recs: list[dict], suite_name: str = "toy", metric: str = "sliced_w2") -> str:
    """README table: per entry, the 1-step value and the best multi-step value on each data set."""
    suite = SUITES[suite_name]
    summ = group(recs)
    head = "| method | " + " | ".join(f"{ds} 1 step | best k (k)" for ds in suite.datasets) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(suite.datasets)]
    floor = []
    for ds in suite.datasets:
        s = summ.get((suite.setup, ds, "data", None, 0, 0, None, metric))
        floor.append(_cell(s, metric) if s else "")
    lines.append("| data (noise floor) | " + " | ".join(f"{f} | " for f in floor) + "|")
    for name, variant, text in rows_of(suite):
        cells = [c for ds in suite.datasets
                 for c in best_text(summ, suite, ds, name, metric, measured_nfe(recs, ds, name), variant)]
        if any(cells):
            lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def variants_table(recs: list[dict], suite_name: str, metric: str = "sliced_w2", nfes=(1, 2, 4)) -> str:
    """Ablation table: each variant beside the default, per data set and step count; a cell is bold where
    its interval and the default's do not overlap (the difference is clear at this number of seeds)."""
    suite = SUITES[suite_name]
    summ = group(recs)
    head = "| group | variant | " + " | ".join(f"{ds} {k} step{'s' if k > 1 else ''}"
                                              for ds in suite.datasets for k in nfes) + " | seeds |"
    lines = [head, "|---|---|" + "---:|" * (len(suite.datasets) * len(nfes)) + "---:|"]
    for v in (None, *[v for v in suite.variants if v.name]):
        vname = None if v is None else v.name
        cells, n = [], 0
        for ds in suite.datasets:
            last = final_steps(summ, suite.setup, ds, "meanflow", vname, suite.budget)
            for k in nfes:
                s = summ.get((suite.setup, ds, "meanflow", vname, suite.budget, last, k, metric))
                d = summ.get((suite.setup, ds, "meanflow", None, suite.budget, last, k, metric))
                txt = _cell(s, metric)
                cells.append(f"**{txt}**" if s and d and vname and disjoint(s, d) else txt)
                n = max(n, s.n if s else 0)
        if n:
            lines.append(f"| {'default' if v is None else v.group} | "
                         f"{'ratio 0.25, LN(-0.4, 1) sorted, p = 1, (v, 0, 1)' if v is None else v.label} | "
                         + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def curves_table(recs: list[dict], suite_name: str = "curves", metric: str = "sliced_w2") -> str:
    """Per data set, entry and step count: the metric at each measured training step."""
    suite = SUITES[suite_name]
    summ = group(recs)
    pts = suite.eval_points
    lines = []
    for ds in suite.datasets:
        lines += [f"**{ds}** ({METRIC_LABEL[metric]})", "",
                  "| method | steps | " + " | ".join(f"{p:,}" for p in pts) + " |",
                  "|---|---:|" + "---:|" * len(pts)]
        for name, variant, text in rows_of(suite):
            for k in BY_NAME[name].nfe(suite.part):
                cells = [summ.get((suite.setup, ds, name, variant, suite.budget, p, k, metric)) for p in pts]
                if any(cells):
                    row = " | ".join(_cell(c, metric) for c in cells)
                    lines.append(f"| {text} | {k} | {row} |")
        lines.append("")
        between = _between_columns(summ, suite, ds, metric)
        if between:
            lines += ["Measured between the columns (a chain counts its earlier stages' steps): "
                      + "; ".join(between) + ".", ""]
    return "\n".join(lines)


def _between_columns(summ: dict, suite, dataset: str, metric: str) -> list[str]:
    """The points of a curve that fall between the table's columns (Decoupled MeanFlow's, which start
    after its flow-matching stage), as ``"<row>, <k> step(s) at <step>: <cell>, ..."``."""
    out = []
    for name, variant, text in rows_of(suite):
        for k in BY_NAME[name].nfe(suite.part):
            off = sorted((key[5], s) for key, s in summ.items()
                         if key[:5] == (suite.setup, dataset, name, variant, suite.budget)
                         and key[6:] == (k, metric) and key[5] not in suite.eval_points)
            if off:
                cells = ", ".join(f"{p:,}: {_cell(s, metric)}" for p, s in off)
                out.append(f"{text}, {k} step{'s' if k > 1 else ''} at {cells}")
    return out


def diagnosis_tables(recs: list[dict], setup: str = "mlp128-b256") -> str:
    """The k-step diagnosis (``diagnose``): per data set, the default MeanFlow's error on each sampler
    interval beside how often its (t, r) sampler trains near that interval; then the error of the
    1-, 2- and 4-step samples against the reference flow across variants and training lengths."""
    from benchmarks.suite.diagnose import INTERVALS

    recs = [r for r in recs if r["setup"] == setup and str(r.get("suite", "")).startswith("diagnose")]
    summ = group(recs)
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in recs):
        base = (setup, ds, "meanflow", None)
        steps = sorted({k[5] for k in summ if k[:4] == base and k[5] > 0})
        last = 2000 if 2000 in steps else (steps[-1] if steps else None)
        lines += [f"**{ds}**: MeanFlow (default settings) after {last} steps, per sampler interval", "",
                  "| sampler | interval (r, t) | P(a training pair within 0.05) | u RMSE vs exact | "
                  "step error (t - r) x RMSE |", "|---:|---|---:|---:|---:|"]
        for k, ivs in INTERVALS.items():
            for r, t in ivs:
                if k > 1 and (r, t) == (0.0, 1.0):
                    continue
                tag = f"[{r:g},{t:g}]"
                cov = summ.get((*base, 2000, 0, k, f"coverage{tag}"))
                u = summ.get((*base, 2000, last, k, f"u_rmse{tag}"))
                d = summ.get((*base, 2000, last, k, f"disp_rmse{tag}"))
                lines.append(f"| {k} | ({r:g}, {t:g}) | {'' if cov is None else f'{cov.mean:.2e}'} | "
                             f"{'' if u is None else u.text(3)} | {'' if d is None else d.text(3)} |")
        lines += ["", f"**{ds}**: RMSE of the k-step sample against the exact flow's endpoint for the "
                  "same noise", "",
                  "| variant | run steps | train steps | 1 step | 2 steps | 4 steps | seeds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        rows = sorted({(k[3] or "", k[4], k[5]) for k in summ if k[1] == ds and k[7] == "coupling_rmse"})
        for variant, run_steps, train_steps in rows:
            head = (setup, ds, "meanflow", variant or None, run_steps, train_steps)
            cells = [summ.get((*head, k, "coupling_rmse")) for k in (1, 2, 4)]
            n = max((c.n for c in cells if c), default=0)
            lines.append(f"| {variant or 'default'} | {run_steps} | {train_steps} | "
                         + " | ".join("" if c is None else c.text(3) for c in cells) + f" | {n} |")
        lines.append("")
    return "\n".join(lines)


def write_all(results_dir: Path, markdown: Path, readme: Path, plots: Path) -> None:
    """Regenerate every section whose suite has records (and the curve plots)."""
    recs = records.load([results_dir])
    setups = {s.setup for s in SUITES.values()}
    have = {(r["setup"], r.get("suite")) for r in recs}
    for name, suite in SUITES.items():
        if name == "smoke" or not any(s == suite.setup and (su == name) for s, su in have):
            continue
        mine = [r for r in recs if r["setup"] == suite.setup]
        metric = "sliced_w2" if suite.part == "toy" else "fid"
        if len(suite.entries) > 1 and not suite.points:  # a head-to-head (its variants are extra rows)
            goal = "\n" + frontier_goal(mine, name) + "\n" if name == "frontier" else ""
            update_section(markdown, name, goal + head_to_head(mine, name))
        elif suite.points:
            from benchmarks.suite.plots import plot_curves

            files = plot_curves(mine, suite, plots)
            links = "".join(f"![{f.stem}]({os.path.relpath(f, markdown.parent)})\n" for f in files)
            update_section(markdown, name, links + "\n" + curves_table(mine, name, metric))
        else:
            update_section(markdown, name, variants_table(mine, name, metric))
    if any(str(r.get("suite", "")).startswith("diagnose") for r in recs):
        update_section(markdown, "diagnosis", diagnosis_tables(recs))
    if any(r.get("suite") == "toy" for r in recs) and readme.is_file():
        update_section(readme, "toy", compact([r for r in recs if r["setup"] in setups]))
    mnist = [r for r in recs if r.get("suite") == "mnist"]
    if mnist and readme.is_file():  # the MNIST table without its setup paragraph (the README states it)
        update_section(readme, "mnist", head_to_head(mnist, "mnist").split("\n\n", 1)[1])
