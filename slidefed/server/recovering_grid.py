"""A Grid that asks a silent site again within the round, and polls briskly.

Flower's ``send_and_receive`` pushes a stage's messages, then polls the SuperLink
every 3 s until every reply is in or the stage's timeout passes. A reply lost on
the way (the SuperLink's state busy under many nodes, a dropped connection) is
simply missing at the end, although the site was charged for it.

:class:`RecoveringGrid` wraps the run's Grid. It polls every ``poll`` seconds, and
when a site stays silent ``patience`` seconds after it was last asked
(``PATIENCE_FACTOR`` times the slowest reply of the stage so far, at least
``min_patience``), and ``min_patience`` after the latest reply from another
site, it sends that site the same instruction again, while the stage has time left. A site
answers a repeated instruction from its stored release: the same bytes, no new
charge (see ``slidefed.client.privacy.releases``). Each repeat is audited
(``reply_reasked``); a site still silent at the deadline is audited as
``reply_lost``, so the auditor's cross-check shows every release the server never
aggregated.

Each outstanding reply is pulled on its own, in a daemon thread
(:class:`_Pull`). Flower's ``pull_messages`` fetches the content of every reply it
returns before it returns any: a reply whose upload failed half-way (the node
gave up on a 500 from the SuperLink's busy database) is retried for up to
``PULL_MAX_TIME`` (7,200 s), and in practice until the SuperLink drops its
object-push session (180 s), holding every other reply of the same call. Pulled
one by one, the others arrive, and the stuck one is asked again meanwhile. The
pulls of a stage together stay under ``PULLS_PER_SECOND``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
"""How often the replies are pulled (while few are outstanding: see ``PULLS_PER_SECOND``)."""

PULLS_PER_SECOND = 3.0
"""Pull requests a stage sends the SuperLink per second, all outstanding replies
together. Each pull is a write to the SuperLink's SQLite state; at ten sites a
pull of every reply every half second kept its write lock busy enough that the
ServerApp's own heartbeat was answered "database is locked" and Flower ended the
run (see ``slidefed.deploy.superlink_main``). With ``n`` replies outstanding each
is pulled every ``max(poll, n / PULLS_PER_SECOND)`` seconds."""


def pull_rate(grid: Any) -> float:
    """Reply pulls a second for ``grid``: ``PULLS_PER_SECOND``, or none in a simulation.

    The simulation engine's grid keeps its state in memory, where a pull takes no
    database lock; capped there, 50 sites' replies waited up to 17 s each stage.
    """
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return math.inf if isinstance(grid, InMemoryGrid) else PULLS_PER_SECOND


MIN_PATIENCE = 10.0
"""Seconds a site may stay silent after another site's reply before it is asked again.

A repeat costs the site no budget (it answers from its stored release, or trains
again with the same randomness if it had not finished), only time."""


MESSAGE_UNAVAILABLE = 3
"""Flower's error code for a reply whose objects never reached the SuperLink."""

PATIENCE_FACTOR = 1.5
"""A silent site is asked again once this many times as long as the slowest reply
of the stage took (and at least ``MIN_PATIENCE``) has passed since it was asked: a
site whose ClientApp takes long to start is not asked again before it could
answer (its node handles one message at a time, so an early copy only queues)."""

MAX_ASKS = 3
"""Times an instruction is sent to one site in one stage (the first included)."""


Notify = Callable[[str, int, str, int | None, int], None]
"""Called with (``reasked`` or ``lost``, node id, stage, server round, times asked)."""


def _unavailable(reply: Message) -> bool:
    """Whether a reply is Flower's stand-in for one whose content never arrived."""
    return bool(reply.has_error() and reply.error.code == MESSAGE_UNAVAILABLE)


