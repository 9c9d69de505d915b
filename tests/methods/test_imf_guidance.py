"""iMF's guidance pieces (meanflow.methods.imf_guidance): the guided target's formula on a network with
known outputs, the batch doubling of keyword inputs, the range of the training draws."""

import torch

from meanflow.methods.imf_guidance import GUIDANCE_KEY, draw_interval, draw_omega, guided_target, repeat_batch

NULL = 5


def _net(z, t, h, y, guidance, augment_labels, flag):
    """v_theta = 3 for a real class, 1 for the null class, whatever the inputs; records the inputs."""
    _net.guidance, _net.augment_labels, _net.flag = guidance, augment_labels, flag
    return torch.where((y == NULL)[:, None], 1.0, 3.0).expand_as(z)


def test_guided_target_is_v_plus_the_guidance_gap_inside_the_interval_only():
    z, v = torch.zeros(3, 2), torch.tensor([[0.5, -0.5]] * 3)
    t = torch.tensor([0.2, 0.5, 0.9])
    omega = torch.tensor([4.0, 4.0, 2.0])
    t_min, t_max = torch.full((3,), 0.3), torch.full((3,), 0.8)
    kw = {"augment_labels": torch.ones(3, 9), "flag": True}
    v_g, v_c = guided_target(_net, z, t, v, torch.tensor([0, 1, 2]), omega, t_min, t_max, kw, NULL)
    # w_eff = 1, 4, 1 (only t = 0.5 is inside [0.3, 0.8]); v_c - v_u = 3 - 1
    assert torch.equal(v_c, torch.full((3, 2), 3.0))
    assert torch.allclose(v_g, v + torch.tensor([0.0, 1 - 1 / 4, 0.0])[:, None] * 2.0)
    # conditional rows first with w_eff and [0, 1], then the null rows at w = 1
    assert _net.guidance.tolist() == [[1, 0, 1], [4, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]]
    assert _net.augment_labels.shape == (6, 9) and _net.flag is True  # the other inputs, doubled or as given


def test_repeat_batch_doubles_per_sample_tensors_only():
    kw = {"a": torch.arange(3), "scalar": torch.tensor(2.0), "other": torch.zeros(4), "flag": True}
    out = repeat_batch(kw, 3)
    assert out["a"].tolist() == [0, 1, 2, 0, 1, 2]
    assert out["scalar"] is kw["scalar"] and out["other"] is kw["other"] and out["flag"] is True
    assert GUIDANCE_KEY == "guidance"


def test_training_draws_stay_in_their_ranges():
    g = torch.Generator().manual_seed(0)
    for beta in (1.0, 2.0, 0.0):
        w = draw_omega(10_000, 8.0, beta, generator=g)
        assert float(w.min()) >= 1.0 and float(w.max()) <= 8.0 + 1e-5
    fm = torch.arange(1000) % 2 == 0
    t_min, t_max = draw_interval(fm, 0.5, generator=g)
    assert torch.all(t_min[fm] == 0) and torch.all(t_max[fm] == 1)
    assert float(t_min[~fm].max()) <= 0.5 <= float(t_max[~fm].min())
