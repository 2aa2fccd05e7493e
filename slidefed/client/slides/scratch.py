"""Scratch buffers to decode stored tiles into, the fastest of a few kept.

How fast a JPEG decodes into a buffer depends on where the buffer lies: on
the machines this was measured on, the same tiles decoded into one buffer
take 1.4x the time they take in another buffer allocated beside it, and which
buffer is the slow one changes from process to process (it depends on where
the decoder's own working memory lands). A reader that decodes every stored
tile into one scratch buffer and copies it out (:mod:`~slidefed.client.slides.
scatter`) would then run 1.4x slower in some processes for no reason of its
own.

:func:`decode_into_scratch` therefore times the first decodes of each buffer
shape in turn over a few candidate buffers and keeps the fastest. The trial
decodes are the reader's real decodes (none is repeated or thrown away), and a
new trial runs every :data:`_RETRIAL_AFTER` decodes, as the decoder's memory
may move. Buffers are per thread: a decode and the copy out of it happen with
no other decode into the same buffer in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

#: Buffers tried per shape, and decodes timed in each before one is kept.
_CANDIDATES = 3
_TRIALS = 2
#: Decodes into the kept buffer before the buffers are tried again.
_RETRIAL_AFTER = 4096

Shape = tuple[int, int, int]


@dataclass
class _Trial:
    """The candidates of one shape and the seconds each took to decode into."""

    buffers: list[NDArray[np.uint8]]
    seconds: list[list[float]] = field(init=False)
    turn: int = 0

    def __post_init__(self) -> None:
        self.seconds = [[] for _ in self.buffers]

    def best(self) -> NDArray[np.uint8]:
        fastest = min(range(len(self.buffers)), key=lambda i: min(self.seconds[i]))
        return self.buffers[fastest]


@dataclass
class _Kept:
    buffer: NDArray[np.uint8]
    uses: int = 0


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.kept: dict[Shape, _Kept] = {}
        self.trials: dict[Shape, _Trial] = {}


_BUFFERS = _Buffers()


def _fresh(shape: Shape) -> NDArray[np.uint8]:
    buffer = np.empty(shape, dtype=np.uint8)
    buffer.fill(0)  # its pages faulted in now, not in the first timed decode
    return buffer


def decode_into_scratch(
    shape: Shape, decode: Callable[[NDArray[np.uint8]], NDArray[np.uint8]]
) -> NDArray[np.uint8]:
    """``decode(buffer)`` with this thread's scratch buffer of ``shape``.

    Returns what ``decode`` returns (the buffer, or an array of its own for a
    tile that does not fill it). The result is valid until the next call for
    the same shape in this thread.
    """
    kept = _BUFFERS.kept.get(shape)
    if kept is not None and kept.uses < _RETRIAL_AFTER:
        kept.uses += 1
        return decode(kept.buffer)
    trial = _BUFFERS.trials.get(shape)
    if trial is None:
        first = [kept.buffer] if kept is not None else []
        others = [_fresh(shape) for _ in range(_CANDIDATES - len(first))]
        trial = _BUFFERS.trials[shape] = _Trial(first + others)
        _BUFFERS.kept.pop(shape, None)
    index = trial.turn % len(trial.buffers)
    started = time.perf_counter()
    out = decode(trial.buffers[index])
    trial.seconds[index].append(time.perf_counter() - started)
    trial.turn += 1
    if trial.turn >= _CANDIDATES * _TRIALS:
        _BUFFERS.kept[shape] = _Kept(trial.best())
        del _BUFFERS.trials[shape]
    return out


__all__ = ["decode_into_scratch"]
