"""diffusers integration (the optional `[diffusers]` extra): `MeanFlowPipeline`, a `DiffusionPipeline`.

    from meanflow.diffusers import MeanFlowPipeline     # imports diffusers now, not with `meanflow`
    pipe = MeanFlowPipeline.from_pretrained("exports/digits")
    images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images

Without diffusers installed the import fails with one line saying how to install it. See
`meanflow.diffusers.pipeline` for the call conventions and how the samples are seeded.
"""

from __future__ import annotations

from meanflow.errors import UserError

__all__ = ["MeanFlowPipeline"]

INSTALL_HINT = "pip install 'meanflow[diffusers]'"


class DiffusersMissing(UserError, ImportError):
    """diffusers is not installed (a UserError for the CLI, an ImportError for `from ... import`)."""


def __getattr__(name: str):
    if name != "MeanFlowPipeline":
        raise AttributeError(f"module 'meanflow.diffusers' has no attribute {name!r}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise DiffusersMissing(f"MeanFlowPipeline needs diffusers: {INSTALL_HINT}") from None
    from meanflow.diffusers.pipeline import MeanFlowPipeline

    return MeanFlowPipeline
