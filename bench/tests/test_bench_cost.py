"""The cost model's fit: CPU per answer = a + b x tokens."""

from __future__ import annotations

import pytest

import cost
import report


def test_the_fit_recovers_a_line_and_its_targets() -> None:
    points = [(10.0, 2.0 + 0.01 * 10), (50.0, 2.0 + 0.01 * 50), (500.0, 2.0 + 0.01 * 500)]
    a, b = cost.fit(points)
    assert a == pytest.approx(2.0) and b == pytest.approx(0.01)
    targets = report.cost_targets({"model": {"api+worker": {"a_ms": a, "b_us": b * 1000}}})
    assert [t.met for t in targets] == [True, True]
    assert not report.cost_targets({"model": {"api+worker": {"a_ms": 4.0, "b_us": 25.0}}})[0].met
    assert report.cost_targets(None) == []
