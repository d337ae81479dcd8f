import math

import pytest

from cascade.errors import ScaleError
from cascade.pipeline import check_scale, parse_size, target_size


def test_target_size_by_scale_and_size():
    assert target_size((10, 20), 2.5) == (25, 50)
    assert target_size((10, 20), size=(30, 41)) == (30, 41)
    assert target_size((10, 20), 3, size=(30, 60)) == (30, 60)


@pytest.mark.parametrize("bad", [0, -2, 0.5, math.nan, math.inf, "abc"])
def test_impossible_scales_are_refused(bad):
    with pytest.raises(ScaleError, match="scale"):
        check_scale(bad)


def test_size_conflicting_with_scale_or_smaller_than_input():
    with pytest.raises(ScaleError, match="conflicts"):
        target_size((10, 20), 2, size=(40, 40))
    with pytest.raises(ScaleError, match="smaller"):
        target_size((10, 20), size=(5, 5))
    with pytest.raises(ScaleError):
        target_size((10, 20))


@pytest.mark.parametrize("text", ["640", "0x10", "axb", "10x-3"])
def test_bad_size_strings(text):
    with pytest.raises(ScaleError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_size_is_width_by_height():
    assert parse_size("640x480") == (480, 640)
