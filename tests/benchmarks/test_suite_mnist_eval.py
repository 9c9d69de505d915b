"""The image measurement of the suite (FID / KID records per sampling-step count) on a tiny digits run,
with a cheap stand-in for the Inception network."""

import numpy as np
import torch

from benchmarks.suite import mnist_eval
from benchmarks.suite.spec import BY_NAME


def cheap_features(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> [B, 6]: channel means and standard deviations."""
    f = x.float() / 255
    return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], 1)


def test_measure_writes_fid_and_kid_per_step_count(tmp_path, monkeypatch, one_thread):
    from meanflow.evaluation import dataset_images
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("digits", overrides=["training.steps=5", f"logging.out_dir={tmp_path}",
                                              "logging.progress=false", "logging.tensorboard=false"])
    run = train(cfg, echo=lambda _: None)
    monkeypatch.setattr(mnist_eval, "_CACHE", {"cpu": cheap_features})
    monkeypatch.setattr(mnist_eval, "GRIDS", tmp_path / "grids")
    ref_path = tmp_path / "ref" / "digits.npz"
    images = dataset_images("digits", split="train")[:120]
    ref = mnist_eval.reference(ref_path, images=images, source="digits")
    assert ref.n == 120 and ref_path.is_file() and not ref_path.with_name("digits.chunks").exists()
    entry = BY_NAME["meanflow"]
    recs = mnist_eval.measure(run / "checkpoints" / "ckpt-0000005.safetensors", entry, seed=0, n=60,
                              run_dir=str(run), ref_path=ref_path)
    got = {(r["nfe"], r["metric"]) for r in recs}
    assert got == {(k, m) for k in entry.mnist_nfe for m in ("fid", "kid")}
    assert all(np.isfinite(r["value"]) and r["n"] == 60 and r["n_ref"] == 120 for r in recs)
    assert all("kid_std" in r for r in recs if r["metric"] == "kid")
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["mnist-meanflow-1step.png",
                                                                      "mnist-meanflow-2step.png"]
    # a variant's grids do not replace the default row's
    mnist_eval.measure(run / "checkpoints" / "ckpt-0000005.safetensors", entry, seed=0, n=20,
                       run_dir=str(run), ref_path=ref_path, variant="p0.5")
    assert len(list((tmp_path / "grids").glob("mnist-meanflow-p0.5-*step.png"))) == 2
