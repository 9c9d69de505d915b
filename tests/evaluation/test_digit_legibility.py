"""The digit-legibility measure: a classifier of the real 8x8 digits that is confident on held-out real
digits and not on junk (noise, blobs, overlaid digits), deterministic, and wired into digits runs."""

import json

import pytest
import torch
import torch.nn.functional as F

from meanflow.data.digits import load_digits
from meanflow.evaluation.digit_legibility import (
    _shift,
    confidences,
    default_classifier,
    legibility_report,
    legible_share,
    outliers,
    train_digit_classifier,
)


@pytest.fixture(scope="module")
def clf():
    return default_classifier()  # trained once per process, shared with the digits runs' reports


def test_real_held_out_digits_are_legible_and_classified(clf):
    test = load_digits("test")
    conf, label = confidences(test.x, clf)
    assert (label == test.y).float().mean() > 0.93
    assert (conf >= 0.9).float().mean() > 0.8


def test_junk_is_not_legible(clf):
    g = torch.Generator().manual_seed(123)  # other draws than the training outliers
    train = load_digits("train")
    noise = torch.rand(500, 1, 8, 8, generator=g) * 2 - 1
    blurred = F.avg_pool2d(F.pad(train.x[:500], (1, 1, 1, 1), value=-1.0), 3, 1)
    two = 0.5 * (train.x[:500] + train.x[500:1000])
    two = two[train.y[:500] != train.y[500:1000]]
    assert legible_share(noise, clf) < 0.02
    assert legible_share(blurred, clf) < 0.1
    assert legible_share(two, clf) < 0.25
    assert legible_share(torch.full((10, 1, 8, 8), -1.0), clf) == 0.0  # blank
    assert legible_share(train.x.mean(0, keepdim=True), clf) == 0.0  # the average digit


def test_report_ratio_and_class_spread(clf):
    test = load_digits("test").x
    report = legibility_report(test, clf)
    assert report["legible"] == pytest.approx(report["legible_real"])
    assert report["ratio"] == pytest.approx(1.0)
    assert sum(report["legible_per_class"]) == round(report["legible"] * len(test))
    half = torch.cat([test[:100], torch.rand(100, 1, 8, 8) * 2 - 1])
    assert legibility_report(half, clf)["legible"] < 0.55


def test_training_is_deterministic_and_seeded():
    a, b = train_digit_classifier(epochs=1), train_digit_classifier(epochs=1)
    c = train_digit_classifier(seed=1, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_shift_and_outliers_shapes():
    g = torch.Generator().manual_seed(0)
    x = load_digits("train")
    shifted = _shift(x.x[:50], g)
    assert shifted.shape == (50, 1, 8, 8)
    # a shift moves ink by at most one pixel and never invents it: totals within one border row/col
    assert torch.equal(_shift(torch.full((3, 1, 8, 8), -1.0), g), torch.full((3, 1, 8, 8), -1.0))
    junk = outliers(x.x, x.y, 11, g)
    assert junk.shape == (11, 1, 8, 8) and junk.min() >= -1 and junk.max() <= 1


def test_wrong_shape_is_refused(clf):
    with pytest.raises(ValueError, match="8x8"):
        confidences(torch.zeros(2, 1, 28, 28), clf)


def test_a_digits_run_reports_legibility(tmp_path):
    from meanflow.training import loop
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("digits", overrides=[
        f"logging.out_dir={tmp_path}", "training.steps=4", "network.kwargs.hidden=32",
        "logging.progress=false", "logging.tensorboard=false", "training.checkpoint_every=4"])
    lines = []
    run = loop.train(cfg, echo=lines.append)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["samples"] == 1000 and metrics["steps"] == 1 and 0 <= metrics["legible"] <= 1
    assert metrics["legible_real"] > 0.8 and metrics["ratio"] == pytest.approx(
        metrics["legible"] / metrics["legible_real"])
    assert any(line.startswith("legible digits:") for line in lines)
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert any("eval/legible" in r for r in records)
