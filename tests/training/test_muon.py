"""`training.optimizer=muon` (meanflow.training.muon): pMF's grouping, one step against torch.optim.Muon
and a float64 transcription of optax's Nesterov Adam, the checkpoint round trip, the schedule, the
non-finite guard, exact resume in the loop, and config errors."""

import copy

import pytest
import torch
from torch import nn
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.networks.pmf_dit import PMFDiT
from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint, save_checkpoint
from meanflow.training.ema import EMA
from meanflow.training.muon import NADAM_CONSTANT_MOMENTUM, MuonAdam, muon_groups
from meanflow.training.nonfinite import NonFiniteGuard
from meanflow.training.phases.update import apply_update, build_optimizer
from meanflow.training.presets import resolve_config

D, HIDDEN = 32, 85  # tiny pMF DiT: width 32, SwiGLU hidden int(32 * 8 / 3) = 85


def _tiny_pmf(dtype=torch.float32) -> PMFDiT:
    torch.manual_seed(0)
    net = PMFDiT(input_size=16, in_channels=3, patch_size=4, hidden_size=D, depth=2, num_heads=2,
                 num_classes=10, guidance_cond=True, aux_head_depth=1)
    for p in net.parameters():  # the zero-initialised gates and heads would hide updates
        p.data.normal_(0, 0.1)
    return net.to(dtype)


