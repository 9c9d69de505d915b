"""The suites of the head-to-head (`python -m benchmarks.suite list`).

2-D setup ``mlp128-b256``: preset ``toy-2d`` (Adam lr 1e-3 with 100 warm-up steps, grad clip 1, EMA
0.999, 100,000 training points) with the MLP at width 128, depth 4 (0.19M parameters) and batch 256 (the
preset: width 256, batch 512): an eighth of the preset's FLOPs per step, so that every method x 4 data
sets x 3 seeds fits the 60-minute budget on 2 cores (measured: width 128 at batch 512 took 8 min per
data set and seed, 96 min in all). The ``capacity`` and ``batch`` variants train MeanFlow at the
preset's width and batch.
"""

from __future__ import annotations

from benchmarks.suite.spec import DEFAULT, FRONTIER_ROWS, TOY_ROWS, Suite, Variant

# The run's own end-of-run grid and 2-D report use 1 sampling step (`logging.sample_steps`): the suite
# measures every run itself, and the method's default steps (100-step flow matching, 1000-step Score SDE)
# cost up to half a run's wall time.
TOY_BASE = ("network.kwargs.hidden=128", "network.kwargs.depth=4", "training.batch_size=256",
            "logging.sample_every=1000000", "logging.sample_count=1024", "logging.sample_steps=1")
TOY_SETS = ("checkerboard", "8gaussians", "moons", "spirals")
# MNIST runs checkpoint every 200 steps: a run cut off (a session's end) resumes from its newest checkpoint.
MNIST_BASE = ("data.split=train", "logging.sample_every=1000000", "logging.sample_steps=1",
              "training.checkpoint_every=200")


def _v(group: str, name: str, label: str, *overrides: str, entries=("meanflow",)) -> Variant:
    return Variant(name, tuple(overrides), tuple(entries), label, group)


_K = "method.kwargs."
# MeanFlow with the adaptive weight's power p = 0.5 (the paper's "pseudo-Huber" ablation), the setting
# of the small presets after this suite's evidence: a row of the head-to-head beside the published p = 1.
P05 = _v("weight", "p0.5", "p = 0.5", _K + "norm_p=0.5")
# The same setting on the frontier's methods that have the adaptive weight's power (DMF's loss has none).
P05_FAMILY = _v("weight", "p0.5", "p = 0.5", _K + "norm_p=0.5",
                entries=("meanflow", "meanflow_kim", "alphaflow"))

