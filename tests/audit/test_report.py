"""``slidefed audit report``: one self-contained page, rendered in headless Chromium.

The Chromium tests skip when no Chromium binary is installed (CI installs Debian's
``chromium`` package). Run this file as a script to redraw the screenshot in the
docs::

    python -m tests.audit.test_report docs/img/audit-report.png
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from slidefed.audit.load import load_logs
from slidefed.audit.report import (
    BUDGET_COLOUR,
    SERIES_COLOURS,
    Charge,
    build_report,
    epsilon_chart,
)
from slidefed.audit.verify import read_records
from slidefed.common.audit.events import (
    EgressBlocked,
    EgressGuardBlocked,
    EvaluationCharged,
    MetricWithheld,
    RoundRefused,
    RunFinished,
    RunStarted,
    RunStopped,
    UpdateRejected,
)
from slidefed.common.audit.records import Actor, line_hash
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key
from tests.audit.builders import aggregated, charge, completed, joined, release
from tests.chromium import run_chromium

RUNS = (1111111111111111111, 2222222222222222222)
APP = "9a" * 32
MODEL_FILE = "5e" * 32


# --- a federation of three sites, two runs and a server --------------------------


def _writer(root: Path, actor: Actor, name: str, file: str) -> AuditLog:
    folder = root / ("server" if actor == "server" else f"sites/{name}")
    key = generate_audit_key(folder / "keys" / "audit_key")
    (folder / "audit").mkdir(parents=True)
    shutil.copy(folder / "keys" / "audit_key.pub", folder / "audit" / "audit_key.pub")
    return AuditLog(folder / "audit" / file, key=key, actor=actor, actor_name=name)


@dataclass
class _Site:
    log: AuditLog
    budget: float
    spent: float = 0.0
    released: list[tuple[int, int, str]] = field(default_factory=list)

    def join(self, run: int) -> None:
        fingerprint = joined(
            line_hash(str(run).encode()),
            manifest_sha256=line_hash(self.log.actor_name.encode()),
        ).model_copy(update={"run_name": "grade-v1" if run == RUNS[0] else ""})
        if run == RUNS[0]:
            fingerprint = fingerprint.model_copy(update={"fab_hash": APP})
        self.log.append(fingerprint, run_id=run, round=1)

    def train(self, run: int, rnd: int, cost: float) -> None:
        after = round(self.spent + cost, 6)
        spent = charge(
            after,
            before=self.spent,
            budget=self.budget,
            delta=3.5e-3,
            epsilon_round=cost,
        )
        self.log.append(spent, run_id=run, round=rnd)
        self.spent = after
        sha = line_hash(f"{self.log.actor_name}/{run}/{rnd}".encode())
        update = release(sha, nbytes=12 * 24 * 24 * 4, arrays=12)
        self.log.append(update, run_id=run, round=rnd)
        self.released.append((run, rnd, sha))

    def evaluate(self, run: int, rnd: int, cost: float) -> None:
        after = round(self.spent + cost, 6)
        spent = charge(after, before=self.spent, budget=self.budget, delta=3.5e-3)
        self.log.append(EvaluationCharged(**spent.model_dump()), run_id=run, round=rnd)
        self.spent = after


def write_federation(root: Path) -> list[Path]:
    """Write the logs of a small federation; return the site logs, then the server's."""
    a = _Site(_writer(root, "site", "hospital-a", "audit.jsonl"), budget=10.0)
    b = _Site(_writer(root, "site", "hospital-b", "audit.jsonl"), budget=8.0)
    c = _Site(_writer(root, "site", "hospital-c", "audit.jsonl"), budget=12.0)
    server = _writer(root, "server", "coordinator", "server-audit.jsonl")
    started = RunStarted(
        config_hash="c" * 64,
        strategy="fedavg",
        rounds=3,
        run_name="grade-v1",
        fab_hash=APP,
    )
    server.append(started, run_id=RUNS[0], round=0)
    for site in (a, b, c):
        site.join(RUNS[0])
    for rnd, costs in enumerate([(2.1, 1.9, 1.2), (1.4, 1.3, 0.9), (1.1, 1.0, 0.8)], 1):
        for site, cost in zip((a, b, c), costs, strict=True):
            site.train(RUNS[0], rnd, cost)
    c.log.append(
        EgressGuardBlocked(
            message_type="evaluate", rule="metric_not_allowed", detail="patient_count"
        ),
        run_id=RUNS[0],
        round=3,
    )
    c.log.append(
        MetricWithheld(reason="4 held-out patients < policy minimum 10"),
        run_id=RUNS[0],
        round=3,
    )
    for site in (a, b):
        site.join(RUNS[1])
    a.train(RUNS[1], 1, 2.2)
    b.train(RUNS[1], 1, 2.6)
    b.log.append(
        EgressBlocked(reason="metric 'patient_ids' is not an allowed metric <b>"),
        run_id=RUNS[1],
        round=2,
    )
    a.train(RUNS[1], 2, 1.6)
    a.evaluate(RUNS[1], 2, 0.4)  # hospital-a's last release: an evaluation
    b.log.append(
        RoundRefused(
            reason="round 3 would bring epsilon to 8.613, over the site's max_epsilon "
            "8.000 (policy in site.toml); round refused"
        ),
        run_id=RUNS[1],
        round=3,
    )
    for site in (a, b, c):
        for node, (run, rnd, sha) in enumerate(site.released, 1):
            name = f"{site.log.actor_name[-1]}{node}"
            update = aggregated(name, sha, nbytes=12 * 24 * 24 * 4)
            server.append(update, run_id=run, round=rnd)
    server.append(
        UpdateRejected(node="9313", reason="array layer3.weight has non-finite values"),
        run_id=RUNS[1],
        round=2,
    )
    for rnd in (1, 2, 3):
        server.append(completed(3), run_id=RUNS[0], round=rnd)
    for rnd in (1, 2):
        server.append(completed(2), run_id=RUNS[1], round=rnd)
    stopped = RunStopped(
        sites_trained=0,
        sites_evaluated=0,
        rejected=0,
        errors=1,
        min_sites=2,
        reason="refused: privacy budget (site 5)",
    )
    server.append(stopped, run_id=RUNS[1], round=3)
    finished = RunFinished(final_sha256="0" * 64, model_file_sha256=MODEL_FILE)
    server.append(finished, run_id=RUNS[0], round=3)
    return [a.log.path, b.log.path, c.log.path, server.path]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_federation(tmp_path_factory.mktemp("fed"))


