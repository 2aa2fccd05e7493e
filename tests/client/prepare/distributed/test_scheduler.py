"""The scheduler's failure paths, on a stand-in for Ray that runs tasks in-process.

A real cluster cannot be told to lose a task three times in a row; this stand-in
can. It offers the few calls the scheduler makes (``init``, ``remote``, ``wait``,
``get``, ``cancel``, ...) and runs each task when it is submitted.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slidefed.client.config import load_site_config
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.demo.synth import SynthSite


class _RayError(Exception):
    pass


class _TaskError(_RayError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Crashed(_RayError):
    pass


class _Ref:
    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run


class _FakeRay(types.ModuleType):
    """Runs tasks at submission; tasks for ``lost`` paths crash, ``broken`` raise."""

    def __init__(self, *, lost: set[str], broken: set[str]) -> None:
        super().__init__("ray")
        self.lost, self.broken = lost, broken
        self.exceptions = types.SimpleNamespace(
            RayTaskError=_TaskError, RayError=_RayError
        )
        self.options_seen: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **_: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def nodes(self) -> list[dict[str, Any]]:
        cpu = {"CPU": 1.0}
        return [
            {"NodeID": "n1", "Alive": True, "Resources": cpu},
            {"NodeID": "n2", "Alive": True, "Resources": cpu},
        ]

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, fn: Callable[..., Any] | None = None, **_: Any) -> Any:
        if fn is None:
            return self.remote
        fake, task = self, fn

        class _Remote:
            def options(self, **opts: Any) -> _Remote:
                fake.options_seen.append(opts)
                return self

            def remote(self, *args: Any) -> _Ref:
                fake.in_flight += 1
                fake.peak = max(fake.peak, fake.in_flight)
                return _Ref(lambda: fake.execute(task, args))

        return _Remote()

    def execute(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        path = getattr(args[0], "path", "") if args else ""
        if Path(path).name in self.lost:
            raise _Crashed("worker died")
        if Path(path).name in self.broken:
            raise _TaskError(MemoryError("out of memory"))
        return fn(*args)

    def wait(self, refs: list[_Ref], num_returns: int) -> tuple[list[_Ref], list[_Ref]]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref | list[_Ref]) -> Any:
        if isinstance(ref, list):
            return [self.get(r) for r in ref]
        self.in_flight -= 1
        return ref.run()

    def cancel(self, ref: _Ref) -> None:
        pass

    def put(self, value: Any) -> Any:
        # A task gets the value itself: Ray resolves a ref given as an argument.
        return value


def _install(monkeypatch: pytest.MonkeyPatch, fake: _FakeRay) -> None:
    util = types.ModuleType("ray.util")
    strategies = types.ModuleType("ray.util.scheduling_strategies")
    strategies.NodeAffinitySchedulingStrategy = lambda *a, **k: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.util", util)
    monkeypatch.setitem(sys.modules, "ray.util.scheduling_strategies", strategies)


def _site(small_site: SynthSite, folder: Path) -> tuple[Path, list[str]]:
    """Four of the shared slides, in a site of their own (own state)."""
    lines = small_site.manifest.read_text().splitlines()[:5]
    folder.mkdir()
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    toml = folder / "site.toml"
    toml.write_text(
        f'[site]\nname = "t"\nslides_root = "{small_site.root}"\n'
        "[features]\nbatch_size = 4\n[prepare]\nray_region_tiles = 8\n"
        "ray_max_in_flight = 2\n"
    )
    names = [Path(line.split(",")[0]).name for line in lines[1:]]
    return toml, names


def test_a_lost_or_failing_slide_is_recorded_and_the_rest_go_on(
    small_site: SynthSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml, names = _site(small_site, tmp_path / "site")
    fake = _FakeRay(lost={names[0]}, broken={names[1]})
    _install(monkeypatch, fake)

    report = prepare_site(load_site_config(toml), ray_address="auto")

    by_name = {Path(s.slide).name: s for s in report.slides}
    assert by_name[names[0]].status == "skipped"
    assert by_name[names[0]].reason.startswith("lost on the cluster after 3 retries")
    assert by_name[names[1]].status == "skipped"
    assert (
        "failed on the cluster (MemoryError: out of memory)" in by_name[names[1]].reason
    )
    assert [by_name[n].status for n in names[2:]] == ["ok", "ok"]
    assert fake.peak <= 2  # ray_max_in_flight
    assert all(o["max_retries"] == 3 for o in fake.options_seen if "max_retries" in o)

    # Neither failure is remembered: the next run prepares both slides.
    _install(monkeypatch, _FakeRay(lost=set(), broken=set()))
    again = prepare_site(load_site_config(toml), ray_address="auto")
    assert Counter(s.status for s in again.slides) == {"ok": 2, "cached": 2}