def _grads(net, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def test_grouping_is_the_official_one():
    """Muon gets exactly the nn.Linear weights, the fused q/k/v and W1;W3 as separate matrices (the
    official Dense kernels); tables, tokens, positions, convolutions, biases, norms and gates go to Adam."""
    net = _tiny_pmf()
    g = muon_groups(net)
    linear = {n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert {n.split("[")[0] for n in g.names["muon"]} == linear
    assert {"blocks.0.attn.qkv.weight[0:32]", "blocks.0.mlp.w13.weight[85:170]"} <= set(g.names["muon"])
    adam = set(g.names["adam"])
    for name in ("class_tokens", "h_tokens", "pos_embed", "y_embedder.table.weight", "x_embedder.weight",
                 "x_proj.weight", "final_linear.bias", "blocks.0.attn_scale", "blocks.0.norm1.weight"):
        assert name in adam, name
    assert not adam & linear
    # every parameter exactly once; the blocks of one weight tile its rows
    assert len(adam) + len(linear) == len(list(net.parameters()))
    shapes = {tuple(m.shape) for m, o in zip(g.matrices, g.owners) if o.shape[0] == 3 * D}
    assert shapes == {(D, D)}
    per_block = [tuple(m.shape) for m, n in zip(g.matrices, g.names["muon"]) if n.startswith("blocks.0.")]
    assert sorted(per_block) == sorted([(D, D)] * 4 + [(HIDDEN, D)] * 2 + [(D, HIDDEN)])
    for m, o, r in zip(g.matrices, g.owners, g.rows):
        assert torch.equal(m, o.detach()[r])
        assert m.untyped_storage().data_ptr() == o.untyped_storage().data_ptr()


def test_two_steps_equal_muon_per_matrix_and_nesterov_adam():
    """Two steps of MuonAdam == torch.optim.Muon on each official matrix taken on its own (a q block as
    a separate parameter) and NAdam with a constant momentum on the rest."""
    net = _tiny_pmf()
    ref = copy.deepcopy(net)
    opt = MuonAdam(net, lr=0.01, momentum=0.9, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    g = muon_groups(ref)
    # the reference: every Muon matrix as its own leaf tensor, copied from the reference net
    mats = [m.detach().clone() for m in g.matrices]
    muon = torch.optim.Muon(mats, lr=0.01, momentum=0.9, nesterov=True, eps=1e-8, weight_decay=0.01)
    adam = torch.optim.NAdam(g.others, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01,
                             decoupled_weight_decay=True, momentum_decay=NADAM_CONSTANT_MOMENTUM)
    for seed in (1, 2):
        _grads(net, seed)
        _grads(ref, seed)
        for m, o, r in zip(mats, g.owners, g.rows):
            m.grad = o.grad[r].clone()
        opt.step()
        muon.step()
        adam.step()
        opt.zero_grad()
    got = muon_groups(net)
    for a, b, name in zip(got.matrices, mats, got.names["muon"]):
        assert torch.equal(a, b), name
    for a, b, name in zip(got.others, g.others, got.names["adam"]):
        assert torch.equal(a, b), name
    assert all(p.grad is None for p in net.parameters())


def _optax_nesterov_adamw(p, grads, lr, b1, b2, eps, wd):
    """optax ``adamw(nesterov=True)`` (scale_by_adam with nesterov, then decoupled decay), transcribed."""
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
        p = p - lr * (m_hat / (torch.sqrt(v / (1 - b2 ** t)) + eps) + wd * p)
    return p


def test_adam_half_is_optax_nesterov_adam_in_float64():
    """The Adam half (NAdam with momentum_decay 1e9) equals optax's adamw(nesterov=True) step by step
    (float64 throughout: NAdam keeps its step count and momentum product in the default dtype)."""
    layer = nn.Embedding(7, 5).double()  # no nn.Linear: all to Adam
    start = layer.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        opt = MuonAdam(layer, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        assert opt.muon is None
        for g in grads:
            layer.weight.grad = g.clone()
            opt.step()
    finally:
        torch.set_default_dtype(default)
    want = _optax_nesterov_adamw(start, grads, 0.01, 0.9, 0.95, 1e-8, 0.1)
    torch.testing.assert_close(layer.weight.detach(), want, rtol=1e-12, atol=1e-14)


def test_checkpoint_round_trip_continues_bit_for_bit(tmp_path):
    """state_dict -> checkpoint file -> load into a fresh optimizer over a copy: the next steps match."""
    net = _tiny_pmf()
    opt = MuonAdam(net, lr=0.01)
    for seed in (1, 2):
        _grads(net, seed)
        opt.step()
    sd = opt.state_dict()
    n_muon = len(opt.groups.matrices)
    assert set(sd["state"]) == set(range(n_muon + len(opt.groups.others)))
    assert set(sd["state"][0]) == {"momentum_buffer"} and "exp_avg" in sd["state"][n_muon]
    path = save_checkpoint(tmp_path / "c.safetensors", model=net.state_dict(), ema={}, optimizer=sd,
                           config={}, state={"step": 2})
    net2 = copy.deepcopy(net)
    opt2 = MuonAdam(net2, lr=0.5)  # the checkpoint's hyper-parameters win
    opt2.load_state_dict(Checkpoint(path).optimizer())
    assert opt2.param_groups[0]["lr"] == 0.01
    for seed in (3, 4):
        for n_, o in ((net, opt), (net2, opt2)):
            _grads(n_, seed)
            o.step()
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="grouping"):
        MuonAdam(nn.Linear(3, 3), lr=0.1).load_state_dict(sd)


def test_the_lr_schedule_reaches_both_halves():
    net = _tiny_pmf()
    opt = MuonAdam(net, lr=0.01)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0] is opt.muon.param_groups[0] and opt.param_groups[1] is opt.adam.param_groups[0]
    for grp in opt.param_groups:  # what the step phase does with lr_at(...)
        grp["lr"] = 0.0
    before = copy.deepcopy(net.state_dict())
    _grads(net, 1)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_nonfinite_step_changes_nothing():
    """A NaN gradient: the guard's skip flag keeps weights, optimizer state and EMA as they were (the
    host path of optimizer_step: no fused kernel)."""
    net = _tiny_pmf()
    tc = resolve_config("toy-2d", overrides=["training.optimizer=muon"]).training
    opt = build_optimizer(net, tc)
    assert isinstance(opt, MuonAdam) and not any(g.get("fused") for g in opt.param_groups)
    ema = EMA(net, [0.9])
    guard = NonFiniteGuard("skip", 10, torch.device("cpu"))

    def step(seed, bad=False):
        _grads(net, seed)
        if bad:
            next(net.parameters()).grad[0] = float("nan")
        return apply_update(net, opt, 1.0, guard, torch.tensor(1.0), seed, ema, None, None, Progress(0, 10))

    step(1)
    weights, state, shadow = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()),
                              copy.deepcopy(ema.state(0.9)))
    skip, _ = step(2, bad=True)
    assert skip.item() == 1.0
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    after = opt.state_dict()["state"]
    assert all(torch.equal(state["state"][i][k], v) for i, st in after.items() for k, v in st.items())
    assert all(torch.equal(shadow[k], v) for k, v in ema.state(0.9).items())
    assert step(3)[0].item() == 0.0 and not torch.equal(weights["pos_embed"], net.pos_embed)


def test_loop_resume_is_bit_identical(tmp_path):
    cfg = tiny_toy(tmp_path, "training.optimizer=muon", "training.steps=6")
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    (_, a), (cb, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert cb.step == 6 and set(a) == set(b) and any("momentum_buffer" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("override, message", [
    ("training.optimizer=muonn",
     "training.optimizer must be 'adam', 'adamw', 'radam' or 'muon', got 'muonn'"),
    ("training.muon_momentum=1.0", "training.muon_momentum must be in [0, 1), got 1.0"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(UserError) as e:
        resolve_config("toy-2d", overrides=[override])
    assert str(e.value) == message


def test_muon_refuses_fsdp():
    with pytest.raises(UserError, match="optimizer=muon needs whole weight matrices: use training.parallel"):
        resolve_config("toy-2d", overrides=["training.optimizer=muon", "training.parallel=fsdp"])
