"""The fault-injection runs' settings: the small 2-D training run, timing and the kill modes."""

import re

CKPT_EVERY = 10
LOG_EVERY = 2  # divides CKPT_EVERY: records after a resume average the same steps as the reference's
SAMPLE_N = 256
TIMEOUT_S = 150.0  # per subprocess
POLL_S = 0.002
CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")
RUN_RE = re.compile(r"^\d{5,}-")
PHASES = ("before 1st ckpt", "training", "ckpt write", "final phase", "after completion")
CHECKS = ("final", "weights", "log", "tmp-ckpt", "tmp-run", "outputs")
# Modes of the first kill, cycled over the trials (their moments are drawn from the RNG).
FIRST_MODES = ("mid-step", "ckpt-write", "uniform", "final", "ckpt-write", "early", "uniform", "exit")
SECOND_MODES = ("mid-step", "ckpt-write", "uniform")
SAMPLE_MODES = ("uniform", "temp", "final-name")


def train_settings(steps: int) -> list[str]:
    """`--set` overrides of the small toy run (~1.5 s of steps, ~4 MB checkpoints, 2 EMAs)."""
    return [f"training.steps={steps}", "training.epochs=null", "training.device=cpu",
            "network.kwargs={hidden: 128, depth: 3}", "training.batch_size=64", "data.num_points=4096",
            "training.ema_decays=[0.9, 0.99]", f"training.checkpoint_every={CKPT_EVERY}",
            "training.keep_last=2", "training.warmup_steps=5", f"logging.log_every={LOG_EVERY}",
            "logging.sample_every=1000", "logging.sample_count=256", "logging.tensorboard=false",
            "logging.progress=false", "training.num_threads=1"]
