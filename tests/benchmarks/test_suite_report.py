"""Tables generated from records: the head-to-head, the ablation table, the curves table and the section
markers of docs/results.md."""

from benchmarks.suite import report
from benchmarks.suite.suites import SUITES


def _rec(
    method,
    seed,
    value,
    nfe=1,
    variant=None,
    dataset="checkerboard",
    train_steps=2000,
    run_steps=2000,
    metric="sliced_w2",
):
    return {
        "setup": "mlp128-b256",
        "dataset": dataset,
        "method": method,
        "variant": variant,
        "run_steps": run_steps,
        "train_steps": train_steps,
        "seed": seed,
        "nfe": nfe,
        "metric": metric,
        "value": value,
        "suite": "toy",
    }


def test_update_section_keeps_hand_written_text(tmp_path):
    md = tmp_path / "r.md"
    md.write_text("# Title\n\nhand-written note\n")
    report.update_section(md, "toy", "first\n")
    report.update_section(md, "ablations", "second\n")
    report.update_section(md, "toy", "third\n")
    text = md.read_text()
    assert "hand-written note" in text and "third" in text and "second" in text and "first" not in text
    assert text.count("<!-- suite:toy:begin -->") == 1


def test_head_to_head_rows_carry_mean_interval_and_seeds():
    recs = [_rec("meanflow", s, v) for s, v in enumerate((0.10, 0.12, 0.14))]
    recs += [_rec("cd", s, 0.2, train_steps=4000) for s in range(3)]  # a teacher's steps counted
    recs += [_rec("data", s, 0.03, nfe=None, train_steps=0, run_steps=0) for s in range(3)]
    text = report.head_to_head(recs, "toy")
    # mean 0.12, sd 0.02, half = 4.3027 * 0.02 / sqrt(3) = 0.0497
    assert "| MeanFlow | 1 | 0.120 ± 0.050 |" in text and "| 3 | 2000 |" in text
    assert (
        "| consistency distillation (CD, Heun; FM teacher) | 1 | 0.200 ± 0.000 |" in text
        and "| 4000 |" in text
    )
    assert "| data (noise floor) | - | 0.030 ± 0.000 |" in text
    recs += [_rec("meanflow", s, 0.07, variant="p0.5") for s in range(3)]
    text = report.head_to_head(recs, "toy")
    assert "| MeanFlow, p = 0.5 | 1 | 0.070 ± 0.000 |" in text  # the suite's variant rows follow their entry
    compact = report.compact(recs)
    assert "| MeanFlow, p = 0.5 | 0.070 ± 0.000 |" in compact
    assert "| MeanFlow | 0.120 ± 0.050 |" in compact


def test_ablation_table_marks_clear_differences():
    recs = [_rec("meanflow", s, 0.10 + 0.001 * s, nfe=k) for s in range(3) for k in (1, 2)]
    recs += [_rec("meanflow", s, 0.30 + 0.001 * s, nfe=1, variant="ratio0") for s in range(3)]
    recs += [_rec("meanflow", s, 0.10 + 0.01 * s, nfe=2, variant="ratio0") for s in range(3)]
    text = report.variants_table(recs, "ablations")
    row = next(line for line in text.splitlines() if "0%" in line)
    assert "**0.301 ± 0.002**" in row  # clearly worse at 1 step: bold
    assert "| 0.110 ± 0.025 |" in row  # overlapping at 2 steps: plain


def test_curves_table_lists_each_point():
    recs = [
        _rec("meanflow", s, v, train_steps=p, run_steps=20000)
        for p, v in ((500, 0.3), (2000, 0.1))
        for s in range(3)
    ]
    text = report.curves_table(recs, "curves")
    assert "| MeanFlow | 1 | 0.300 ± 0.000 |  | 0.100 ± 0.000 |" in text
    assert SUITES["curves"].eval_points == (500, 1000, 2000, 5000, 10000, 20000)
    assert "between the columns" not in text


def test_curves_table_names_points_between_its_columns():
    """A chain's curve (DMF after a 10,000-step flow-matching stage) is measured at 10,500 ... 20,000
    steps: the on-grid point goes in its column, the rest in a line under the table."""
    recs = [_rec("dmf", s, v, train_steps=p, run_steps=20000)
            for p, v in ((10500, 0.4), (20000, 0.2)) for s in range(3)]
    text = report.curves_table(recs, "curves")
    row = next(line for line in text.splitlines()
               if line.startswith("| Decoupled MeanFlow") and "| 1 |" in line)
    assert row.endswith("|  | 0.200 ± 0.000 |")
    assert "Decoupled MeanFlow (from flow matching, 1/2 + 1/2), 1 step at 10,500: 0.400 ± 0.000" in text
    assert "20,000: 0.200" not in text


def test_readme_gets_the_mnist_table_without_its_setup_paragraph(tmp_path):
    from benchmarks.suite import records

    res = tmp_path / "results"
    fid = {**_rec("meanflow", 0, 120.0, dataset="mnist", train_steps=1200, run_steps=1200, metric="fid"),
           "setup": "unet16", "suite": "mnist"}
    kid = {**fid, "metric": "kid", "value": 0.13}
    records.append(res / "mnist.jsonl", [fid, kid, {**fid, "seed": 1, "value": 130.0}, {**kid, "seed": 1}])
    readme = tmp_path / "README.md"
    readme.write_text("# R\n\nintro\n\n<!-- suite:mnist:begin -->\n<!-- suite:mnist:end -->\n\nafter\n")
    report.write_all(res, tmp_path / "results.md", readme, tmp_path / "plots")
    text = readme.read_text()
    # mean 125, sd 7.07, half = 12.706 * 7.07 / sqrt(2) = 63.5
    assert "| MeanFlow | 1 | 125.0 ± 63.5 | 130.0 ± 0.0 | 2 | 1200 |" in text
    assert "Suite `mnist`" not in text and "intro" in text and "after" in text
    assert "Suite `mnist`" in (tmp_path / "results.md").read_text()
