"""Typed configuration of a training run: five sections, validated on construction.

A `Config` is plain data, validated in `__post_init__` (raising `UserError`). It is built from a
nested dict (defaults <- preset <- YAML file <- `--set` overrides; see `config_io` and
`resolve_config`), printed, and saved beside the run as `config.yaml` / `config.json` so that the run
can be reproduced and resumed. The dataclass defaults are the default job: one-step MeanFlow on
scikit-learn's 8x8 digits. The method section is `{name, kwargs}` like the network's: the method's
dataclass declares its hyper-parameters, and the config is validated by building it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from meanflow.errors import UserError
from meanflow.errors import require as _check
from meanflow.limits import MAX_SEED
from meanflow.training.logging_config import LoggingConfig

# Shapes of the datasets the project ships loaders for, used to validate a config before any data is
# read (e.g. image size divisible by the DiT patch size). Datasets not listed are checked at run time.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "latents": (4, 32, 32),
}
LABELLED = {"digits", "mnist", "fashion-mnist", "cifar10", "latents"}
# Classes of the labelled image datasets ('latents' has network.kwargs.num_classes, default 1000).
CLASS_COUNTS = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}
# The 2-D toy distributions of `meanflow.data.toy2d` (design.md); kept here so that validation does
# not have to import the data package.
TOY_NAMES = ("checkerboard", "8gaussians", "moons", "spirals")


@dataclass
class DataConfig:
    name: str = "digits"
    """Dataset: 'digits', 'mnist', 'fashion-mnist', 'cifar10', 'latents', 'latent_cache' (the VAE posteriors
    of `meanflow encode`, data_dir = the cache; the ImageNet presets), 'imagenet_pixels' (ImageNet class
    folders, ADM-cropped to options.resolution as drawn; the pMF presets), a 2-D toy distribution
    ('checkerboard', '8gaussians', 'moons', 'spirals'), or 'pairs' (the coupled (noise, sample) pairs
    of `meanflow reflow-pairs`, for the reflow and distill methods; data_dir is their folder)."""
    data_dir: str | None = None
    """Folder (or file, for 'latents') holding the dataset (None: $MEANFLOW_CACHE/<name> or
    ~/.cache/meanflow/<name>)."""
    download: bool = False
    """Download a missing dataset (MNIST, Fashion-MNIST, CIFAR-10) into the cache, checksum-verified."""
    split: str = "all"
    """Split to train on: 'train', 'test' or 'all' (both; digits then has its 1,797 images)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra options of `meanflow.data.build_dataset` (e.g. {pad_to: 32} for (Fashion-)MNIST)."""
    use_labels: bool = False
    """Train class-conditionally on the dataset's labels (enables `meanflow sample --class`)."""
    num_points: int = 100_000
    """Size of the training set drawn once from a 2-D toy distribution (toy datasets only)."""
    augment_p: float = 0.0
    """EDM augmentation probability (paper CIFAR-10: 0.12); recorded for presets, 0 = off."""
    augment: str = "edm"
    """Augmentation pipe at `augment_p`: 'edm' (EDM's CIFAR-10 pipe, 9 labels) or 'meanflow' (the
    official MeanFlow pipe: no y-flip, no rotation, 6 labels); see meanflow.training.augment_pipes."""

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "data.name must be a non-empty string")
        _check(self.split in ("train", "test", "all"),
               f"data.split must be 'train', 'test' or 'all', got {self.split!r}")
        _check(self.num_points > 0, f"data.num_points must be > 0, got {self.num_points}")
        _check(0.0 <= self.augment_p <= 1.0, f"data.augment_p must be in [0, 1], got {self.augment_p}")
        _check(self.augment in ("edm", "meanflow"),
               f"data.augment must be 'edm' or 'meanflow', got {self.augment!r}")

    @property
    def is_toy(self) -> bool:
        return self.name in TOY_NAMES