# MeanFlow Table 1 (ImageNet-256, DiT-B/4, 1-NFE FID) at 2-D scale; the default (ratio 0.25, LN(-0.4, 1)
# sorted, p = 1, tangent (v, 0, 1)) is the head-to-head's MeanFlow row.
ABLATIONS: tuple[Variant, ...] = (
    _v("ratio", "ratio0", "r != t for 0% (flow matching)", _K + "ratio=0.0"),
    _v("ratio", "ratio0.5", "r != t for 50%", _K + "ratio=0.5"),
    _v("ratio", "ratio0.75", "r != t for 75%", _K + "ratio=0.75"),
    _v("ratio", "ratio1", "r != t for 100%", _K + "ratio=1.0"),
    _v("sampler", "uniform", "t, r ~ U(0, 1), sorted", _K + "time_dist=uniform"),
    _v("sampler", "ln-0.2,1.0", "LN(-0.2, 1.0)", _K + "t_mean=-0.2", _K + "r_mean=-0.2"),
    _v("sampler", "ln-0.2,1.2", "LN(-0.2, 1.2)", _K + "t_mean=-0.2", _K + "r_mean=-0.2", _K + "t_std=1.2",
       _K + "r_std=1.2"),
    _v("sampler", "ln-0.4,1.2", "LN(-0.4, 1.2)", _K + "t_std=1.2", _K + "r_std=1.2"),
    _v("sampler", "v1", "official CIFAR-10 v1: t ~ LN(-0.6, 1.6), r ~ LN(-4, 1.6), r = min(t, r)",
       _K + "time_pairing=min", _K + "t_mean=-0.6", _K + "t_std=1.6", _K + "r_mean=-4.0", _K + "r_std=1.6"),
    _v("weight", "p0", "adaptive weight p = 0 (plain L2)", _K + "norm_p=0.0"),
    P05,
    _v("weight", "p1.5", "p = 1.5", _K + "norm_p=1.5"),
    _v("weight", "p2", "p = 2", _K + "norm_p=2.0"),
    _v("tangent", "tangent-v00", "JVP tangent (v, 0, 0)", _K + "tangent=v00"),
    _v("tangent", "tangent-v10", "JVP tangent (v, 1, 0)", _K + "tangent=v10"),
    _v("tangent", "tangent-v11", "JVP tangent (v, 1, 1)", _K + "tangent=v11"),
)
# Not in the paper's table: the recipe and capacity questions of issue 21 (is the 2-D gap recipe,
# budget or capacity?).
RECIPE: tuple[Variant, ...] = (
    _v("capacity", "width256", "MLP width 256 (the preset's; ~3.5x the FLOPs)", "network.kwargs.hidden=256"),
    _v("capacity", "batch512", "batch 512 (the preset's)", "training.batch_size=512"),
    _v("capacity", "preset", "width 256 and batch 512 (the toy-2d preset)", "network.kwargs.hidden=256",
       "training.batch_size=512"),
    _v("capacity", "preset-p0.5", "the toy-2d preset's width and batch with p = 0.5",
       "network.kwargs.hidden=256", "training.batch_size=512", _K + "norm_p=0.5"),
    _v("optimisation", "lr3e-4", "lr 3e-4", "training.lr=0.0003"),
    _v("optimisation", "ema0.99", "EMA 0.99", "training.ema_decays=[0.99]"),
    _v("optimisation", "ema0.9999", "EMA 0.9999", "training.ema_decays=[0.9999]"),
)

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("toy", "toy", "toy-2d", "mlp128-b256", TOY_BASE, TOY_SETS, TOY_ROWS, 2000, (0, 1, 2), 4096,
          "toy.jsonl", "2-D head-to-head: every method x 4 data sets x 3 seeds, 2,000 steps, stages counted",
          variants=(DEFAULT, P05)),
    Suite("frontier", "toy", "toy-2d", "mlp128-b256", TOY_BASE, TOY_SETS, FRONTIER_ROWS, 2000, (0, 1, 2),
          4096, "frontier.jsonl", "the MeanFlow family's frontier (α-Flow, Kim et al., DMF) and its rivals "
          "(sCT, sCD, SoFlow, SplitMeanFlow) beside MeanFlow, iMF and flow matching: 4 data sets x 3 seeds, "
          "2,000 steps", variants=(DEFAULT, P05_FAMILY)),
    Suite("smoke", "toy", "toy-2d", "smoke", (*TOY_BASE, "data.num_points=2000"), ("checkerboard",),
          ("meanflow", "flow_matching"), 50, (0, 1), 256, "smoke.jsonl",
          "CI check of the plumbing: 2 methods x 2 seeds x 50 steps on the checkerboard"),
    Suite("curves", "toy", "toy-2d", "mlp128-b256", TOY_BASE, ("checkerboard", "8gaussians"),
          ("meanflow", "flow_matching", "ict", "shortcut", "imf", "alphaflow", "dmf", "sct", "soflow",
           "splitmeanflow"), 20000, (0, 1, 2), 4096,
          "curves.jsonl",
          "learning curves: sliced W2 against steps up to 20,000, 10 methods x 2 data sets x 3 seeds "
          "(sCD, which starts from its finished teacher, has no curve of its own)",
          points=(500, 1000, 2000, 5000, 10000, 20000), variants=(DEFAULT, P05)),
    Suite("ablations", "toy", "toy-2d", "mlp128-b256", TOY_BASE, ("checkerboard", "8gaussians"),
          ("meanflow",), 2000, (0, 1, 2), 4096, "ablations.jsonl",
          "MeanFlow Table 1 at 2-D scale (ratio, (t, r) sampler, adaptive weight p, JVP tangent), 3 seeds",
          variants=ABLATIONS),
    Suite("recipe", "toy", "toy-2d", "mlp128-b256", TOY_BASE, ("checkerboard", "8gaussians"), ("meanflow",),
          2000, (0, 1, 2), 4096, "recipe.jsonl",
          "MeanFlow's capacity and optimisation settings at 2-D scale (width, lr, EMA), 3 seeds",
          variants=RECIPE),
    Suite("mnist", "mnist", "mnist", "unet16", MNIST_BASE, ("mnist",),
          ("meanflow", "flow_matching", "imf", "ict", "shortcut", "reflow", "distill", "alphaflow", "sct",
           "scd", "soflow", "splitmeanflow", "pmf", "dmf"), 1200,
          (0, 1), 2000,
          "mnist.jsonl", "MNIST head-to-head: FID / KID of 2,000 samples vs the 10,000 test images, 2 seeds",
          variants=(DEFAULT, P05)),
    Suite("mnist-curves", "mnist", "mnist", "unet16", MNIST_BASE, ("mnist",), ("meanflow", "flow_matching"),
          6000, (0, 1), 2000, "mnist-curves.jsonl", "MNIST FID / KID against steps up to 6,000, 2 seeds",
          points=(1000, 2000, 4000, 6000)),
    Suite("mnist-guidance", "mnist", "mnist", "unet16", MNIST_BASE,
          ("mnist",), ("meanflow",), 1200, (0, 1, 2), 2000, "mnist-guidance.jsonl",
          "MeanFlow's trained-in guidance scale w on MNIST (Table 1f), 3 seeds",
          variants=tuple(_v("guidance", f"w{w:g}", f"w = {w:g}", _K + f"omega={w}")
                         for w in (1.5, 2.0, 3.0))),
)}
