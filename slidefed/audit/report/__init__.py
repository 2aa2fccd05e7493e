"""The auditor's HTML report: one self-contained page built from audit logs.

:func:`build_report` turns verified logs (:func:`slidefed.audit.load.load_logs`)
into a single HTML document with inline CSS and inline SVG charts; it loads nothing
from the network (its Content-Security-Policy forbids it) and runs no script. The
page is rendered from jinja2 templates with autoescape on, so every piece of text
that comes from a log is escaped.

The page holds, per site, the cumulative epsilon after each charged round against
the site's budget (a chart and its table), the releases, refusals, blocked egress
and withheld metrics; per server log, the aggregated and rejected updates; per run,
its participants and rounds; and the verification status of each log.

- :mod:`~slidefed.audit.report.gather`: the facts, collected from the logs;
- :mod:`~slidefed.audit.report.chart`: the epsilon chart's geometry;
- :mod:`~slidefed.audit.report.render`: the page, from ``templates/``.

This package imports only the standard library, pydantic, ``cryptography`` and
jinja2.
"""

from slidefed.audit.report.chart import BUDGET_COLOUR as BUDGET_COLOUR
from slidefed.audit.report.chart import SERIES_COLOURS as SERIES_COLOURS
from slidefed.audit.report.chart import epsilon_chart as epsilon_chart
from slidefed.audit.report.gather import Aggregation as Aggregation
from slidefed.audit.report.gather import Charge as Charge
from slidefed.audit.report.gather import Facts as Facts
from slidefed.audit.report.gather import Note as Note
from slidefed.audit.report.gather import ReleaseRow as ReleaseRow
from slidefed.audit.report.gather import Row as Row
from slidefed.audit.report.gather import RunView as RunView
from slidefed.audit.report.gather import ServerView as ServerView
from slidefed.audit.report.gather import SiteView as SiteView
from slidefed.audit.report.gather import gather as gather
from slidefed.audit.report.render import build_report as build_report
from slidefed.audit.report.render import write_report as write_report

__all__ = [
    "BUDGET_COLOUR",
    "SERIES_COLOURS",
    "Aggregation",
    "Charge",
    "Facts",
    "Note",
    "ReleaseRow",
    "Row",
    "RunView",
    "ServerView",
    "SiteView",
    "build_report",
    "epsilon_chart",
    "gather",
    "write_report",
]
