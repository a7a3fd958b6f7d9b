"""Figure helpers: legends in numeric order, axes scaled to the runs that count."""

import math

from ncjax import figures


def test_points_sort_numerically_not_as_text():
    points = [(13,), (2,), (None,), (3,), (0.5,), ("rn2",)]
    assert sorted(points, key=figures._point_order) == [(0.5,), (2,), (3,), (13,), (None,), ("rn2",)]


def test_log_limits_cover_every_value_with_a_margin():
    low, high = figures._log_limits([0.05, 0.2, 0.1])
    assert low < 0.05 < 0.2 < high
    assert math.isclose(math.log10(high / 0.2), math.log10(0.05 / low))  # symmetric on a log axis
    assert figures._log_limits([]) is None
