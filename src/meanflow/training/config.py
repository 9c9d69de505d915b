"""Typed configuration of a training run: five sections, validated on construction.

A `Config` is plain data. It is built from a nested dict (defaults <- preset <- YAML file <- `--set`
overrides, see `resolve_config`), validated in `__post_init__` (raising `UserError`), printed, and
saved beside the run as `config.yaml` / `config.json` so that the run can be reproduced and resumed.
The dataclass defaults are the default job: one-step MeanFlow on scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meanflow.errors import UserError

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
# The 2-D toy distributions of `meanflow.data.toy2d` (design.md); kept here so that validation does
# not have to import the data package.
TOY_NAMES = ("checkerboard", "8gaussians", "moons", "spirals")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


@dataclass
class DataConfig:
    name: str = "digits"
    """Dataset: 'digits', 'mnist', 'fashion-mnist', 'cifar10', 'latents', or a 2-D toy distribution
    ('checkerboard', '8gaussians', 'moons', 'spirals')."""
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

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "data.name must be a non-empty string")
        _check(self.split in ("train", "test", "all"),
               f"data.split must be 'train', 'test' or 'all', got {self.split!r}")
        _check(self.num_points > 0, f"data.num_points must be > 0, got {self.num_points}")
        _check(0.0 <= self.augment_p <= 1.0, f"data.augment_p must be in [0, 1], got {self.augment_p}")

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
    """Training objective / sampler: 'meanflow' or 'flow_matching'."""
    ratio: float = 0.25
    """Fraction of the batch with r != t (0 = plain flow matching)."""
    time_dist: str = "logit_normal"
    """Distribution of t and r: 'logit_normal' or 'uniform'."""
    t_mean: float = -0.4
    """Logit-normal mean of t."""
    t_std: float = 1.0
    """Logit-normal std of t."""
    r_mean: float = -0.4
    """Logit-normal mean of r (differs from t only in the CIFAR-10 'v1' sampler)."""
    r_std: float = 1.0
    """Logit-normal std of r."""
    time_pairing: str = "sort"
    """How (t, r) are ordered: 'sort' (paper) or 'min' (official CIFAR-10 code 'v1': r = min(t, r))."""
    norm_p: float = 1.0
    """Adaptive loss weight power p: loss / stopgrad((err + c)^p); 0 = plain squared error."""
    norm_eps: float = 0.01
    """Adaptive loss weight constant c."""
    omega: float = 1.0
    """Guidance scale folded into training (1 = none)."""
    kappa: float = 0.0
    """Mixing factor of the conditional velocity in the guided target."""
    t_start: float = 0.0
    """Start of the guidance interval in t."""
    t_end: float = 1.0
    """End of the guidance interval in t."""
    class_dropout: float = 0.0
    """Probability of replacing the class label by the null class during training."""
    solver: str = "euler"
    """ODE solver of flow matching sampling: 'euler' or 'heun' (flow_matching only)."""

    def __post_init__(self) -> None:
        _check(self.name in ("meanflow", "flow_matching"),
               f"method.name must be 'meanflow' or 'flow_matching', got {self.name!r}")
        _check(0.0 <= self.ratio <= 1.0, f"method.ratio must be in [0, 1], got {self.ratio}")
        _check(self.time_dist in ("logit_normal", "uniform"),
               f"method.time_dist must be 'logit_normal' or 'uniform', got {self.time_dist!r}")
        _check(self.t_std > 0 and self.r_std > 0, "method.t_std and method.r_std must be > 0")
        _check(self.time_pairing in ("sort", "min"),
               f"method.time_pairing must be 'sort' or 'min', got {self.time_pairing!r}")
        _check(self.norm_p >= 0, f"method.norm_p must be >= 0, got {self.norm_p}")
        _check(self.norm_eps > 0, f"method.norm_eps must be > 0, got {self.norm_eps}")
        _check(0.0 <= self.kappa < 1.0, f"method.kappa must be in [0, 1), got {self.kappa}")
        _check(0.0 <= self.t_start <= 1.0 and 0.0 <= self.t_end <= 1.0,
               f"method.t_start and method.t_end must be in [0, 1], got {self.t_start}, {self.t_end}")
        _check(self.t_start <= self.t_end,
               f"method.t_start ({self.t_start}) must be <= method.t_end ({self.t_end})")
        _check(0.0 <= self.class_dropout <= 1.0,
               f"method.class_dropout must be in [0, 1], got {self.class_dropout}")
        _check(self.solver in ("euler", "heun"),
               f"method.solver must be 'euler' or 'heun', got {self.solver!r}")

    @property
    def uses_guidance(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    def method_kwargs(self, num_classes: int) -> dict[str, Any]:
        """Keyword arguments of `build_method(self.name, ...)` (design.md method dataclasses)."""
        if self.name == "flow_matching":
            return {"time_dist": self.time_dist, "t_mean": self.t_mean, "t_std": self.t_std,
                    "solver": self.solver}
        names = ("ratio", "time_dist", "t_mean", "t_std", "r_mean", "r_std", "time_pairing", "norm_p",
                 "norm_eps", "omega", "kappa", "t_start", "t_end", "class_dropout")
        return {**{k: getattr(self, k) for k in names}, "num_classes": num_classes}


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
    """'adam' or 'adamw'."""
    lr: float = 1e-3
    """Peak learning rate (constant after warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW)."""
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
    the paper presets keep the constant decay."""
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
        _check(self.optimizer in ("adam", "adamw"), f"training.optimizer must be 'adam' or 'adamw', "
               f"got {self.optimizer!r}")
        _check(self.lr > 0, f"training.lr must be > 0, got {self.lr}")
        _check(all(0.0 <= b < 1.0 for b in self.betas), f"training.betas must be in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"training.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"training.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.warmup_epochs is None or self.warmup_epochs >= 0, "training.warmup_epochs must be >= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "training.grad_clip must be > 0 (or null)")
        _check(all(0.0 < d < 1.0 for d in self.ema_decays),
               f"training.ema_decays must be in (0, 1), got {self.ema_decays}")
        _check(len(set(self.ema_decays)) == len(self.ema_decays), "training.ema_decays has duplicates")
        _check(self.device in ("auto", "cpu", "cuda"), f"training.device must be auto/cpu/cuda, "
               f"got {self.device!r}")
        _check(self.precision in ("auto", "fp32", "bf16"), f"training.precision must be auto/fp32/bf16, "
               f"got {self.precision!r}")
        _check(self.num_threads >= 0, "training.num_threads must be >= 0")
        _check(self.checkpoint_every > 0, "training.checkpoint_every must be > 0")
        _check(self.keep_last > 0, "training.keep_last must be > 0")
        _check(self.replica_check_every > 0, "training.replica_check_every must be > 0")
        _check(self.on_nonfinite in ("stop", "skip"), f"training.on_nonfinite must be 'stop' or 'skip', "
               f"got {self.on_nonfinite!r}")
        _check(self.max_nonfinite_skips >= 0, "training.max_nonfinite_skips must be >= 0")

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
class LoggingConfig:
    out_dir: str = "runs"
    """Parent folder of the numbered run folders (runs/00000-<desc>/)."""
    log_every: int = 50
    """Write scalars (JSONL, TensorBoard) every this many steps."""
    sample_every: int = 1000
    """Write a grid of samples every this many steps (and at the end)."""
    sample_count: int = 100
    """Samples in each grid (a square number gives a square grid)."""
    sample_steps: int = 1
    """Sampling steps of the grids (1 = one-step generation)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars when tensorboard is installed."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""

    def __post_init__(self) -> None:
        _check(self.log_every > 0, "logging.log_every must be > 0")
        _check(self.sample_every > 0, "logging.sample_every must be > 0")
        _check(self.sample_count > 0, "logging.sample_count must be > 0")
        _check(self.sample_steps > 0, "logging.sample_steps must be > 0")


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
            _check(not self.data.use_labels, f"the 2-D toy dataset {self.data.name!r} has no labels")
            _check(self.data.augment_p == 0.0, "data.augment_p applies to images only")
        elif self.data.name in IMAGE_SHAPES and self.data.use_labels:
            _check(self.data.name in LABELLED, f"dataset {self.data.name!r} has no labels")
        if self.method.name == "meanflow" and (self.method.uses_guidance or self.method.class_dropout > 0):
            _check(self.data.use_labels, "guidance (method.omega != 1, method.kappa > 0 or "
                   "method.class_dropout > 0) needs class labels: set data.use_labels=true")

    def describe(self) -> str:
        """Short run-folder description, e.g. 'digits-meanflow'."""
        return f"{self.preset or self.data.name}-{self.method.name}".replace("/", "-")


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples where needed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise errors[0] if errors else UserError(f"{key}: got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - every annotation used above is handled
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise UserError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise UserError(f"unknown config key {unknown[0]!r}{where} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a `Config` from a nested dict; missing keys take their defaults."""
    return _from_dict(Config, data, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain-Python dict (tuples as lists) that `config_from_dict` turns back into `cfg`."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (keys starting with `ignore` skipped)."""
    out: list[str] = []

    def walk(x: Any, y: Any, key: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{key}.{k}" if key else k)
        elif x != y and not any(key == p or key.startswith(p + ".") for p in ignore):
            out.append(key)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


# ------------------------------------------------------------------------------------------------
# building a config from layers


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts. `kwargs` mappings are replaced whole: the keyword arguments of one
    network make no sense merged into another's."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=1e-4' -> (['training', 'lr'], 0.0001). The value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE (e.g. training.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise UserError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value {raw!r}") from None
    # YAML 1.1 reads '1e-4' as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if raw.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return path, value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if nxt is None and i >= 1:  # free-form mappings such as network.kwargs
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"unknown config key {'.'.join(path)!r}")
        node = nxt
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict, as a one-line `UserError` on any problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot parse config file {p}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping at the top level")
    return data
