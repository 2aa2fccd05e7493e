"""The SVG chart of a site's cumulative epsilon against its budget.

This module computes the chart's geometry (every coordinate already written as
text); ``templates/chart.svg.j2`` draws it. Each chart is an
``<svg class="eps-chart">`` with ``data-site`` and ``data-budget``; each point is a
``<circle class="eps-point">`` whose ``data-epsilon`` is the recorded
``epsilon_after`` written with :func:`repr`, so a test (or a script) can find the
figures again in the rendered page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slidefed.audit.report._env import environment
from slidefed.audit.report._format import eps
from slidefed.audit.report.gather import Charge, RunNumbers
from slidefed.common.budget import EPSILON_TOLERANCE

BUDGET_COLOUR = "#d62728"
"""Colour of the budget line and of points over budget."""

SERIES_COLOURS = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
)
"""Colours of the runs in a chart, in order of the runs' first record."""

_MAX_POINTS = 400
"""Charged rounds up to which every round gets a point; beyond, only the last
round of each run and the rounds over budget do."""

_MAX_LINE_POINTS = 1000
"""Vertices per run's line at most; longer runs are thinned."""


@dataclass(frozen=True)
class Frame:
    """Pixel geometry of a chart, and where ``n`` charged rounds fall in it."""

    n: int
    top_value: float
    width: int = 760
    height: int = 300
    left: int = 58
    right: int = 130
    top: int = 20
    bottom: int = 56

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom

    @property
    def plot_right(self) -> int:
        return self.left + self.plot_width

    @property
    def plot_bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def axis_labels(self) -> tuple[str, str]:
        """Return where the axis titles go: the y axis's y, the x axis's x."""
        return (
            f"{self.top + self.plot_height / 2:.1f}",
            f"{self.left + self.plot_width / 2:.1f}",
        )

    def x(self, i: float) -> float:
        """Return the x of the ``i``-th charged round (the middle of its slot)."""
        return self.left + (i + 0.5) * self.plot_width / self.n

    def y(self, value: float) -> float:
        """Return the y of an epsilon."""
        return self.top + self.plot_height * (1 - value / self.top_value)


@dataclass(frozen=True)
class Label:
    """A piece of text and where it goes."""

    x: str
    y: str
    text: str


@dataclass(frozen=True)
class Tick:
    """A grid line of the epsilon axis and its label."""

    y: str
    text_y: str
    text: str


@dataclass(frozen=True)
class Budget:
    """A dashed budget line over the rounds that had that maximum."""

    value: str
    text: str
    x1: str
    x2: str
    y: str


@dataclass(frozen=True)
class Series:
    """One run's line, and its legend entry when the chart has several runs."""

    run_id: int | None
    points: str
    colour: str
    legend: Label | None


@dataclass(frozen=True)
class Point:
    """The dot of one charged round, with its figures for scripts and tooltips."""

    run_id: int | None
    round: int | None
    epsilon: str
    cx: str
    cy: str
    r: int
    fill: str
    tip: str


@dataclass(frozen=True)
class Mark:
    """What one charged round adds to the chart, in the order it is painted."""

    point: Point | None
    value: Label | None
    round_label: Label | None
    separator: str | None
    run_label: Label | None


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [step * i for i in range(math.ceil(top / step + 1e-9) + 1)]


def run_labels(charges: Sequence[Charge], numbers: RunNumbers | None) -> RunNumbers:
    """Number the runs of ``charges``: as in ``numbers``, else in order of appearance."""
    labels: RunNumbers = dict(numbers or {})
    for charge in charges:
        if charge.run_id not in labels:
            labels[charge.run_id] = max(labels.values(), default=0) + 1
    return labels


def _colour(number: int) -> str:
    return SERIES_COLOURS[(number - 1) % len(SERIES_COLOURS)]


@dataclass(frozen=True)
class Chart:
    """Everything ``templates/chart.svg.j2`` draws for one site."""

    site: str
    frame: Frame
    budget: str
    ticks: list[Tick]
    budgets: list[Budget]
    budget_label: Label
    series: list[Series]
    marks: list[Mark]
    thinned: bool
    budget_colour: str = BUDGET_COLOUR


def chart_of(
    site: str, charges: Sequence[Charge], run_numbers: RunNumbers | None = None
) -> Chart | None:
    """Compute the chart of a site's charges (None when nothing was charged).

    Parameters are those of :func:`epsilon_chart`.
    """
    if not charges:
        return None
    values = [c.data.epsilon_after for c in charges]
    budgets = [c.data.epsilon_max for c in charges]
    ticks = _nice_ticks(max(*values, *budgets, 1e-6) * 1.05)
    frame = Frame(n=len(charges), top_value=ticks[-1])
    numbers = run_labels(charges, run_numbers)
    runs = {c.run_id: numbers[c.run_id] for c in charges}
    return Chart(
        site=site,
        frame=frame,
        budget=repr(budgets[-1]),
        ticks=[
            Tick(f"{frame.y(t):.1f}", f"{frame.y(t) + 4:.1f}", f"{t:g}") for t in ticks
        ],
        budgets=_budgets(budgets, frame),
        budget_label=Label(
            f"{frame.plot_right + 8}",
            f"{frame.y(budgets[-1]) + 4:.1f}",
            f"{budgets[-1]:g}",
        ),
        series=_series(charges, runs, frame),
        marks=_marks(charges, runs, frame),
        thinned=len(charges) > _MAX_POINTS,
    )