@pytest.fixture(scope="module")
def report(federation: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(build_report(load_logs(federation)), encoding="utf-8")
    return out


def _expected(federation: list[Path]) -> dict[str, tuple[float, list[float]]]:
    """Budget and cumulative epsilons of each site, read back from its log."""
    expected: dict[str, tuple[float, list[float]]] = {}
    for path in federation:
        charges = [
            r
            for r in read_records(path)
            if r.event in ("round_charged", "evaluation_charged")
        ]
        if charges:
            expected[charges[0].actor_name] = (
                charges[-1].data["epsilon_max"],
                [r.data["epsilon_after"] for r in charges],
            )
    return expected


# --- reading the charts back out of a page ------------------------------------------


@dataclass
class Chart:
    site: str
    budget: str
    epsilons: list[str] = field(default_factory=list)
    budget_lines: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


class _Charts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self._chart: Chart | None = None
        self._label = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "svg" and "eps-chart" in classes:
            self._chart = Chart(a["data-site"], a["data-budget"])
            self.charts.append(self._chart)
        elif self._chart is None:
            return
        elif tag == "circle" and "eps-point" in classes:
            self._chart.epsilons.append(a["data-epsilon"])
        elif tag == "line" and "budget" in classes:
            self._chart.budget_lines.append(a["data-epsilon-max"])
        elif tag == "text" and "budget-label" in classes:
            self._label = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        self._label = False

    def handle_data(self, data: str) -> None:
        if self._label and self._chart is not None:
            self._chart.labels.append(data)


def charts(page: str) -> dict[str, Chart]:
    parser = _Charts()
    parser.feed(page)
    return {chart.site: chart for chart in parser.charts}


def _assert_each_site_against_its_budget(page: str, federation: list[Path]) -> None:
    found = charts(page)
    expected = _expected(federation)
    assert set(found) == set(expected)
    for site, (budget, epsilons) in expected.items():
        chart = found[site]
        assert chart.budget == repr(budget)
        assert chart.epsilons == [repr(e) for e in epsilons]
        assert chart.budget_lines == [repr(budget)]
        assert chart.labels == [f"budget ε = {budget:g}"]


# --- the page itself (no browser needed) ------------------------------------------


def test_report_shows_each_site_against_its_budget(
    report: Path, federation: list[Path]
) -> None:
    _assert_each_site_against_its_budget(report.read_text(), federation)


def test_report_counts_evaluations_in_what_a_site_spent(
    report: Path, federation: list[Path]
) -> None:
    page = " ".join(report.read_text().split())
    site_a = page[page.index('id="site-hospital-a"') :].split("</article>")[0]
    # hospital-a's last charge is an evaluation; what it spent is the figure after it.
    last = [r for r in read_records(federation[0]) if r.event.endswith("_charged")][-1]
    assert last.event == "evaluation_charged"
    assert f"Spent ε {last.data['epsilon_after']:.4f} of its budget 10" in site_a
    assert "<td>evaluation</td>" in site_a
    assert site_a.count("<td>training</td>") == 5


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text()

    assert "Content-Security-Policy" in page
    assert "default-src 'none'" in page
    for needle in ("<script", "<link", "src=", "@import", "url(", "<iframe"):
        assert needle not in page.lower(), needle
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched


def test_report_lists_runs_releases_and_refusals(report: Path) -> None:
    page = report.read_text()

    assert page.count('<article class="site"') == 3
    assert str(RUNS[0]) in page
    assert str(RUNS[1]) in page
    assert "hospital-a, hospital-b, hospital-c" in page  # participants of run 1
    assert "round 3 would bring epsilon to 8.613" in page
    assert "4 held-out patients &lt; policy minimum 10" in page
    assert "not an allowed metric &lt;b&gt;" in page
    assert "array layer3.weight has non-finite values" in page
    assert (
        "detail: patient_count; message_type: evaluate; rule: metric_not_allowed"
        in page
    )
    assert "Every chain, signature and cross-check holds" in page
    assert "no matching release" not in page
    assert "3 of 3, finished" in page  # run 1, from the server's log
    assert ">2, stopped at round 3<" in page  # run 2: too few sites in round 3
    assert "Server coordinator" in page


def test_report_names_each_run_its_app_and_its_final_model(report: Path) -> None:
    page = report.read_text()
    runs = page[page.index('id="runs"') : page.index('id="sites"')]
    assert "grade-v1" in runs
    # The approved app in full, run by the server and every site that joined.
    assert f"<code>{APP}</code>" in runs
    assert "run by server, hospital-a, hospital-b, hospital-c" in runs
    assert f"<code>{MODEL_FILE}</code>" in runs
    assert "sha256sum final.safetensors" in runs
    assert "Different apps in one run" not in page
    # Each site's dataset table names the app its gate approved.
    site_a = page[page.index('id="site-hospital-a"') :].split("</article>")[0]
    assert f'<code title="{APP}">{APP[:12]}</code>' in site_a


def test_report_says_per_round_epsilons_do_not_add_up(report: Path) -> None:
    page = " ".join(report.read_text().split())
    assert page.count("do not add up") == 1 + 3  # the footer, and each site
    assert "the accountant's figure" in page


def test_report_says_which_log_each_line_number_is_of(
    report: Path, federation: list[Path]
) -> None:
    page = report.read_text()
    server = page[page.index('<article class="server"') :].split("</article>")[0]
    assert f"<code>{federation[3]}</code>" in server
    assert 'every "line" below is a line of this file (1-based)' in server
    assert f'<td class="num" title="{federation[3]}">' in server


def test_report_flags_a_run_whose_sites_ran_another_app(tmp_path: Path) -> None:
    server = _writer(tmp_path, "server", "coordinator", "server-audit.jsonl")
    site = _writer(tmp_path, "site", "hospital-a", "audit.jsonl")
    started = RunStarted(config_hash="c" * 64, strategy="fedavg", rounds=1)
    server.append(started.model_copy(update={"fab_hash": APP}), run_id=3, round=0)
    site.append(joined().model_copy(update={"fab_hash": "77" * 32}), run_id=3, round=1)

    page = build_report(load_logs([site.path, server.path]))

    assert "Different apps in one run" in page
    assert f"<code>{APP}</code>" in page
    assert f"<code>{'77' * 32}</code>" in page


def test_report_escapes_every_text_from_the_logs(tmp_path: Path) -> None:
    log = _writer(tmp_path, "site", "<img src=x onerror=alert(1)>", "audit.jsonl")
    log.append(RoundRefused(reason="<script>alert(1)</script>"), run_id=1, round=1)
    log.append(charge(1.0, budget=2.0), run_id=1, round=2)

    page = build_report(load_logs([log.path]))

    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-site="&lt;img src=x onerror=alert(1)&gt;"' in page


def test_report_flags_tampering_and_unmatched_updates(
    federation: list[Path], tmp_path: Path
) -> None:
    copies = []
    for path in (federation[0], federation[3]):
        folder = tmp_path / path.parent.parent.name
        shutil.copytree(path.parent, folder)
        copies.append(folder / path.name)
    lines = copies[0].read_bytes().splitlines(keepends=True)
    del lines[3]
    copies[0].write_bytes(b"".join(lines))

    page = build_report(load_logs(copies))

    assert "Verification FAILED" in page
    assert "deleted" in page
    assert "no matching release" in page  # hospital-b and -c were not given


def test_site_without_charges(tmp_path: Path) -> None:
    log = _writer(tmp_path, "site", "quiet", "audit.jsonl")
    log.append(RoundRefused(reason="no training patients"), run_id=5, round=1)

    page = build_report(load_logs([log.path]))

    assert "No round was charged." in page
    assert "No server log was given." in page


def test_runs_are_numbered_alike_across_the_page(tmp_path: Path) -> None:
    early = _writer(tmp_path, "site", "early", "audit.jsonl")
    late = _writer(tmp_path, "site", "late", "audit.jsonl")
    early.append(charge(1.0, budget=5.0), run_id=70, round=1)
    late.append(charge(2.0, budget=5.0), run_id=80, round=1)

    page = build_report(load_logs([late.path, early.path]))

    late_part = page[page.index('id="site-late"') :]
    assert '<span title="run id 80">2</span>' in late_part
    assert f'stroke="{SERIES_COLOURS[1]}"' in late_part.split("</svg>")[0]


def test_long_histories_keep_the_chart_small() -> None:
    charges = [
        Charge(
            "audit.jsonl",
            i + 1,
            7,
            i + 1,
            "2026-01-01T00:00:00+00:00",
            data=charge(0.0005 * i, budget=4.0),
        )
        for i in range(5000)
    ]
    over = charges[2000]
    charges[2000] = Charge(
        over.path,
        over.line,
        over.run_id,
        over.round,
        over.time,
        data=charge(4.5, budget=4.0),
    )

    svg = epsilon_chart("big", charges)

    chart = charges_in(svg)
    assert chart.epsilons == ["4.5", repr(0.0005 * 4999)]  # over budget, and the last
    assert len(svg) < 100_000
    assert "5000 charged rounds" in svg


def charges_in(fragment: str) -> Chart:
    return next(iter(charts(fragment).values()))


# --- rendered by headless Chromium -------------------------------------------------


def test_chromium_renders_each_site_against_its_budget(
    report: Path, federation: list[Path]
) -> None:
    dom = run_chromium(report, "--dump-dom").stdout

    assert "<svg" in dom
    _assert_each_site_against_its_budget(dom, federation)


def test_chromium_paints_the_budget_and_the_series(
    report: Path, tmp_path: Path
) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    run_chromium(report, f"--screenshot={shot}", "--window-size=1200,2400")

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    counts = {_hex(rgb): n for n, rgb in colours}
    assert counts.get(BUDGET_COLOUR, 0) > 200  # dashed budget lines and labels
    assert counts.get(SERIES_COLOURS[0], 0) > 200  # run 1's line and points
    assert counts.get(SERIES_COLOURS[1], 0) > 100  # run 2's


def _hex(rgb: tuple[int, ...] | float) -> str:
    assert isinstance(rgb, tuple)
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# --- the screenshot in the docs ------------------------------------------------------


def save_screenshot(target: Path) -> None:
    """Render the example federation's report and save a small PNG at ``target``."""
    from PIL import Image

    target = target.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path.cwd()
        os.chdir(tmp)
        try:
            logs = [p.relative_to(Path(tmp)) for p in write_federation(Path(tmp))]
            page = Path(tmp) / "report.html"
            page.write_text(build_report(load_logs(logs)), encoding="utf-8")
            shot = Path(tmp) / "shot.png"
            run_chromium(page, f"--screenshot={shot}", "--window-size=1200,1600")
        finally:
            os.chdir(cwd)
        image = Image.open(shot).convert("RGB")
        small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        target.parent.mkdir(parents=True, exist_ok=True)
        small.save(target, optimize=True)


if __name__ == "__main__":
    save_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "audit-report.png"))


def test_report_warns_in_a_box_when_no_keys_were_pinned(tmp_path: Path) -> None:
    log = _writer(tmp_path, "site", "hospital-a", "audit.jsonl")
    log.append(charge(1.0, budget=2.0), run_id=1, round=1)

    unpinned = build_report(load_logs([log.path]))
    pinned = build_report(load_logs([log.path]), trusted_keys=True)

    assert '<div class="verdict bad" role="alert"><strong>No pinned keys.' in unpinned
    assert "No pinned keys" not in pinned
