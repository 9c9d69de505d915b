"""EMA by half-life in images (EDM's schedule as pMF uses it): the per-update decay against its closed
form, the shadows against a float64 recursion, names, exact resume, and selection by name when loading."""

import pytest
import torch
from torch import nn
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.errors import UserError
from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.ema import EMA, halflife_decay, halflife_name, parse_halflife
from meanflow.training.load import load_generator, parse_ema
from meanflow.training.presets import resolve_config


@pytest.mark.parametrize("n, images", [
    (1, 51.2),            # ramp: T_1 = 1 * 1024 * 0.05
    (100, 5120.0),
    (9765, 499_968.0),    # the last ramped update before T reaches 500 kimg
    (9766, 500_000.0),    # 9766 * 51.2 = 500,019.2 > 500,000: the half-life itself from here on
    (400_000, 500_000.0),
])
def test_decay_against_the_closed_form(n, images):
    """pMF B/16: batch 1024, half-life 500 kimg, ramp 0.05 (utils/ema_util.py:9-16)."""
    assert halflife_decay(500.0, n, 1024, 0.05) == pytest.approx(0.5 ** (1024 / images), rel=1e-15, abs=0)
    assert halflife_decay(500.0, n, 1024, None) == 0.5 ** (1024 / 500_000)


def test_decay_halves_the_weight_every_half_life():
    """Without the ramp, the weight of the past after 1000 H / B updates is one half."""
    d = halflife_decay(2.0, 1, 100, None)
    assert d ** (2000 / 100) == pytest.approx(0.5, rel=1e-12)


def test_shadow_follows_the_recursion_in_float64():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    ema = EMA(net, [0.9], warmup=False, halflives_kimg=[0.01, 0.5], batch_size=8, rampup=0.05)
    assert list(ema.shadows) == [0.9, "0.01kimg", "0.5kimg"]
    want = {k: net.weight.detach().clone() for k in ema.shadows}
    for n in range(1, 8):
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight))
        ema.update(net)
        for key, hl in ((0.9, None), ("0.01kimg", 0.01), ("0.5kimg", 0.5)):
            d = 0.9 if hl is None else 0.5 ** (8 / max(min(1000 * hl, n * 8 * 0.05), 1e-8))
            assert ema.decay(key, n) == d
            want[key] = d * want[key] + (1 - d) * net.weight.detach()
    for key in want:  # the shadows are float32
        torch.testing.assert_close(ema.state(key)["weight"].double(), want[key], rtol=1e-6, atol=1e-6)


def test_names():
    assert [halflife_name(h) for h in (500, 1000.0, 0.1, 2.5e-05)] == ["500kimg", "1000kimg", "0.1kimg",
                                                                     "2.5e-05kimg"]
    assert parse_halflife("1000kimg") == 1000.0 and parse_halflife("1000KIMG") == 1000.0
    assert parse_halflife("0.9999") is None and parse_halflife("-1kimg") is None
    assert parse_ema("1000.0kimg") == "1000kimg" and parse_ema("0.9999") == 0.9999
    cfg = resolve_config("toy-2d", overrides=["training.ema_decays=[0.99]",
                                              "training.ema_halflife_kimg=[2, 0.5]"])
    assert cfg.training.ema_keys == [0.99, "2kimg", "0.5kimg"]


@pytest.mark.parametrize("override, message", [
    ("training.ema_halflife_kimg=[0]", "training.ema_halflife_kimg must be finite and > 0, got [0.0]"),
    ("training.ema_halflife_kimg=[1, 1.0]", "training.ema_halflife_kimg has duplicates"),
    ("training.ema_rampup=0", "training.ema_rampup must be > 0 (or null), got 0.0"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(UserError) as e:
        resolve_config("toy-2d", overrides=[override])
    assert str(e.value) == message


def _cfg(tmp_path, *extra):
    return tiny_toy(tmp_path, "training.ema_decays=[]", "training.ema_halflife_kimg=[0.05, 0.2]",
                    "training.steps=7", *extra)


def test_resume_is_bit_identical(tmp_path):
    cfg = _cfg(tmp_path)
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    (ca, a), (cb, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert ca.ema_decays == cb.ema_decays == ["0.05kimg", "0.2kimg"]
    assert any(k.startswith("ema/0.05kimg/") for k in a) and set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_generator_selects_by_name(tmp_path):
    # no ramp: T_n would be n * 32 * 0.05 = 1.6 n images for both half-lives over these 4 steps
    run = loop.train(_cfg(tmp_path, "training.steps=4", "training.ema_rampup=null"), echo=lambda s: None)
    ckpt = Checkpoint(run)
    for ema in (None, "0.05kimg", "0.2kimg", "raw"):
        _, net, _ = load_generator(run, ema=ema)
        want = {None: ckpt.ema("0.05kimg"), "raw": ckpt.model()}.get(ema) or ckpt.ema(ema)
        assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items()), ema
    short, long = ckpt.ema("0.05kimg"), ckpt.ema("0.2kimg")
    assert any(not torch.equal(short[k], long[k]) for k in short)
    with pytest.raises(UserError, match=r"has no EMA 1kimg \(has: 0.05kimg, 0.2kimg\)"):
        load_generator(run, ema="1kimg")