def epsilon_chart(
    site: str, charges: Sequence[Charge], run_numbers: RunNumbers | None = None
) -> str:
    """Draw cumulative epsilon after each charged round against the budget.

    Parameters
    ----------
    site : str
        The site's name (for the labels).
    charges : Sequence[Charge]
        The site's ``round_charged`` records in log order.
    run_numbers : RunNumbers, optional
        Short numbers of the runs, shared by the whole report, which also pick the
        runs' colours; by default the runs are numbered in order of appearance.

    Returns
    -------
    str
        An inline ``<svg>`` element, or a short note when nothing was charged.
    """
    template = environment().get_template("chart.svg.j2")
    return template.render(chart=chart_of(site, charges, run_numbers))


def _budgets(budgets: Sequence[float], frame: Frame) -> list[Budget]:
    """One line per stretch of rounds with the same maximum."""
    lines = []
    start = 0
    for index in range(1, len(budgets) + 1):
        if index < len(budgets) and budgets[index] == budgets[start]:
            continue
        value = budgets[start]
        lines.append(
            Budget(
                value=repr(value),
                text=f"{value:g}",
                x1=f"{frame.x(start - 0.5):.1f}",
                x2=f"{frame.x(index - 0.5):.1f}",
                y=f"{frame.y(value):.1f}",
            )
        )
        start = index
    return lines


def _series(
    charges: Sequence[Charge], runs: dict[int | None, int], frame: Frame
) -> list[Series]:
    """One line per run (thinned when long), in order of the runs' first charge."""
    found = []
    for row, (run_id, number) in enumerate(runs.items()):
        idx = [i for i, c in enumerate(charges) if c.run_id == run_id]
        if len(idx) > _MAX_LINE_POINTS:  # cumulative epsilon only grows: thin it
            step = math.ceil(len(idx) / _MAX_LINE_POINTS)
            idx = [*idx[:-1:step], idx[-1]]
        points = " ".join(
            f"{frame.x(i):.1f},{frame.y(charges[i].data.epsilon_after):.1f}"
            for i in idx
        )
        legend = None
        if len(runs) > 1:
            y = f"{frame.top + 14 + 16 * row}"
            legend = Label(f"{frame.plot_right + 8}", y, f"run {number}")
        found.append(Series(run_id, points, _colour(number), legend))
    return found


def _marks(
    charges: Sequence[Charge], runs: dict[int | None, int], frame: Frame
) -> list[Mark]:
    """The points and labels of each charged round (only those it has)."""
    n = len(charges)
    longest = max(len(f"r{c.round}") for c in charges)
    fit = max(2, min(30, frame.plot_width // (7 * longest + 12)))
    label_every = max(1, math.ceil(n / fit))
    last_of_run = {c.run_id: i for i, c in enumerate(charges)}
    marks = []
    previous: int | None = None
    for i, charge in enumerate(charges):
        number = runs[charge.run_id]
        x = frame.x(i)
        drawn = n <= _MAX_POINTS or last_of_run[charge.run_id] == i
        mark = Mark(
            point=_point(charge, number, frame, x, drawn=drawn),
            value=_value_label(charge, frame, x) if n <= 20 else None,
            round_label=(
                Label(f"{x:.1f}", f"{frame.plot_bottom + 16}", f"r{charge.round}")
                if i % label_every == 0
                else None
            ),
            separator=(
                f"{frame.x(i - 0.5):.1f}"
                if previous is not None and previous != number
                else None
            ),
            run_label=(
                Label(f"{x - 4:.1f}", f"{frame.plot_bottom + 30}", f"run {number}")
                if previous != number
                else None
            ),
        )
        if any(part is not None for part in vars(mark).values()):
            marks.append(mark)
        previous = number
    return marks


def _point(
    charge: Charge, number: int, frame: Frame, x: float, *, drawn: bool
) -> Point | None:
    """The dot of a charged round: always when over budget, else when ``drawn``."""
    value = charge.data.epsilon_after
    over = value > charge.data.epsilon_max + EPSILON_TOLERANCE
    if not (drawn or over):
        return None
    tip = (
        f"run {number} ({charge.run_id}), round {charge.round}: cumulative ε "
        f"{value:.4f} (this round {eps(charge.data.epsilon_round)}), budget "
        f"{charge.data.epsilon_max:g}{', OVER BUDGET' if over else ''}"
    )
    return Point(
        run_id=charge.run_id,
        round=charge.round,
        epsilon=repr(value),
        cx=f"{x:.1f}",
        cy=f"{frame.y(value):.1f}",
        r=6 if over else 4,
        fill=BUDGET_COLOUR if over else _colour(number),
        tip=tip,
    )


def _value_label(charge: Charge, frame: Frame, x: float) -> Label:
    value = charge.data.epsilon_after
    return Label(f"{x:.1f}", f"{frame.y(value) - 9:.1f}", f"{value:.2f}")


__all__ = [
    "BUDGET_COLOUR",
    "SERIES_COLOURS",
    "Chart",
    "Frame",
    "chart_of",
    "epsilon_chart",
    "run_labels",
]
