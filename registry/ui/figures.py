"""The concrete charts of the pages, built from query results with :mod:`registry.ui.charts`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup

from registry.models import GateEvaluation
from registry.services.summaries import VersionPoint
from registry.statuses import VersionStatus
from registry.ui.charts import Axis, Point, Series, line_chart


def _version_label(value: float) -> str:
    return f"v{int(value)}"


def metric_chart(key: str, points: Sequence[VersionPoint]) -> Markup:
    """One point per version that has ``key``; yanked versions are drawn hollow."""
    series = Series(key, [
        Point(p.number, p.metrics[key], f"v{p.number}: {key} = {p.metrics[key]:.6g}"
              + (" (yanked)" if p.status == VersionStatus.YANKED else ""),
              "yanked" if p.status == VersionStatus.YANKED else "")
        for p in points if key in p.metrics])
    return line_chart([series], title=key, chart_id=f"metric:{key}",
                      x_axis=Axis("version", _version_label, integer=True),
                      y_axis=Axis(key), width=560, height=220)


def _clock(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%H:%M:%S")


def gate_charts(evaluations: Sequence[GateEvaluation]) -> list[Markup]:
    """One chart per gate: the measured value (coloured by verdict) and its threshold."""
    by_gate: dict[str, list[GateEvaluation]] = {}
    for e in evaluations:
        by_gate.setdefault(e.gate, []).append(e)
    charts = []
    for gate, rows in by_gate.items():
        values = Series("value", [
            Point(e.evaluated_at.timestamp(), e.value,
                  f"step {e.step_index + 1} at {_clock(e.evaluated_at.timestamp())}: "
                  f"{e.verdict} - {e.detail}", e.verdict)
            for e in rows if e.value is not None])
        thresholds = Series("threshold", [
            Point(e.evaluated_at.timestamp(), e.threshold, f"threshold {e.threshold:.6g}")
            for e in rows if e.threshold is not None], dashed=True, markers=False)
        charts.append(line_chart(
            [values, thresholds], title=gate, chart_id=f"gate:{gate}",
            x_axis=Axis("time (UTC)", _clock, span=120.0), width=560, height=220,
            empty="no measured values yet (inconclusive)"))
    return charts
