"""The ServerApp's Grid asks a silent site again within the stage's deadline."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from flwr.app import (
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from slidefed.server.recovering_grid import RecoveringGrid


class _Link:
    """A SuperLink's message store: replies arrive after ``delay`` pulls.

    ``lose`` names (node, nth send) pairs whose reply never arrives, as when a
    node's upload fails.
    """

    def __init__(
        self,
        lose: set[tuple[int, int]],
        delay: int = 1,
        unavailable: set[tuple[int, int]] | None = None,
    ) -> None:
        self.lose = lose
        self.unavailable = unavailable or set()
        self.delay = delay
        self.ids = itertools.count(1)
        self.sent: list[tuple[int, int]] = []  # (node, nth send)
        self.pending: dict[str, tuple[Message, int, bool]] = {}

    def push_messages(self, messages: list[Message]) -> list[str]:
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            nth = 1 + sum(1 for n, _ in self.sent if n == node)
            self.sent.append((node, nth))
            mid = f"m{next(self.ids)}"
            if (node, nth) not in self.lose:
                self.pending[mid] = (
                    message,
                    self.delay,
                    (node, nth) in self.unavailable,
                )
            out.append(mid)
        return out

    def pull_messages(self, ids: list[str]) -> list[Message]:
        out = []
        for mid in ids:
            if mid not in self.pending:
                continue
            message, wait, gone = self.pending[mid]
            if wait > 0:
                self.pending[mid] = (message, wait - 1, gone)
                continue
            del self.pending[mid]
            meta = Metadata(
                run_id=1,
                message_id=f"r{mid}",
                src_node_id=message.metadata.dst_node_id,
                dst_node_id=1,
                reply_to_message_id=mid,
                group_id="",
                created_at=time.time(),
                ttl=60.0,
                message_type="train",
            )
            if gone:  # what Flower's Grid returns when a reply's objects never came
                error = Error(code=3, reason="Reply message objects are unavailable.")
                out.append(Message(error=error, metadata=meta))  # type: ignore[call-overload]
                continue
            content = RecordDict({"m": MetricRecord({"x": 1.0})})
            out.append(Message(content=content, metadata=meta))  # type: ignore[call-overload]
        return out

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


@pytest.fixture(autouse=True)
def _in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # A ServerApp makes its messages inside a run; so do these tests.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _instructions(round_: int = 4) -> list[Message]:
    content = RecordDict({"config": ConfigRecord({"server-round": round_})})
    return [
        Message(content=content, dst_node_id=node, message_type="train")
        for node in (1, 2, 3)
    ]


def _grid(link: _Link, events: list[tuple[Any, ...]]) -> RecoveringGrid:
    return RecoveringGrid(
        link,
        lambda *event: events.append(event),
        poll=0.01,
        min_patience=0.05,
        pulls_per_second=1000.0,
    )


def test_a_lost_reply_is_asked_again_and_recovered_in_the_stage() -> None:
    link = _Link(lose={(2, 1)})
    events: list[tuple[Any, ...]] = []
    replies = list(_grid(link, events).send_and_receive(_instructions(), timeout=5))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert sorted(link.sent) == [(1, 1), (2, 1), (2, 2), (3, 1)]
    assert events == [("reasked", 2, "train", 4, 2)]


def test_a_site_silent_to_the_end_is_reported_lost_after_the_last_ask() -> None:
    link = _Link(lose={(3, 1), (3, 2), (3, 3)})
    events: list[tuple[Any, ...]] = []
    replies = list(_grid(link, events).send_and_receive(_instructions(), timeout=1))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]
    assert [n for n, _ in link.sent].count(3) == 3  # MAX_ASKS, never more
    assert events[-1] == ("lost", 3, "train", 4, 3)
    assert [e[0] for e in events] == ["reasked", "reasked", "lost"]


def test_nobody_is_asked_again_while_no_site_has_answered() -> None:
    link = _Link(lose=set(), delay=20)
    events: list[tuple[Any, ...]] = []
    replies = list(_grid(link, events).send_and_receive(_instructions(), timeout=5))
    assert len(replies) == 3
    assert len(link.sent) == 3
    assert events == []


def test_the_wait_is_bounded_by_the_stage_timeout() -> None:
    link = _Link(lose={(1, n) for n in (1, 2, 3)} | {(2, 1), (3, 1)})
    events: list[tuple[Any, ...]] = []
    start = time.monotonic()
    replies = list(_grid(link, events).send_and_receive(_instructions(), timeout=0.5))
    assert time.monotonic() - start < 1.0
    assert replies == []
    assert sorted(e[1] for e in events if e[0] == "lost") == [1, 2, 3]


def test_a_reply_whose_content_never_came_is_asked_again_at_once() -> None:
    link = _Link(lose=set(), unavailable={(3, 1)})
    events: list[tuple[Any, ...]] = []
    grid = _grid(link, events)
    replies = list(grid.send_and_receive(_instructions(), timeout=5))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert not any(r.has_error() for r in replies)
    assert events == [("reasked", 3, "train", 4, 2)]


class _StuckLink(_Link):
    """A link whose pull of one reply hangs, as Flower's does while it retries the
    objects of an upload that failed half-way."""

    def __init__(self, stuck: tuple[int, int]) -> None:
        super().__init__(lose=set())
        self.stuck = stuck
        self.release = threading.Event()
        self.stuck_ids: set[str] = set()

    def push_messages(self, messages: list[Message]) -> list[str]:
        before = len(self.sent)
        ids = super().push_messages(messages)
        for mid, sent in zip(ids, self.sent[before:], strict=True):
            if sent == self.stuck:
                self.stuck_ids.add(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        if self.stuck_ids & set(ids):
            self.release.wait(30)
            return []
        return super().pull_messages(ids)


def test_a_pull_stuck_on_one_reply_holds_neither_the_others_nor_the_repeat() -> None:
    link = _StuckLink(stuck=(2, 1))
    events: list[tuple[Any, ...]] = []
    start = time.monotonic()
    try:
        replies = list(
            _grid(link, events).send_and_receive(_instructions(), timeout=10)
        )
    finally:
        link.release.set()
    assert time.monotonic() - start < 5
    # Site 2's first reply is stuck in its pull; asked again, it answers.
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert events == [("reasked", 2, "train", 4, 2)]


def test_a_slow_site_is_not_asked_again_before_it_could_answer() -> None:
    # Every reply takes 20 polls: well past min_patience. Site 2's first reply
    # is lost; its second comes as slowly as the others did.
    link = _Link(lose={(2, 1)}, delay=20)
    events: list[tuple[Any, ...]] = []
    replies = list(_grid(link, events).send_and_receive(_instructions(), timeout=10))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert [n for n, _ in link.sent].count(2) == 2, link.sent
    assert events == [("reasked", 2, "train", 4, 2)]


class _CountingLink(_Link):
    """A link that counts pull requests."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pulls = 0

    def pull_messages(self, ids: list[str]) -> list[Message]:
        self.pulls += 1
        return super().pull_messages(ids)


