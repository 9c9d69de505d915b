"""`MeanFlowPipeline`: a meanflow generator as a `diffusers.DiffusionPipeline` (needs `meanflow[diffusers]`).

    pipe = MeanFlowPipeline.from_pretrained("exports/digits")      # an export, run, or "hf://ORG/NAME"
    out = pipe(batch_size=16, generator=torch.Generator().manual_seed(0))   # out.images: 16 PIL images
    pipe(class_labels=[207, 360], num_inference_steps=2, output_type="np").images   # float [2, H, W, 3]
    pipe.save_pretrained("exports/copy")                              # the export layout again

Seeding: the generator's seed (`generator.initial_seed()`) is `meanflow sample --seed`: sample i's
starting noise comes from (seed, i) (`meanflow.sampling.noise_for`), so
`pipe(batch_size=N, generator=torch.Generator().manual_seed(s))` gives exactly the images of
`meanflow sample PATH -n N --seed s` (and `class_labels=[...]` those of `--classes ...`). The generator
is read, not advanced: the same generator gives the same images again. Stochastic samplers (consistency
multistep, Score SDE's Euler-Maruyama / predictor-corrector) draw their k-th fresh noise of sample i
from the stream (seed, i, k) (`meanflow.sampling.SampleNoise`), exactly as `meanflow sample` does.
The pipeline calls the method's own `sample` through `meanflow.sampling.generate`, so every method's
sampler, with any number of steps, is reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

from meanflow.errors import UserError

OUTPUT_TYPES = ("pil", "np", "latent")


def _seed_of(generator) -> int:
    """The `meanflow sample --seed` of a diffusers `generator` (a torch.Generator, a list of one, or
    None: a seed drawn from torch's global RNG)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise UserError("pass one torch.Generator: sample i's noise comes from (its seed, i), not from "
                            "one generator per sample")
        generator = generator[0]
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    if not isinstance(generator, torch.Generator):
        raise UserError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return int(generator.initial_seed())


def _labels(class_labels, batch_size: int | None, classes: int) -> tuple[Any, int]:
    """(`generate`'s class_label, number of samples) of the call's `class_labels` / `batch_size`."""
    if class_labels is None:
        return None, 1 if batch_size is None else int(batch_size)  # conditional: balanced, i % K
    if classes == 0:
        raise UserError("this model is unconditional: call it with batch_size=N, not class_labels")
    scalar = torch.is_tensor(class_labels) and class_labels.ndim == 0
    if isinstance(class_labels, (int, np.integer)) or scalar:
        return int(class_labels), 1 if batch_size is None else int(batch_size)
    ids = [int(c) for c in class_labels]
    if batch_size is not None and int(batch_size) != len(ids):
        raise UserError(f"batch_size={batch_size} but {len(ids)} class_labels: give one label per sample")
    return ids, len(ids)


