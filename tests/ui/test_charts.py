"""The inline SVG charts: ticks, scaling, points, hover titles, escaping, edge cases."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import Markup

from registry.models import GateEvaluation
from registry.services.summaries import VersionPoint
from registry.ui import figures
from registry.ui.charts import Axis, Point, Series, line_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: Markup) -> ET.Element:
    return ET.fromstring(str(svg))  # noqa: S314 - our own output, parsed to check it is XML


def points(root: ET.Element) -> list[ET.Element]:
    return root.findall(f".//{SVG}circle")


@pytest.mark.parametrize(("lo", "hi", "count", "expected"), [
    (0.0, 1.0, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.81, 0.9, 5, [0.82, 0.84, 0.86, 0.88, 0.9]),
    (-3.0, 7.0, 5, [-2.0, 0.0, 2.0, 4.0, 6.0]),
    (5.0, 5.0, 5, [5.0]),
])
def test_nice_ticks_are_round_and_inside_the_range(lo: float, hi: float, count: int,
                                                   expected: list[float]) -> None:
    assert nice_ticks(lo, hi, count) == pytest.approx(expected)


def test_integer_ticks_never_fall_between_whole_numbers() -> None:
    assert nice_ticks(0.5, 3.5, 6, integer=True) == [1.0, 2.0, 3.0]
    ticks = nice_ticks(1, 1000, 6, integer=True)
    assert all(t == int(t) for t in ticks) and ticks[0] >= 1 and ticks[-1] <= 1000
    assert nice_ticks(math.nan, 1.0) == [] and nice_ticks(0.0, math.inf) == []


def test_one_point_per_value_with_hover_titles_and_axes() -> None:
    series = Series("acc", [Point(n, v, f"v{n}: acc = {v}") for n, v in
                            [(1, 0.8), (2, 0.85), (3, 0.83), (4, 0.9)]])
    root = parse(line_chart([series], title="acc", chart_id="metric:acc",
                            x_axis=Axis("version", lambda x: f"v{int(x)}", integer=True)))
    circles = points(root)
    assert len(circles) == 4 and root.get("data-points") == "4"
    assert [c.find(f"{SVG}title").text for c in circles] == [  # type: ignore[union-attr]
        "v1: acc = 0.8", "v2: acc = 0.85", "v3: acc = 0.83", "v4: acc = 0.9"]
    xs = [float(c.get("cx", "")) for c in circles]
    ys = [float(c.get("cy", "")) for c in circles]
    assert xs == sorted(xs)  # left to right by version
    assert ys[3] < ys[1] < ys[2] < ys[0]  # higher values are drawn higher (smaller y)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert {"v1", "v2", "v3", "v4", "version"} <= set(labels)
    assert root.find(f"{SVG}title").text == "acc"  # type: ignore[union-attr]
    polyline = root.find(f".//{SVG}polyline")
    assert polyline is not None and len(polyline.get("points", "").split()) == 4


def test_points_stay_inside_the_plot_area() -> None:
    pts = [Point(i, math.sin(i) * 100, str(i)) for i in range(50)]
    root = parse(line_chart([Series("s", pts)], title="t", width=400, height=200))
    for c in points(root):
        assert 0 < float(c.get("cx", "")) < 400 and 0 < float(c.get("cy", "")) < 200


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>&'
    svg = line_chart([Series(evil, [Point(1, 1, evil), Point(2, 2, evil)]),
                      Series("b", [Point(1, 2, "b")])],
                     title=evil, chart_id=evil, y_axis=Axis(evil))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = parse(svg)  # still well-formed XML
    assert points(root)[0].find(f"{SVG}title").text == evil  # type: ignore[union-attr]


def test_empty_constant_and_non_finite_inputs() -> None:
    empty = parse(line_chart([Series("s", [])], title="t", empty="nothing yet"))
    assert not points(empty) and "nothing yet" in [t.text for t in empty.iter(f"{SVG}text")]
    flat = parse(line_chart([Series("s", [Point(1, 0.5, "a"), Point(2, 0.5, "b")])], title="t"))
    assert len({c.get("cy") for c in points(flat)}) == 1
    lone = parse(line_chart([Series("s", [Point(7, 3.0, "a")])], title="t",
                            x_axis=Axis(integer=True)))
    assert len(points(lone)) == 1
    assert [t.text for t in lone.iter(f"{SVG}text")].count("7") == 1
    mixed = parse(line_chart([Series("s", [Point(1, math.nan, "a"), Point(2, math.inf, "b"),
                                           Point(3, 1.0, "c")])], title="t"))
    assert len(points(mixed)) == 1 and mixed.get("data-points") == "1"


def test_a_lone_reference_value_is_drawn_as_a_level_line() -> None:
    root = parse(line_chart([Series("v", [Point(10, 1.0, "v")]),
                             Series("threshold", [Point(10, 2.0, "t")], dashed=True,
                                    markers=False)], title="gate"))
    level = root.findall(f".//{SVG}polyline")[1]
    (x1, y1), (x2, y2) = (p.split(",") for p in level.get("points", "").split())
    assert y1 == y2 and float(x2) - float(x1) > 300
    assert level.get("stroke-dasharray") and len(points(root)) == 1


def test_metric_chart_has_a_point_per_version_and_marks_yanked() -> None:
    now = datetime.now(UTC)
    versions = [VersionPoint(i, i, "yanked" if i == 2 else "active", now,
                             {"acc": 0.5 + i / 10} if i != 3 else {}) for i in range(1, 5)]
    root = parse(figures.metric_chart("acc", versions))
    circles = points(root)
    assert len(circles) == 3  # v3 has no value for this metric
    assert "yanked" in (circles[1].get("class") or "")
    assert circles[1].find(f"{SVG}title").text == "v2: acc = 0.7 (yanked)"  # type: ignore[union-attr]


def test_gate_charts_one_per_gate_coloured_by_verdict() -> None:
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    rows = [GateEvaluation(rollout_id=1, step_index=i, gate=gate, verdict=verdict, value=value,
                           threshold=0.02, detail=f"d{i}",
                           evaluated_at=start + timedelta(minutes=i))
            for i, (gate, verdict, value) in enumerate([
                ("live.error_rate <= 0.02", "pass", 0.01),
                ("live.error_rate <= 0.02", "fail", 0.05),
                ("live.error_rate <= 0.02", "inconclusive", None),
                ("eval.acc >= 0.9", "pass", 0.95)])]
    charts = figures.gate_charts(rows)
    assert len(charts) == 2
    error_rate = parse(charts[0])
    assert [c.get("class") for c in points(error_rate)] == ["pt pass", "pt fail"]
    assert "12:01:00" in re.sub(r"\s+", " ", points(error_rate)[1].find(  # type: ignore[union-attr]
        f"{SVG}title").text or "")