def _server_round(message: Message) -> int | None:
    if not message.has_content():
        return None
    for record in message.content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class _Pull:
    """One ``pull_messages`` call for one reply, in a daemon thread.

    A daemon thread, so that a pull stuck in Flower's retries never holds the
    ServerApp's exit.
    """

    def __init__(self, grid: Any, message_id: str) -> None:
        self._done = threading.Event()
        self._replies: list[Message] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(grid, message_id), daemon=True
        )
        self._thread.start()

    def _run(self, grid: Any, message_id: str) -> None:
        try:
            self._replies = list(grid.pull_messages([message_id]))
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        """Whether the call returned within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def result(self) -> list[Message]:
        """The replies pulled; the call's exception, if it raised one."""
        if self._error is not None:
            raise self._error
        return self._replies


class RecoveringGrid:
    """Wraps a Flower Grid: ``send_and_receive`` re-asks silent sites.

    Every other attribute is the wrapped Grid's.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The run's Grid.
    notify : callable
        Told of each repeat and each reply still missing at the deadline.
    poll, min_patience, pulls_per_second : float
        See the module's constants.
    max_asks : int
        Sends per site and stage, the first included.
    """

    def __init__(
        self,
        grid: Any,
        notify: Notify,
        *,
        poll: float = POLL_SECONDS,
        min_patience: float = MIN_PATIENCE,
        max_asks: int = MAX_ASKS,
        pulls_per_second: float = PULLS_PER_SECOND,
    ) -> None:
        self._grid = grid
        self._round_began: dict[int, float] = {}
        self._pulls_per_second = pulls_per_second
        self._notify = notify
        self._poll = poll
        self._min_patience = min_patience
        self._max_asks = max_asks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _copy(self, message: Message, ttl: float | None = None) -> Message:
        """A fresh message with the same instruction for the same site.

        A repeat lives only as long as its stage (``ttl``): a site that comes back
        later must not find it waiting and answer a round that is over.
        """
        return Message(
            content=message.content,
            dst_node_id=message.metadata.dst_node_id,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
            ttl=ttl,
        )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push the messages; pull replies, asking silent sites again, until done.

        Parameters
        ----------
        messages : iterable of Message
            One instruction per site.
        timeout : float, optional
            Seconds for the whole server round, counted from its first stage
            (None: wait as long as it takes).

        Returns
        -------
        list of Message
            At most one reply per site.
        """
        start = time.monotonic()
        originals = {m.metadata.dst_node_id: m for m in messages}
        end = self._deadline(originals.values(), start, timeout)
        if end is not None and end <= start:
            first = next(iter(originals.values()), None)
            if first is not None:
                logger.warning(
                    "round %s has no time left for its %s stage (round-timeout): "
                    "nothing sent",
                    _server_round(first),
                    first.metadata.message_type,
                )
            return []
        keep = {node: self._copy(m) for node, m in originals.items()}
        waiting: dict[str, int] = {}  # message id -> node
        for node, mid in zip(
            originals, self._grid.push_messages(list(originals.values())), strict=True
        ):
            waiting[mid] = node
        asks = dict.fromkeys(originals, 1)
        replies: dict[int, Message] = {}
        last_reply = start
        asked_at = dict.fromkeys(originals, start)
        pulls: dict[str, _Pull] = {}
        self._pulled_at: dict[str, float] = {}
        slowest = 0.0  # seconds from an ask to its reply, the longest this stage
        while waiting and (end is None or time.monotonic() < end):
            for reply in self._pull(waiting, pulls):
                mid = reply.metadata.reply_to_message_id
                if mid not in waiting:
                    continue
                node = waiting.pop(mid)
                if node in replies:
                    continue
                if _unavailable(reply):
                    # The SuperLink holds the reply but not its content: it is lost.
                    self._ask_again(keep, node, waiting, asks, end)
                    asked_at[node] = time.monotonic()
                    continue
                replies[node] = reply
                last_reply = time.monotonic()
                slowest = max(slowest, last_reply - asked_at[node])
                # Later copies to the same site are not waited for.
                waiting = {m: n for m, n in waiting.items() if n != node}
            if waiting:
                patience = max(self._min_patience, PATIENCE_FACTOR * slowest)
                self._reask(
                    keep, replies, waiting, asks, asked_at, (last_reply, patience), end
                )
                time.sleep(self._poll)
        for node, message in keep.items():
            if node not in replies:
                self._notify(
                    "lost",
                    node,
                    str(message.metadata.message_type),
                    _server_round(message),
                    asks[node],
                )
        return list(replies.values())

    def _deadline(
        self, messages: Iterable[Message], start: float, timeout: float | None
    ) -> float | None:
        """When this stage must end: ``timeout`` after the round's first stage began.

        Flower gives each stage (train, then evaluate) the whole ``round-timeout``;
        here the stages of one server round share it, so a round never runs past it.
        """
        if timeout is None:
            return None
        rounds = {_server_round(m) for m in messages} - {None}
        if len(rounds) != 1:
            return start + timeout
        began = self._round_began.setdefault(rounds.pop(), start)  # type: ignore[arg-type]
        return began + timeout

    def _pull(self, waiting: dict[str, int], pulls: dict[str, _Pull]) -> list[Message]:
        """The replies that arrived: each waiting message pulled on its own.

        A message whose last pull has not returned is not pulled again; a stuck
        pull holds only its own reply. A message is pulled again only ``spacing``
        seconds after its last pull started.
        """
        now = time.monotonic()
        spacing = max(self._poll, len(waiting) / self._pulls_per_second)
        for mid in waiting:
            if mid in pulls or now - self._pulled_at.get(mid, -spacing) < spacing:
                continue
            pulls[mid] = _Pull(self._grid, mid)
            self._pulled_at[mid] = now
        deadline = time.monotonic() + self._poll
        for pull in list(pulls.values()):
            pull.wait(max(0.0, deadline - time.monotonic()))
        replies: list[Message] = []
        for mid in [m for m, p in pulls.items() if p.wait(0)]:
            replies.extend(pulls.pop(mid).result())
        return replies

    def _ask_again(
        self,
        keep: dict[int, Message],
        node: int,
        waiting: dict[str, int],
        asks: dict[int, int],
        end: float | None,
    ) -> None:
        """Send a site its instruction again now, if it may be asked and has time."""
        now = time.monotonic()
        if asks[node] >= self._max_asks:
            return
        if end is not None and end - now < self._min_patience:
            return
        ttl = None if end is None else max(1.0, end - now)
        (mid,) = self._grid.push_messages([self._copy(keep[node], ttl)])
        waiting[mid] = node
        asks[node] += 1
        logger.warning(
            "no reply from site %s yet; asking again (%d of %d)",
            node,
            asks[node],
            self._max_asks,
        )
        self._notify(
            "reasked",
            node,
            str(keep[node].metadata.message_type),
            _server_round(keep[node]),
            asks[node],
        )

    def _reask(
        self,
        keep: dict[int, Message],
        replies: dict[int, Message],
        waiting: dict[str, int],
        asks: dict[int, int],
        asked_at: dict[int, float],
        wait: tuple[float, float],
        end: float | None,
    ) -> None:
        """Ask again the sites silent for ``patience`` since they were asked.

        ``wait``: when the latest reply came, and the patience (seconds).
        """
        if not replies:
            return  # nobody answered yet: nothing says a reply was lost
        now = time.monotonic()
        last_reply, patience = wait
        if now - last_reply < self._min_patience:
            return
        for node in sorted(set(waiting.values()) - set(replies)):
            if now - asked_at[node] >= patience:
                self._ask_again(keep, node, waiting, asks, end)
                asked_at[node] = now


__all__ = [
    "MAX_ASKS",
    "MIN_PATIENCE",
    "PATIENCE_FACTOR",
    "POLL_SECONDS",
    "PULLS_PER_SECOND",
    "RecoveringGrid",
    "pull_rate",
]
