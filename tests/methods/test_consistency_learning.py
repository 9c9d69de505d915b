"""Short CPU training runs: CT, iCT and CD learn a one-step map of the checkerboard.

Set-up as in test_learning_toy2d.py: TinyNet 3 x 128, Adam 2e-3, batch 256, 1500 steps, seeds fixed,
a real target network (TargetNetwork, updated after every optimizer step with the method's decay),
2000 samples against 2000 held-out points. The toy data has per-coordinate std ~1, so sigma_data = 1
(the images' 0.5 would under-scale c_skip / c_out). CT uses s1 = 20 instead of 150: with 1500 steps
the paper's curriculum reaches N ~ 150 with target decay 0.9986, too slow to follow in so short a run
(measured 0.92 one-step). iCT runs its paper defaults (K' = 187: N doubles from 11 to 1281). CD
distils a flow-matching TinyNet teacher trained the same way (which is also the one-step baseline)
with its reference defaults (N = 40, mu = 0.95, Heun). Measured on this machine (torch 2.13 CPU,
one thread; CPU time per test ~15-30 s, the teacher ~10 s once per module):

    sample                        sliced W2
    CT 1 step / 2 steps           0.229 / 0.202
    iCT 1 step / 2 steps          0.165 / 0.138
    CD 1 step / 2 steps           0.173 / 0.160
    flow matching 1 step          0.867
    flow matching 100 steps       0.097 (the CD teacher)

Thresholds leave margin for platform-level numeric differences but fail if a method degrades to
flow-matching-like one-step quality (e.g. a wrong target level, noise or boundary condition).
"""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import sliced_wasserstein
from meanflow.methods.base import Progress
from meanflow.methods.consistency_distillation import ConsistencyDistillation
from meanflow.methods.consistency_training import ConsistencyTraining
from meanflow.methods.flow_matching import FlowMatching
from meanflow.methods.improved_ct import ImprovedConsistencyTraining
from meanflow.training.target import TargetNetwork

STEPS, BATCH, LR = 1500, 256, 2e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible numbers, and polite on a shared machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    return toy2d.sample("checkerboard", 50000, seed=0)


@pytest.fixture(scope="module")
def held():
    return toy2d.sample("checkerboard", 2000, seed=1)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))


def _train(method, data, teacher=None):
    """The training loop's step in miniature: loss with the declared context, Adam, target update."""
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    needs = getattr(method, "needs", frozenset())
    tn = TargetNetwork(net) if "target" in needs else None
    g = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        x = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        target = None if tn is None else tn.net
        have = {"progress": Progress(step, STEPS), "target": target, "teacher": teacher}
        out = method.loss(net, x, **{k: have[k] for k in needs})
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if tn is not None:
            tn.update(net, method.target_decay(Progress(step, STEPS)))
    return net


@pytest.fixture(scope="module")
def flow_matching(data, noise, held):
    """Flow matching trained the same way: the CD teacher and the one-step baseline (~0.87)."""
    fm = FlowMatching(time_dist="uniform")
    net = _train(fm, data).eval().requires_grad_(False)
    sw1 = sliced_wasserstein(fm.sample(net, noise, steps=1), held)
    return net, sw1


def _sliced(method, net, noise, held):
    g = torch.Generator().manual_seed(3)
    return {k: sliced_wasserstein(method.sample(net, noise, steps=k, generator=g), held) for k in (1, 2)}


@pytest.mark.slow
def test_consistency_training_learns_a_one_step_map(data, held, noise, flow_matching):
    method = ConsistencyTraining(sigma_data=1.0, s1=20)
    sw = _sliced(method, _train(method, data), noise, held)
    fm1 = flow_matching[1]
    msg = f"sliced W2 {sw}, flow matching 1 step {fm1}"
    assert sw[1] < 0.32, msg                 # measured 0.229
    assert sw[2] < 0.30, msg                 # measured 0.202
    assert sw[1] < 0.4 * fm1, msg            # measured 0.26x


@pytest.mark.slow
def test_improved_consistency_training_learns_a_one_step_map(data, held, noise, flow_matching):
    method = ImprovedConsistencyTraining(sigma_data=1.0)
    sw = _sliced(method, _train(method, data), noise, held)
    fm1 = flow_matching[1]
    msg = f"sliced W2 {sw}, flow matching 1 step {fm1}"
    assert sw[1] < 0.25, msg                 # measured 0.165
    assert sw[2] < 0.22, msg                 # measured 0.138
    assert sw[1] < 0.3 * fm1, msg            # measured 0.19x


@pytest.mark.slow
def test_consistency_distillation_learns_a_one_step_map(data, held, noise, flow_matching):
    teacher, fm1 = flow_matching
    method = ConsistencyDistillation(sigma_data=1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sw = _sliced(method, _train(method, data, teacher=teacher), noise, held)
    msg = f"sliced W2 {sw}, flow matching 1 step {fm1}"
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert sw[1] < 0.26, msg                 # measured 0.173
    assert sw[2] < 0.24, msg                 # measured 0.160
    assert sw[1] < 0.3 * fm1, msg            # measured 0.20x
