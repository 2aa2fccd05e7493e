"""The scratch buffers stored tiles are decoded into: the fastest one is kept."""

from __future__ import annotations

import threading
import time

import numpy as np
from numpy.typing import NDArray

from slidefed.client.slides import scratch
from slidefed.client.slides.scratch import decode_into_scratch


class _Decoder:
    """A decode whose speed depends on the buffer: all but one buffer are slow."""

    def __init__(self, fast_turn: int) -> None:
        self.fast_turn = fast_turn
        self.seen: list[int] = []  # buffer ids, in call order
        self.fast: int | None = None
        self.alive: list[NDArray[np.uint8]] = []  # so that no id is reused

    def __call__(self, into: NDArray[np.uint8]) -> NDArray[np.uint8]:
        key = id(into)
        self.alive.append(into)
        if key not in self.seen and len(set(self.seen)) == self.fast_turn:
            self.fast = key
        self.seen.append(key)
        if key != self.fast:
            time.sleep(0.003)
        into[...] = len(self.seen) % 251
        return into


def test_the_fastest_buffer_is_kept_after_the_trial_decodes() -> None:
    shape = (5, 7, 3)
    decoder = _Decoder(fast_turn=1)  # the second candidate is the fast one
    trial = scratch._CANDIDATES * scratch._TRIALS
    for _ in range(trial + 20):
        out = decode_into_scratch(shape, decoder)
        assert out.shape == shape
        assert int(out[0, 0, 0]) == len(decoder.seen) % 251  # this call's pixels
    assert len(set(decoder.seen[:trial])) == scratch._CANDIDATES
    assert decoder.fast is not None
    assert decoder.seen[trial:] == [decoder.fast] * 20


def test_every_trial_decode_is_a_real_decode_whose_result_is_returned() -> None:
    shape = (3, 3, 3)
    calls = []

    def decode(into: NDArray[np.uint8]) -> NDArray[np.uint8]:
        calls.append(1)
        return np.full(shape, len(calls), np.uint8)  # a tile not filling the buffer

    results = [int(decode_into_scratch(shape, decode)[0, 0, 0]) for _ in range(10)]
    assert results == list(range(1, 11))
    assert len(calls) == 10


def test_buffers_are_tried_again_after_many_decodes(monkeypatch) -> None:
    monkeypatch.setattr(scratch, "_RETRIAL_AFTER", 5)
    shape = (2, 9, 3)
    decoder = _Decoder(fast_turn=0)
    trial = scratch._CANDIDATES * scratch._TRIALS
    for _ in range(trial + 5 + trial):
        decode_into_scratch(shape, decoder)
    second_trial = decoder.seen[trial + 5 :]
    # The kept buffer and new candidates: the trial runs over several again.
    assert len(set(second_trial)) == scratch._CANDIDATES
    assert decoder.fast in second_trial


def test_threads_never_share_a_buffer() -> None:
    shape = (4, 4, 3)
    ids: dict[str, set[int]] = {"a": set(), "b": set()}
    alive: list[NDArray[np.uint8]] = []  # so that no id is reused

    def worker(name: str) -> None:
        def decode(into: NDArray[np.uint8]) -> NDArray[np.uint8]:
            ids[name].add(id(into))
            alive.append(into)
            return into

        for _ in range(20):
            decode_into_scratch(shape, decode)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ids["a"]
    assert ids["b"]
    assert not ids["a"] & ids["b"]
