"""Which runs can be a distillation teacher (`training.teacher`, for `cd` and `scd`).

The distilling methods follow the teacher's probability-flow ODE, reading its network at ``h = 0`` as
the velocity ``v(z, t)``. A Score SDE network predicts the noise (``score = -net / sigma``) and a
consistency model's network is a consistency function: neither is a velocity, and distilling from one
would train silently towards nonsense. `check_teacher_method` refuses them;
`meanflow train` calls it before anything is built (`teacher_method` reads the teacher's method name
without loading its weights), and the loader of the teacher can call it with the loaded run's config.
"""

from __future__ import annotations

from pathlib import Path

from meanflow.errors import UserError

NOT_A_VELOCITY = {
    "score_sde": "a noise predictor (score = -net / sigma)",
    "ct": "a consistency function",
    "ict": "a consistency function",
    "cd": "a consistency function",
}
"""Methods whose network at h = 0 is not a velocity, and what it is instead."""


def check_teacher_method(method: str, teacher: str | Path) -> None:
    """UserError when a run of `method` (the teacher `teacher`) cannot teach a velocity to distil."""
    what = NOT_A_VELOCITY.get(method)
    if what is not None:
        raise UserError(f"training.teacher {teacher} was trained with method {method!r}, whose network is "
                        f"{what}, not a velocity: distil from a velocity model (e.g. flow_matching, reflow, "
                        "meanflow)")


def teacher_method(teacher: str | Path) -> str | None:
    """The method name of the run, checkpoint or export `teacher`, read without its weights (None for
    an `hf://` export, which is checked once loaded). Unreadable teachers are the loader's to report."""
    from meanflow.export.layout import is_export, is_hub_path, read_config
    from meanflow.training.checkpoint import Checkpoint

    if is_hub_path(teacher):
        return None
    try:
        config = read_config(teacher) if is_export(teacher) else Checkpoint(teacher).config
        return str(config["method"]["name"])
    except (UserError, KeyError, TypeError):
        return None
