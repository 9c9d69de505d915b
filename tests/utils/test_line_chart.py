"""The Pillow loss chart draws any finite curve, also a flat one at a huge value (a diverged run)."""

import pytest

from meanflow.utils.line_chart import line_chart


@pytest.mark.parametrize("value", [0.0, 1.0, -3.0, 1e30, -2.8e15])
def test_flat_curves_are_drawn(value):
    img = line_chart({"loss": [(1, value), (2, value), (3, value)], "mse": [(1, value)]})
    assert img.size == (960, 340)
