"""`meanflow.diffusers.MeanFlowPipeline`: the same seed gives the same samples as `meanflow sample`
(unconditional and conditional, 1 and 2 steps, "pil" and "np", a stochastic multistep sampler, 2-D
points), `save_pretrained` / `from_pretrained` round trips, diffusers' calling conventions, and the
one-line errors (missing extra, bad arguments)."""

import sys

import numpy as np
import pytest
import torch
from export_testkit import CONDITIONAL, train_tiny

from meanflow.cli import main
from meanflow.errors import UserError

pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline, ImagePipelineOutput  # noqa: E402

from meanflow.diffusers import MeanFlowPipeline  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Exports of tiny runs: MeanFlow unconditional and conditional, iCT (stochastic 2-step sampler),
    MeanFlow on 2-D points."""
    root = tmp_path_factory.mktemp("pipe")
    runs = {"uncond": train_tiny(root / "r0"), "cond": train_tiny(root / "r1", *CONDITIONAL),
            "ict": train_tiny(root / "r2", "--method", "ict"),
            "points": train_tiny(root / "r3", "--preset", "toy-2d", "--set", "data.num_points=512")}
    for name, run in runs.items():
        assert main(["export", str(run), str(root / name)]) == 0
    return root


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (see the root conftest)."""


def _sample(path, tmp_path, *args):
    """`meanflow sample` -> the uint8 images (or float samples) of its .npz."""
    out = tmp_path / "s"
    assert main(["sample", str(path), *args, "--out", str(out)]) == 0
    with np.load(f"{out}.npz") as z:
        return z["images"] if "images" in z else z["samples"]


def _u8(np_images):
    return np.round(np_images * 255).astype(np.uint8)


@pytest.mark.parametrize("steps", [1, 2])
def test_unconditional_pipeline_equals_meanflow_sample(exports, tmp_path, steps):
    pipe = MeanFlowPipeline.from_pretrained(exports / "uncond")
    assert isinstance(pipe, DiffusionPipeline)
    want = _sample(exports / "uncond", tmp_path, "-n", "6", "--steps", str(steps), "--seed", "7")
    g = torch.Generator().manual_seed(7)
    out = pipe(batch_size=6, num_inference_steps=steps, generator=g, output_type="np")
    assert isinstance(out, ImagePipelineOutput) and out.images.dtype == np.float32
    assert out.images.shape == (6, 8, 8, 1) and 0 <= out.images.min() and out.images.max() <= 1
    np.testing.assert_array_equal(_u8(out.images), want)
    pil = pipe(batch_size=6, num_inference_steps=steps, generator=g).images  # the generator is not consumed
    assert len(pil) == 6 and pil[0].mode == "L" and pil[0].size == (8, 8)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil])[..., None], want)
    (images,) = pipe(batch_size=6, num_inference_steps=steps, generator=[g], output_type="np",
                     return_dict=False)
    np.testing.assert_array_equal(_u8(images), want)


@pytest.mark.parametrize("steps", [1, 2])
def test_conditional_pipeline_equals_meanflow_sample(exports, tmp_path, steps):
    pipe = MeanFlowPipeline.from_pretrained(exports / "cond")
    g = torch.Generator().manual_seed(3)
    want = _sample(exports / "cond", tmp_path, "--classes", "3,1,4,1,5", "-n", "5", "--steps", str(steps),
                   "--seed", "3")
    got = pipe(class_labels=[3, 1, 4, 1, 5], num_inference_steps=steps, generator=g, output_type="np").images
    np.testing.assert_array_equal(_u8(got), want)
    pil = pipe(class_labels=[3, 1, 4, 1, 5], num_inference_steps=steps, generator=g).images
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil])[..., None], want)
    balanced = _sample(exports / "cond", tmp_path, "-n", "12", "--steps", str(steps), "--seed", "3")
    np.testing.assert_array_equal(_u8(pipe(batch_size=12, num_inference_steps=steps, generator=g,
                                           output_type="np").images), balanced)  # classes i % 10


def test_stochastic_sampler_seeds_its_fresh_noise_like_meanflow_sample(exports, tmp_path):
    pipe = MeanFlowPipeline.from_pretrained(exports / "ict")
    want = _sample(exports / "ict", tmp_path, "-n", "6", "--steps", "2", "--seed", "11")
    g = torch.Generator().manual_seed(11)
    got = pipe(batch_size=6, num_inference_steps=2, generator=g, output_type="np").images
    np.testing.assert_array_equal(_u8(got), want)
    other = pipe(batch_size=6, num_inference_steps=2, generator=torch.Generator().manual_seed(12),
                 output_type="np").images
    assert not np.array_equal(_u8(other), want)


def test_point_models_return_arrays_and_refuse_pil(exports, tmp_path):
    pipe = MeanFlowPipeline.from_pretrained(exports / "points")
    want = _sample(exports / "points", tmp_path, "-n", "9", "--seed", "1")
    got = pipe(batch_size=9, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert got.shape == (9, 2)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match="output_type='np'"):
        pipe(batch_size=2)


def test_save_pretrained_from_pretrained_round_trip(exports, tmp_path):
    pipe = MeanFlowPipeline.from_pretrained(exports / "cond", ema=None)
    pipe.save_pretrained(tmp_path / "saved")
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "samples.png"]
    again = MeanFlowPipeline.from_pretrained(tmp_path / "saved")
    g = torch.Generator().manual_seed(5)
    a = pipe(class_labels=[0, 9], generator=g, output_type="np").images
    np.testing.assert_array_equal(a, again(class_labels=[0, 9], generator=g, output_type="np").images)
    (tmp_path / "saved" / "notes.txt").write_text("mine")
    again.save_pretrained(tmp_path / "saved")  # into an existing folder: the export's files are replaced
    assert (tmp_path / "saved" / "notes.txt").read_text() == "mine"
    assert again.export_config["method"]["name"] == "meanflow" and again.device == torch.device("cpu")
    raw = MeanFlowPipeline.from_pretrained(next((exports / "r1").iterdir()), ema="raw")  # a run folder
    assert raw.export_config["weights"]["ema"] is None
    latent = raw(class_labels=2, batch_size=3, generator=g, output_type="latent").images
    assert torch.is_tensor(latent) and latent.shape == (3, 1, 8, 8)


def test_bad_calls_are_one_line_user_errors(exports):
    pipe = MeanFlowPipeline.from_pretrained(exports / "uncond")
    for kwargs, match in (({"class_labels": [1]}, "unconditional"), ({"output_type": "pt"}, "output_type"),
                          ({"num_inference_steps": 0}, ">= 1"), ({"generator": 3}, "torch.Generator"),
                          ({"generator": [torch.Generator()] * 2}, "one")):
        with pytest.raises(UserError, match=match):
            pipe(**kwargs)
    cond = MeanFlowPipeline.from_pretrained(exports / "cond")
    with pytest.raises(UserError, match="one label per sample"):
        cond(class_labels=[1, 2], batch_size=3)
    with pytest.raises(UserError, match="safetensors only"):
        pipe.save_pretrained("unused", safe_serialization=False)


def test_missing_diffusers_is_a_one_line_import_error(monkeypatch):
    import meanflow.diffusers as module

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'meanflow\[diffusers\]'") as info:
        module.MeanFlowPipeline  # noqa: B018
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
