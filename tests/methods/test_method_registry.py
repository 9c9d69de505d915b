import pytest

from meanflow.errors import UserError
from meanflow.methods import METHODS, FlowMatching, MeanFlow, build_method


def test_build_by_name():
    assert set(METHODS) == {"meanflow", "flow_matching"}
    m = build_method("meanflow", ratio=0.75, norm_p=0.75, norm_eps=1e-3, t_mean=-2.0, t_std=2.0)
    assert isinstance(m, MeanFlow) and m.ratio == 0.75
    assert isinstance(build_method("flow_matching", solver="heun"), FlowMatching)


@pytest.mark.parametrize(
    "name, kwargs", [("mean_flow", {}), ("meanflow", {"lr": 1.0}), ("meanflow", {"ratio": 2})]
)
def test_bad_names_and_options_raise(name, kwargs):
    with pytest.raises(UserError):
        build_method(name, **kwargs)