@dataclass
class NetworkConfig:
    name: str = "mlp"
    """Registry name passed to `meanflow.networks.build_network` ('unet', 'dit-b/2', 'mlp', ...)."""
    kwargs: dict[str, Any] = field(default_factory=lambda: {"hidden": 512, "depth": 4})
    """Keyword arguments of the factory. Input size, channels and class count are filled in from the
    dataset when not given. A preset, YAML file or `--set network.kwargs=...` replaces it whole."""

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "network.name must be a non-empty string")
        _check(isinstance(self.kwargs, dict), "network.kwargs must be a mapping")

    def patch_size(self) -> int | None:
        """Patch size of a DiT ('dit-b/4' -> 4, or kwargs['patch_size']); None for other networks."""
        if not self.name.startswith("dit"):
            return None
        if "patch_size" in self.kwargs:
            return int(self.kwargs["patch_size"])
        if "/" in self.name:
            try:
                return int(self.name.rsplit("/", 1)[1])
            except ValueError:
                raise UserError(f"cannot read the patch size from network name {self.name!r}") from None
        return None


@dataclass
class MethodConfig:
    name: str = "meanflow"
    """Registry name passed to `meanflow.methods.build_method` ('meanflow', 'flow_matching', ...;
    `meanflow methods` lists them with their hyper-parameters)."""
    kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_METHOD_KWARGS))
    """Hyper-parameters: the fields of the method's dataclass, the only place they are declared.
    `num_classes` is filled in from the data unless given. Once the `Config` is validated this holds
    every field (defaults included), so the saved config lists them all."""

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "method.name must be a non-empty string")
        _check(isinstance(self.kwargs, dict), "method.kwargs must be a mapping")

    def build(self, num_classes: int):
        """The method object: `build_method(name, **kwargs)`, with `num_classes` filled in when the
        method takes it and `kwargs` does not set it. Errors are `UserError`s naming `method.*`."""
        from meanflow.methods.registry import METHODS, build_method

        cls = METHODS.get(self.name)
        kw = {k: _as_field_type(cls, k, v) for k, v in self.kwargs.items()}
        if cls is not None and "num_classes" in _field_names(cls) and "num_classes" not in kw:
            kw["num_classes"] = num_classes
        try:
            return build_method(self.name, **kw)
        except UserError as e:
            raise UserError(f"method.{'kwargs' if cls is not None else 'name'}: {e}") from None
        except (TypeError, ValueError) as e:  # a value of the wrong type met in __post_init__
            raise UserError(f"method.kwargs: bad options for method {self.name!r}: {e}") from None

    def completed(self, method) -> dict[str, Any]:
        """`kwargs` with every init field of the built `method` (tuples as lists), `num_classes` only
        when `kwargs` sets it: what the saved config records."""
        if not dataclasses.is_dataclass(method):
            return dict(self.kwargs)
        out = {f.name: _plain(getattr(method, f.name)) for f in dataclasses.fields(method) if f.init}
        if "num_classes" not in self.kwargs:
            out.pop("num_classes", None)
        return out


# The default job's hyper-parameters (MeanFlow's own defaults, spelled out as the default config).
DEFAULT_METHOD_KWARGS: dict[str, Any] = {
    "ratio": 0.25, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0, "r_mean": -0.4, "r_std": 1.0,
    "time_pairing": "sort", "norm_p": 1.0, "norm_eps": 0.01, "omega": 1.0, "kappa": 0.0, "t_start": 0.0,
    "t_end": 1.0, "class_dropout": 0.0,
}


