"""Tiny configs shared by the training tests (a uniquely named module: conftest.py files of several
test folders would shadow each other if imported by name)."""

from meanflow.training.checkpoint import Checkpoint
from meanflow.training.presets import resolve_config


def tiny_toy(tmp_path, *extra):
    """A few-second 2-D run: small MLP, no tensorboard, no progress bar, one thread."""
    return resolve_config("toy-2d", overrides=[
        f"logging.out_dir={tmp_path / 'runs'}", "logging.progress=false", "logging.tensorboard=false",
        "logging.log_every=2", "logging.sample_every=1000", "logging.sample_count=64",
        "network.kwargs={hidden: 32, depth: 2}", "data.num_points=512", "training.batch_size=32",
        "training.steps=6", "training.warmup_steps=2", "training.checkpoint_every=1000",
        "training.ema_decays=[0.9, 0.99]", *extra])


def checkpoint_tensors(run_dir):
    """(Checkpoint, {name: tensor}) of a run's newest checkpoint: model, every EMA, optimizer state."""
    c = Checkpoint(run_dir)
    out = {f"model/{k}": v for k, v in c.model().items()}
    for d in c.ema_decays:
        out.update({f"ema/{d}/{k}": v for k, v in c.ema(d).items()})
    for i, st in c.optimizer()["state"].items():
        out.update({f"optim/{i}/{k}": v for k, v in st.items()})
    return c, out
