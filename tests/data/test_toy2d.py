import pytest
import torch

from meanflow.data import toy2d
from meanflow.errors import UserError


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_shape_seed_and_scale(name):
    x = toy2d.sample(name, 5000, seed=1)
    assert x.shape == (5000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, toy2d.sample(name, 5000, seed=1))
    assert not torch.equal(x, toy2d.sample(name, 5000, seed=2))
    assert x.mean(0).abs().max() < 0.1
    assert torch.all((x.std(0) > 0.7) & (x.std(0) < 1.3))
    assert x.abs().max() < 4


def test_shapes_are_what_they_claim():
    g = toy2d.sample("8gaussians", 4000, 0)
    radius = g.norm(dim=1)
    assert ((radius - 1.4).abs() < 0.5).float().mean() > 0.99
    c = toy2d.sample("checkerboard", 4000, 0) / (3**0.5 / 2)  # back on [-2, 2]^2
    parity = (torch.floor(c[:, 0]) + torch.floor(c[:, 1])).remainder(2)
    assert torch.all(parity == 0)


def test_global_rng_untouched():
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    toy2d.sample("moons", 100, 5)
    assert torch.equal(torch.rand(3), a)


@pytest.mark.parametrize("name, n", [("circles", 10), ("moons", 0)])
def test_bad_arguments_raise(name, n):
    with pytest.raises(UserError):
        toy2d.sample(name, n, 0)
