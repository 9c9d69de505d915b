import pytest

from meanflow.errors import UserError
from meanflow.methods import (
    METHODS,
    FlowMatching,
    ImprovedConsistencyTraining,
    MeanFlow,
    ShortcutModel,
    build_method,
)


def test_build_by_name():
    assert set(METHODS) == {"meanflow", "imf", "pmf", "alphaflow", "dmf", "soflow", "splitmeanflow",
                            "flow_matching", "ct", "ict", "cd", "sct", "scd", "shortcut", "reflow", "distill",
                            "score_sde"}
    m = build_method("meanflow", ratio=0.75, norm_p=0.75, norm_eps=1e-3, t_mean=-2.0, t_std=2.0)
    assert isinstance(m, MeanFlow) and m.ratio == 0.75
    assert isinstance(build_method("flow_matching", solver="heun"), FlowMatching)
    assert isinstance(build_method("ict", s1=640), ImprovedConsistencyTraining)
    assert isinstance(build_method("shortcut", target_source="online"), ShortcutModel)


def test_registered_methods_declare_known_context_and_steps():
    from meanflow.methods import CONTEXT_KEYS

    for name, cls in METHODS.items():
        method = cls()
        assert set(method.needs) <= set(CONTEXT_KEYS), name
        assert isinstance(method.default_steps, int) and method.default_steps >= 1, name
        if "target" in method.needs:
            from meanflow.methods import Progress

            assert 0.0 <= method.target_decay(Progress(0, 100)) <= 1.0, name


@pytest.mark.parametrize(
    "name, kwargs", [("mean_flow", {}), ("meanflow", {"lr": 1.0}), ("meanflow", {"ratio": 2})]
)
def test_bad_names_and_options_raise(name, kwargs):
    with pytest.raises(UserError):
        build_method(name, **kwargs)
