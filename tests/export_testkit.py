"""Shared pieces of the export / Hub / pipeline tests: tiny trained runs, and a local folder laid out as
the Hugging Face Hub cache so that `hf://` loads run offline."""

from pathlib import Path

import torch

from meanflow.cli import main

# 3 steps of a 16-wide MLP on the 8x8 digits (unconditional unless CONDITIONAL), two EMAs,
# no progress bar / TensorBoard, one thread.
TINY_RUN = ["--set", "network={name: mlp, kwargs: {hidden: 16, depth: 1}}", "--steps", "3",
            "--batch-size", "16",
            "--set", "logging.progress=false", "--set", "logging.tensorboard=false",
            "--set", "logging.sample_count=4", "--set", "training.num_threads=1",
            "--set", "training.ema_decays=[0.9,0.999]", "--set", "data.use_labels=false"]
# The default digits job's MeanFlow trains guidance in (w = 2, class dropout): off for unconditional runs.
NO_GUIDANCE = ["--set", "method.kwargs.omega=1.0", "--set", "method.kwargs.class_dropout=0.0"]
CONDITIONAL = ["--set", "data.use_labels=true"]


def train_tiny(root: Path, *extra: str) -> Path:
    """Train a tiny digits run under `root` (MeanFlow unless `extra` says otherwise); its run folder."""
    threads = torch.get_num_threads()
    try:
        own = [] if "--method" in extra or CONDITIONAL[1] in extra else NO_GUIDANCE
        assert main(["train", "--out-dir", str(root), *TINY_RUN, *own, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    (run,) = Path(root).iterdir()
    return run


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo: str, export: Path, revision: str = "main",
                   commit: str = COMMIT) -> Path:
    """Lay out `export`'s files in `cache` as the Hub cache does for model `repo` at `revision`:
    models--ORG--NAME/snapshots/<commit>/<files> and refs/<revision> holding <commit>. Returns the
    snapshot folder."""
    base = Path(cache) / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    for f in sorted(p for p in Path(export).rglob("*") if p.is_file() and "samples" not in p.parts):
        dst = snap / f.relative_to(export)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(f.read_bytes())
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / revision).write_text(commit)
    return snap


def offline_hub(monkeypatch, cache: Path) -> None:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=`cache`, in the environment and in the already imported
    `huggingface_hub.constants` (read once at import)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