class MeanFlowPipeline(DiffusionPipeline):
    """A one-step (or k-step) generator of this project in diffusers' conventions.

    Components: `network` (the trained network, eval mode), `method` (the meanflow method whose
    `sample` maps noise to data) and `vae` (latent models: the `AutoencoderKL` that decodes; else None).
    `export_config` is the export's config.json (method, network, data, weights, metrics).
    """

    _optional_components = ["vae"]

    def __init__(self, network, method, vae=None) -> None:
        super().__init__()
        self.register_modules(network=network, method=method, vae=vae)
        self.export_config: dict = getattr(network, "meanflow_export", None) or {}

    # --- diffusers plumbing for a plain torch module ---------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def to(self, *args, **kwargs) -> MeanFlowPipeline:
        """Move the network (and VAE) like `torch.nn.Module.to`; returns the pipeline."""
        self.network.to(*args, **kwargs)
        if self.vae is not None:
            self.vae.to(*args, **kwargs)
        return self

    # --- loading and saving -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, ema: Any = None, vae=None, device: str = "cpu",
                        revision: str | None = None) -> MeanFlowPipeline:
        """Load an export folder, `hf://ORG/NAME[@REV]` (or a Hub id 'ORG/NAME' that is no local path, with
        `revision`), a run folder or a checkpoint.

        Args:
            ema: which weights of a run (see `meanflow.load_generator`); an export holds one set.
            vae: latent models: an `AutoencoderKL`, or a folder / Hub id, instead of the export's `vae/`
                or the recorded VAE; loaded from safetensors only, its fingerprint must match the record.
            device: where the pipeline runs.
        """
        from meanflow.export.describe import open_generator
        from meanflow.export.hub import REPO_RE

        path = str(pretrained_model_name_or_path)
        if not path.startswith("hf://") and not Path(path).exists() and REPO_RE.match(path) and "/" in path:
            path = f"hf://{path}"
        if revision is not None:
            if not path.startswith("hf://") or "@" in path:
                raise UserError("revision= is for Hub ids without '@REVISION'")
            path = f"{path}@{revision}"
        method, net, cfg, config = open_generator(path, ema=ema, device=device)
        decoder = None
        if config["data"].get("is_latent"):
            if isinstance(vae, (str, Path)) or vae is None:
                from meanflow.export.vae import load_checked_vae

                name = None if vae is None else str(vae)
                decoder = load_checked_vae(getattr(net, "meanflow_vae", None), name, device)
            else:
                decoder = vae.to(device).eval().requires_grad_(False)
        pipe = cls(network=net, method=method, vae=decoder)
        pipe.export_config = config
        return pipe

    def save_pretrained(self, save_directory, safe_serialization: bool = True,
                        repo: str | None = None) -> None:
        """Write the export layout (config.json, model.safetensors, samples.png, README.md, and `vae/` for
        a latent model) into `save_directory`, replacing the export's files there; safetensors only."""
        from meanflow.export.write import write_export

        if not safe_serialization:
            raise UserError("MeanFlowPipeline saves safetensors only (safe_serialization=False is refused)")
        if not self.export_config:
            raise UserError("this pipeline has no export description: load it with from_pretrained")
        write_export(save_directory, self.method, self.network, self.export_config, vae=self.vae,
                     store_vae=self.vae is not None, repo=repo, replace=True, device=self.device)

    # --- generation --------------------------------------------------------------------------------
    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        from meanflow.latent.vae import decode_latents

        if self.vae is None:
            raise UserError("this model generates latents and the pipeline has no VAE: pass vae= to "
                            "from_pretrained, or use output_type='latent'")
        scale = float((self.export_config.get("vae") or {}).get("scale") or self.vae.config.scaling_factor)
        return decode_latents(self.vae, x, scale, 32, self.device)

    @torch.no_grad()
    def __call__(self, batch_size: int | None = None, class_labels=None,
                 num_inference_steps: int | None = None, generator: torch.Generator | None = None,
                 output_type: str = "pil", return_dict: bool = True, sample_options: dict | None = None):
        """Generate samples.

        Args:
            batch_size: number of samples (unconditional models; a conditional model without
                `class_labels` gets balanced classes i % K, as `meanflow sample`). Default 1.
            class_labels: class-conditional models: a list of class ids, one per sample (or one int).
            num_inference_steps: sampling steps (default: the method's own, 1 for one-step methods).
            generator: a `torch.Generator`; its seed is `meanflow sample --seed` (see the module doc).
            output_type: "pil" (list of PIL images), "np" (float32 [N, H, W, C] in [0, 1], the 8-bit
                values of `meanflow sample` / 255; 2-D point models: float32 [N, 2]), or "latent"
                (the method's raw output, float32 [N, *S]: latents, images in [-1, 1], points).
            return_dict: False returns a tuple `(images,)`.
            sample_options: method-specific keywords of `method.sample` (e.g. iMF's `omega`, `interval`).

        Returns:
            `ImagePipelineOutput(images=...)`, or `(images,)`.
        """
        from meanflow.sampling import generate, model_info
        from meanflow.utils.images import to_uint8

        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        shape, classes = model_info(self.network)
        label, n = _labels(class_labels, batch_size, classes)
        steps = self.method.default_steps if num_inference_steps is None else int(num_inference_steps)
        if n < 1 or steps < 1:
            raise UserError(f"batch_size and num_inference_steps must be >= 1, got {n} and {steps}")
        x = generate(self.method, self.network, 0, n, steps=steps, seed=_seed_of(generator),
                     class_label=label, device=self.device, sample_options=sample_options)
        if output_type == "latent":
            images: Any = x
        elif len(shape) != 3:
            if output_type == "pil":
                raise UserError(f"this model generates points of shape {list(shape)}, not images: use "
                                "output_type='np'")
            images = x.numpy()
        else:
            u8 = to_uint8(self._decode(x) if getattr(self.network, "meanflow_is_latent", False) else x)
            images = (u8.astype(np.float32) / 255.0 if output_type == "np"
                      else [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in u8])
        return ImagePipelineOutput(images=images) if return_dict else (images,)
