"""Interleaved timing of alternatives, so that machine noise hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], *, reps: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each candidate, run in rotating order.

    A candidate runs cold after one that fills the CPU caches with its own
    data, so each also runs after different ones: the rotations alternate
    with rotations of the reversed order (A B C, C B A, B C A, A C B, ...), in
    which a candidate follows its other neighbour. With a fixed cyclic order
    one candidate would follow the same one every time.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        base = names if rep % 2 == 0 else names[::-1]
        shift = (rep // 2) % len(names)
        order = base[shift:] + base[:shift]
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


__all__ = ["interleaved_medians"]