def _field_names(cls: type) -> list[str]:
    """Constructor arguments of a method class: its init fields (dataclass) or signature."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    return list(inspect.signature(cls).parameters)


def _as_field_type(cls: type | None, key: str, value: Any) -> Any:
    """A list for a field whose default is a tuple becomes a tuple (YAML and JSON have no tuples)."""
    if cls is None or not dataclasses.is_dataclass(cls) or not isinstance(value, list):
        return value
    f = next((f for f in dataclasses.fields(cls) if f.name == key), None)
    return tuple(value) if f is not None and isinstance(f.default, tuple) else value


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that the value survives YAML / JSON unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class TrainingConfig:
    batch_size: int = 128
    """Global batch size: summed over ranks and gradient-accumulation rounds."""
    grad_accum: int = 1
    """Gradient-accumulation rounds per optimizer step."""
    steps: int | None = 2500
    """Optimizer steps to train for (exactly one of steps / epochs is set)."""
    epochs: float | None = None
    """Training length in passes over the dataset (converted to steps at run time)."""
    optimizer: str = "adam"
    """'adam', 'adamw', 'radam' (RAdam, as FastGen's sCT and SoFlow's CIFAR-10 configs) or 'muon' (pMF:
    Muon for the nn.Linear weight matrices, Nesterov Adam with `betas` for the rest; see
    meanflow.training.muon)."""
    lr: float = 1e-3
    """Peak learning rate (constant after warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas (with 'muon': those of its Adam half)."""
    muon_momentum: float = 0.95
    """'muon' only: Muon's (Nesterov) momentum, optax's `beta` (0.95)."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW)."""
    eps: float = 1e-8
    """The optimizer's epsilon (FastGen's ImageNet-64 sCD: 1e-11)."""
    lr_decay_steps: int | None = None
    """Inverse square-root decay: the learning rate times ``sqrt(lr_decay_steps / step)`` once ``step >
    lr_decay_steps`` (EDM2; FastGen's ImageNet-64 sCD: 35,000); None: constant after warmup."""
    warmup_steps: int = 200
    """Linear learning-rate warmup length in steps (ignored when warmup_epochs is set)."""
    warmup_epochs: float | None = None
    """Linear warmup length in epochs (the paper's CIFAR-10 setting: 200)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    ema_decays: list[float] = field(default_factory=lambda: [0.999])
    """EMA decays kept at once; the first one is used for the periodic sample grids."""
    ema_warmup: bool = True
    """Ramp each EMA decay up as min(decay, (1 + n) / (10 + n)) over the first updates (short runs);
    the paper presets keep the constant decay. Applies to `ema_decays` only."""
    ema_halflife_kimg: list[float] = field(default_factory=list)
    """EMAs kept beside `ema_decays`, each by its half-life in thousands of training images (EDM, pMF:
    [500, 1000, 2000]): after update n, decay 0.5 ** (batch_size / T_n), T_n = 1000 * halflife (see
    `ema_rampup`). Named '<halflife>kimg' (e.g. '500kimg') in checkpoints and `--ema`."""
    ema_rampup: float | None = 0.05
    """Ramp of the half-lives: T_n = min(1000 * halflife, n * batch_size * ema_rampup) (0.05); None: none."""
    seed: int = 0
    """Seed of everything random (model init, data order, noise); a CPU run is repeatable."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'. The method keeps JVP/loss fp32."""
    num_threads: int = 1
    """CPU threads of torch (0: torch's default). The small CPU jobs use 1: on a shared machine more
    threads than free cores slow a step down several times; the GPU presets use 0."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_last: int = 2
    """Number of most recent checkpoints kept."""
    replica_check_every: int = 100
    """Distributed only: every this many steps check that all replicas hold identical weights."""
    on_nonfinite: str = "stop"
    """A step whose loss or gradients are NaN/inf never reaches the weights, the EMAs or a checkpoint.
    'stop': end the run naming the step (exit status 3; the last checkpoint is the last good state);
    'skip': drop that step and go on (see max_nonfinite_skips)."""
    max_nonfinite_skips: int = 10
    """With on_nonfinite='skip': stop once more than this many consecutive steps were skipped."""
    teacher: str | None = None
    """Run folder or checkpoint of the frozen teacher network, for methods that need one (e.g.
    distillation); the network is built from that run's own config."""
    teacher_ema: float | str | None = None
    """Which weights of the teacher: None (its first EMA), a decay such as 0.9999, or 'raw'."""
    init_from: str | None = None
    """Run folder or checkpoint whose weights a new run starts from (any method from any other run of
    the same network, e.g. MeanFlow fine-tuned from a flow-matching run; a flow model was trained at
    h = 0). Ignored when resuming: the checkpoint's weights win."""
    init_ema: float | str | None = None
    """Which weights of `init_from`: None (its first EMA), a decay such as 0.9999, or 'raw'."""
    parallel: str = "ddp"
    """Under torchrun: 'ddp' (every rank holds the whole model, gradients all-reduced) or 'fsdp' (FSDP2
    `fully_shard`: parameters, gradients, Adam and EMA state sharded over the ranks; each DiT block is
    a unit, then the root). Checkpoints hold full tensors either way and load under both."""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"training.batch_size must be > 0, got {self.batch_size}")
        _check(self.grad_accum > 0, f"training.grad_accum must be > 0, got {self.grad_accum}")
        _check(self.batch_size % self.grad_accum == 0,
               f"training.batch_size ({self.batch_size}) must be divisible by training.grad_accum "
               f"({self.grad_accum})")
        _check((self.steps is None) != (self.epochs is None),
               "set exactly one of training.steps and training.epochs")
        _check(self.steps is None or self.steps > 0, f"training.steps must be > 0, got {self.steps}")
        _check(self.epochs is None or self.epochs > 0, f"training.epochs must be > 0, got {self.epochs}")
        _check(self.optimizer in ("adam", "adamw", "radam", "muon"), "training.optimizer must be 'adam', "
               f"'adamw', 'radam' or 'muon', got {self.optimizer!r}")
        _check(0.0 <= self.muon_momentum < 1.0,
               f"training.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _check(not (self.optimizer == "muon" and self.parallel == "fsdp"),
               "training.optimizer=muon needs whole weight matrices: use training.parallel=ddp, not fsdp")
        _check(self.eps > 0, f"training.eps must be > 0, got {self.eps}")
        _check(self.lr_decay_steps is None or self.lr_decay_steps > 0,
               f"training.lr_decay_steps must be > 0 (or null), got {self.lr_decay_steps}")
        _check(self.lr > 0, f"training.lr must be > 0, got {self.lr}")
        _check(all(0.0 <= b < 1.0 for b in self.betas), f"training.betas must be in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"training.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"training.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.warmup_epochs is None or self.warmup_epochs >= 0, "training.warmup_epochs must be >= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "training.grad_clip must be > 0 (or null)")
        _check(all(0.0 < d < 1.0 for d in self.ema_decays),
               f"training.ema_decays must be in (0, 1), got {self.ema_decays}")
        _check(len(set(self.ema_decays)) == len(self.ema_decays), "training.ema_decays has duplicates")
        _check(all(0.0 < h < math.inf for h in self.ema_halflife_kimg),
               f"training.ema_halflife_kimg must be finite and > 0, got {self.ema_halflife_kimg}")
        _check(len(set(self.ema_halflife_kimg)) == len(self.ema_halflife_kimg),
               "training.ema_halflife_kimg has duplicates")
        _check(self.ema_rampup is None or 0.0 < self.ema_rampup < math.inf,
               f"training.ema_rampup must be > 0 (or null), got {self.ema_rampup}")
        _check(self.device in ("auto", "cpu", "cuda"), f"training.device must be auto/cpu/cuda, "
               f"got {self.device!r}")
        _check(self.precision in ("auto", "fp32", "bf16"), f"training.precision must be auto/fp32/bf16, "
               f"got {self.precision!r}")
        _check(self.num_threads >= 0, "training.num_threads must be >= 0")
        _check(0 <= self.seed <= MAX_SEED, f"training.seed must be in [0, 2^64 - 1], got {self.seed}")
        _check(self.checkpoint_every > 0, "training.checkpoint_every must be > 0")
        _check(self.keep_last > 0, "training.keep_last must be > 0")
        _check(self.replica_check_every > 0, "training.replica_check_every must be > 0")
        _check(self.on_nonfinite in ("stop", "skip"), f"training.on_nonfinite must be 'stop' or 'skip', "
               f"got {self.on_nonfinite!r}")
        _check(self.max_nonfinite_skips >= 0, "training.max_nonfinite_skips must be >= 0")
        _check(self.parallel in ("ddp", "fsdp"),
               f"training.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")

    @property
    def ema_keys(self) -> list[float | str]:
        """The EMAs by key: the decays, then the half-lives by name ('500kimg'); the first is the one
        sample grids and `--ema`'s default use."""
        from meanflow.training.ema import halflife_name

        return [float(d) for d in self.ema_decays] + [halflife_name(h) for h in self.ema_halflife_kimg]

    def total_steps(self, dataset_size: int) -> int:
        """Optimizer steps of the whole run: `steps`, or ceil(epochs * N / batch_size)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * dataset_size / self.batch_size))

    def warmup(self, dataset_size: int) -> int:
        """Warmup length in optimizer steps."""
        if self.warmup_epochs is not None:
            return round(self.warmup_epochs * dataset_size / self.batch_size)
        return self.warmup_steps


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Backbone."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Objective and sampler."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Outputs."""
    preset: str = "digits"
    """Name of the preset the config started from (informational; used in the run folder name)."""

    def __post_init__(self) -> None:
        shape = IMAGE_SHAPES.get(self.data.name)
        if shape is not None and self.data.options.get("pad_to") is not None:
            pad = int(self.data.options["pad_to"])
            shape = (shape[0], pad, pad)
        patch = self.network.patch_size()
        if shape is not None and patch is not None:
            size = int(self.network.kwargs.get("input_size", shape[1]))
            _check(size % patch == 0,
                   f"image size {size} of {self.data.name!r} is not divisible by the patch size {patch} "
                   f"of {self.network.name!r}")
        if self.data.is_toy:
            _check(not self.data.use_labels,
                   f"the 2-D toy dataset {self.data.name!r} has no labels: set data.use_labels=false (the "
                   "default digits job is class-conditional; --preset toy-2d is not)")
            _check(self.data.augment_p == 0.0, "data.augment_p applies to images only")
        elif self.data.name in IMAGE_SHAPES and self.data.use_labels:
            _check(self.data.name in LABELLED, f"dataset {self.data.name!r} has no labels")
        self._check_method()

    def expected_classes(self) -> int:
        """Class count the method is validated with before any data is read: 0 unless
        `data.use_labels`; else the known count of a labelled dataset (latents: the network's
        `num_classes`, default 1000); other datasets: the network's `num_classes` or 1 (checked again
        with the real count once the data is loaded)."""
        if not self.data.use_labels:
            return 0
        if self.data.name in CLASS_COUNTS:
            return CLASS_COUNTS[self.data.name]
        count = self.network.kwargs.get("num_classes",
                                        1000 if self.data.name in ("latents", "latent_cache") else 1)
        _check(isinstance(count, int) and not isinstance(count, bool),
               f"network.kwargs.num_classes must be an integer, got {count!r}")
        return count

    def _check_method(self) -> None:
        """Validate the method section by building the method, then complete its kwargs."""
        classes = self.expected_classes()
        try:
            method = self.method.build(classes)
        except UserError as e:
            if classes > 0 or "num_classes" in self.method.kwargs:
                raise
            try:  # would labels fix it? (e.g. guidance or class dropout without labels)
                self.method.build(1)
            except UserError:
                raise e from None
            raise UserError(f"{e}, i.e. class labels: set data.use_labels=true, or method.kwargs.omega=1 "
                            "and method.kwargs.class_dropout=0 for an unconditional run") from None
        self.method = dataclasses.replace(self.method, kwargs=self.method.completed(method))

    def describe(self) -> str:
        """Short run-folder description, e.g. 'digits-meanflow'."""
        return f"{self.preset or self.data.name}-{self.method.name}".replace("/", "-")