def test_the_pulls_of_a_stage_stay_under_the_rate_however_many_sites_wait() -> None:
    # Three silent sites, 2 pulls a second: about 2 a second in all, not 3 a poll.
    link = _CountingLink(lose={(1, 1), (2, 1), (3, 1)})
    grid = RecoveringGrid(
        link, lambda *e: None, poll=0.01, min_patience=60, pulls_per_second=2.0
    )
    start = time.monotonic()
    assert list(grid.send_and_receive(_instructions(), timeout=2.0)) == []
    seconds = time.monotonic() - start
    # Each site is pulled at once, then every 1.5 s: 6 pulls in 2 s, never one a poll.
    assert link.pulls <= 3 * (1 + int(seconds / 1.5)) + 3
    assert link.pulls >= 3


def test_one_outstanding_reply_is_still_pulled_every_poll() -> None:
    link = _CountingLink(lose=set(), delay=5)
    grid = RecoveringGrid(
        link, lambda *e: None, poll=0.02, min_patience=60, pulls_per_second=1000.0
    )
    replies = list(grid.send_and_receive(_instructions()[:1], timeout=5.0))
    assert [r.metadata.src_node_id for r in replies] == [1]
    assert link.pulls == 6  # five empty pulls, then the reply


def _evaluations(round_: int = 4) -> list[Message]:
    content = RecordDict({"config": ConfigRecord({"server-round": round_})})
    return [
        Message(content=content, dst_node_id=node, message_type="evaluate")
        for node in (1, 2, 3)
    ]


def test_the_stages_of_a_round_share_its_timeout() -> None:
    # Site 3 never answers training: the train stage runs to the round's deadline,
    # and the evaluate stage of the same round has no time left, so nothing is sent.
    link = _Link(lose={(3, 1), (3, 2), (3, 3)})
    events: list[tuple[Any, ...]] = []
    grid = _grid(link, events)
    start = time.monotonic()
    trained = list(grid.send_and_receive(_instructions(), timeout=0.6))
    assert len(trained) == 2
    sent = len(link.sent)
    assert list(grid.send_and_receive(_evaluations(), timeout=0.6)) == []
    assert time.monotonic() - start < 0.9
    assert len(link.sent) == sent  # no evaluation was asked for
    # The next round has its own timeout.
    assert len(list(grid.send_and_receive(_evaluations(5), timeout=0.6))) == 3


def test_the_evaluate_stage_gets_what_the_train_stage_left() -> None:
    link = _Link(lose=set(), delay=2)
    grid = _grid(link, [])
    start = time.monotonic()
    assert len(list(grid.send_and_receive(_instructions(), timeout=5.0))) == 3
    link.delay = 10_000  # evaluations never come: the stage ends at the deadline
    assert list(grid.send_and_receive(_evaluations(), timeout=5.0)) == []
    assert 4.8 < time.monotonic() - start < 6.0


def test_only_a_superlinks_grid_has_its_pulls_capped() -> None:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from slidefed.server.recovering_grid import PULLS_PER_SECOND, pull_rate

    # The simulation's grid keeps its state in memory: no SQLite lock to spare.
    assert pull_rate(object.__new__(InMemoryGrid)) == float("inf")
    assert pull_rate(object()) == PULLS_PER_SECOND
