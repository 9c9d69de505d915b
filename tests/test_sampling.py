"""meanflow.sampling: seeded noise independent of batching, uint8 quantisation; and
meanflow.training.load.load_generator."""

import numpy as np
import pytest
import torch

from meanflow import sampling
from meanflow.errors import UserError
from meanflow.methods import MeanFlow
from meanflow.networks import build_network
from meanflow.training import load


def test_noise_does_not_depend_on_how_it_is_cut():
    whole = sampling.noise_for(0, 2500, (3,), seed=4)
    parts = torch.cat([sampling.noise_for(a, b, (3,), seed=4) for a, b in [(0, 7), (7, 1500), (1500, 2500)]])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, sampling.noise_for(0, 2500, (3,), seed=5))


def test_labels():
    assert sampling.labels_for(8, 12, 10, None).tolist() == [8, 9, 0, 1]
    assert sampling.labels_for(0, 3, 10, 4).tolist() == [4, 4, 4]
    assert sampling.labels_for(0, 3, 0, None) is None
    with pytest.raises(UserError, match="outside"):
        sampling.labels_for(0, 3, 10, 10)
    with pytest.raises(UserError, match="unconditional"):
        sampling.labels_for(0, 3, 0, 1)


def _image_net():
    torch.manual_seed(0)
    net = build_network("mlp", dim=16, hidden=16, depth=1).eval()
    net.meanflow_shape, net.meanflow_num_classes = (1, 4, 4), 0
    return net


def test_generate_is_seeded_and_batch_independent():
    net, method = _image_net(), MeanFlow()
    a = sampling.generate(method, net, 0, 20, seed=1, batch_size=20)
    b = sampling.generate(method, net, 0, 20, seed=1, batch_size=3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c = sampling.generate(method, net, 5, 20, seed=1, batch_size=4)
    torch.testing.assert_close(a[5:], c, rtol=1e-5, atol=1e-6)
    # one-step MeanFlow: x = e - u(e, t=1, h=1)
    e = sampling.noise_for(0, 20, (1, 4, 4), seed=1)
    ones = torch.ones(20)
    with torch.no_grad():
        torch.testing.assert_close(a, e - net(e, ones, ones), rtol=1e-5, atol=1e-6)


def test_generate_passes_method_sampling_options():
    """`sample_options` reach `method.sample` as keywords; one the method does not take is a UserError."""
    from meanflow.methods import build_method
    from meanflow.networks import MLP

    torch.manual_seed(0)
    net = MLP(dim=2, hidden=8, depth=1, num_classes=2, guidance_cond=True)
    imf = build_method("imf", num_classes=2)
    kw = dict(shape=(2,), num_classes=2, seed=3)
    plain = sampling.generate(imf, net, 0, 6, **kw)
    torch.testing.assert_close(sampling.generate(imf, net, 0, 6, sample_options={"omega": 1.0}, **kw), plain)
    guided = sampling.generate(imf, net, 0, 6, sample_options={"omega": 4.0, "interval": (0.2, 0.9)}, **kw)
    e = sampling.noise_for(0, 6, (2,), seed=3)
    y, ones = torch.arange(6) % 2, torch.ones(6)
    with torch.no_grad():
        expect = e - net(e, ones, ones, y, guidance=torch.tensor([[4.0, 0.2, 0.9]]).expand(6, 3))
    torch.testing.assert_close(guided, expect)
    assert not torch.allclose(guided, plain)
    for bad in ({"omega": 2.0}, {"steps": 2}):
        with pytest.raises(UserError, match="takes no sampling option"):
            sampling.generate(MeanFlow(), _image_net(), 0, 2, sample_options=bad)


def test_generate_uint8_quantises_as_specified():
    net, method = _image_net(), MeanFlow()
    imgs = sampling.generate_uint8(method, net, 9, steps=2, seed=0, batch_size=4)
    assert imgs.dtype == np.uint8 and imgs.shape == (9, 4, 4, 1)
    x = sampling.generate(method, net, 0, 9, steps=2, seed=0)
    ref = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(imgs, ref)
    edge = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(5, 1, 1, 1)
    assert sampling.to_uint8(edge).ravel().tolist() == [0, 0, 128, 255, 255]


def test_load_generator_round_trip(tmp_path):
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("digits", overrides=[
        f"logging.out_dir={tmp_path}", "logging.progress=false", "logging.tensorboard=false",
        "network={name: mlp, kwargs: {hidden: 16, depth: 1}}", "training.steps=2", "training.batch_size=16",
        "training.ema_decays=[0.9, 0.99]", "training.ema_warmup=false",
        "logging.sample_count=4"])
    run = train(cfg, echo=lambda s: None)
    method, net, cfg2 = load.load_generator(run)
    assert cfg2 == cfg and net.meanflow_shape == (1, 8, 8) and not net.training
    _, raw, _ = load.load_generator(run / "checkpoints" / "ckpt-0000002.safetensors", ema="raw")
    _, second, _ = load.load_generator(run, ema=0.99)
    first = net
    a = sampling.generate_uint8(method, first, 5)
    assert a.shape == (5, 8, 8, 1)
    x = [sampling.generate(method, m, 0, 5) for m in (first, raw, second)]
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[0], x[2])
    with pytest.raises(UserError, match="no EMA 0.5"):
        load.load_generator(run, ema=0.5)
    with pytest.raises(UserError, match="--ema"):
        load.load_generator(run, ema="fast")


class _NoisySampler(MeanFlow):
    """MeanFlow steps plus fresh noise after each step: a stand-in for a stochastic sampler."""

    def sample(self, net, noise, y=None, steps=1, schedule=None, *, net_kwargs=None, generator=None):
        from meanflow.methods.base import fresh_noise

        z = noise
        for _ in range(steps):
            z = super().sample(net, z, y, steps=1) + 0.1 * fresh_noise(z, generator)
        return z


def test_stochastic_sampler_noise_depends_only_on_seed_and_index():
    net, method = _image_net(), _NoisySampler()
    a = sampling.generate(method, net, 0, 20, steps=3, seed=1, batch_size=20)
    b = sampling.generate(method, net, 0, 20, steps=3, seed=1, batch_size=3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c = sampling.generate(method, net, 5, 20, steps=3, seed=1, batch_size=4)
    torch.testing.assert_close(a[5:], c, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, sampling.generate(method, net, 0, 20, steps=3, seed=2, batch_size=20))
    # the fresh draws differ from the starting noise and from each other
    src = sampling.SampleNoise(0, 4, seed=1)
    x = torch.zeros(4, 1, 4, 4)
    d1, d2 = src.randn_like(x), src.randn_like(x)
    assert not torch.equal(d1, d2) and not torch.equal(d1, sampling.noise_for(0, 4, (1, 4, 4), seed=1))
    with pytest.raises(ValueError, match="covers 4"):
        src.randn_like(torch.zeros(5, 1, 4, 4))


def test_fresh_noise_sources():
    from meanflow.methods.base import fresh_noise

    like = torch.zeros(3, 2, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = fresh_noise(like, g1), fresh_noise(like, g2)
    assert a.dtype == torch.float64 and a.shape == (3, 2) and torch.equal(a, b)
    torch.manual_seed(3)
    c = fresh_noise(like)
    torch.manual_seed(3)
    assert torch.equal(c, torch.randn_like(like))
