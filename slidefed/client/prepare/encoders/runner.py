"""Running a frozen torch model over tiles: the same code on a GPU and a CPU.

On CUDA, each batch of uint8 tiles is copied into one of two pinned host
buffers and sent to the device without blocking; the model runs in bfloat16
(autocast) on channels-last inputs; features stay on the device until the whole
call is done, so that the host prepares the next batch while the device computes
this one. A batch that runs out of device memory is halved and tried again, and
the smaller size is kept (the batch size is fitted to memory). ``torch.compile``
is optional. On a CPU the model runs in float32, batch after batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Turns the model and a normalised (n, 3, h, w) batch into (n, dim) features.
Forward = Callable[[Any, "torch.Tensor"], "torch.Tensor"]


def _call(model: Any, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = model(x)
    return out


class TorchEncoder:
    """A frozen torch model over uint8 tiles, batched, bf16 on a GPU.

    Parameters
    ----------
    model : torch.nn.Module
        The model; moved to ``device`` and frozen here.
    encoder_id : str
        Its id in the feature cache key (with the weights' hash).
    dim : int
        Length of one feature vector.
    input_size : int
        Side (px) the model takes; other tiles are resized to it.
    mean, std : tuple of float
        Normalisation of RGB values in [0, 1].
    mpp : float, optional
        Resolution (um/px) the model was trained at.
    device : str, optional
        ``cuda``, ``cpu``, ...; default: CUDA when available.
    batch_size : int
        Tiles per forward pass (halved on a device out of memory).
    compile : bool
        Run the model through ``torch.compile``.
    forward : callable, optional
        How to get features from the model's output (default: call it).
    """

    #: The model runs once, in the main process, fed by reader processes.
    in_workers = False

    def __init__(
        self,
        model: Any,
        *,
        encoder_id: str,
        dim: int,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        mpp: float | None,
        device: str | None = None,
        batch_size: int = 64,
        compile: bool = False,
        forward: Forward | None = None,
    ) -> None:
        import torch

        self.device = torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.cuda = self.device.type == "cuda"
        model = model.eval().requires_grad_(False).to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        self.encoder_id = encoder_id
        self.dim = dim
        self.input_size = input_size
        self.mpp = mpp
        self.batch_size = batch_size
        self.bf16 = self.cuda
        self._forward = forward or _call
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._pinned: list[torch.Tensor] = []
        self._copied: list[torch.cuda.Event] = []

    # ------------------------------------------------------------------ public
    def encode(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Encode (n, h, w, 3) uint8 tiles into (n, dim) float32 features."""
        return self.submit(tiles)()

    def submit(self, tiles: NDArray[np.uint8]) -> Callable[[], NDArray[np.float32]]:
        """Start encoding ``tiles``; the returned call gives their features.

        On CUDA the work is queued on the device and the host is free until the
        result is asked for; on a CPU it is done here.
        """
        import torch

        if len(tiles) == 0:
            empty = np.zeros((0, self.dim), np.float32)
            return lambda: empty
        while True:
            try:
                feats = self._run(tiles)
                break
            except torch.OutOfMemoryError as exc:
                if self.batch_size <= 1:
                    raise ConfigError(
                        "features: one tile does not fit in device memory; set "
                        '[features] device = "cpu" or use a smaller encoder'
                    ) from exc
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                logger.warning(
                    "device out of memory: encoder batch size lowered to %d",
                    self.batch_size,
                )

        def result() -> NDArray[np.float32]:
            return np.asarray(feats.float().cpu().numpy(), dtype=np.float32)

        return result

    # ----------------------------------------------------------------- private
    def _run(self, tiles: NDArray[np.uint8]) -> torch.Tensor:
        import torch

        parts: list[torch.Tensor] = []
        with torch.inference_mode():
            for i, start in enumerate(range(0, len(tiles), self.batch_size)):
                chunk = tiles[start : start + self.batch_size]
                parts.append(self._batch(self._to_device(chunk, i % 2)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _to_device(self, chunk: NDArray[np.uint8], slot: int) -> torch.Tensor:
        """The chunk on the device; through a pinned buffer on CUDA."""
        import torch

        if not chunk.flags.writeable or not chunk.flags.c_contiguous:
            chunk = np.ascontiguousarray(chunk).copy()
        src = torch.from_numpy(chunk)
        if not self.cuda:
            return src
        buf = self._buffer(slot, tuple(src.shape))
        self._copied[slot].synchronize()  # its last copy to the device is done
        view = buf[: len(src)]
        view.copy_(src)
        x = view.to(self.device, non_blocking=True)
        self._copied[slot].record()
        return x

    def _buffer(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        while len(self._pinned) <= slot:
            self._pinned.append(torch.empty(0, dtype=torch.uint8))
            self._copied.append(torch.cuda.Event())  # type: ignore[no-untyped-call, unused-ignore]
        buf = self._pinned[slot]
        full = (self.batch_size, *shape[1:])
        if tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0]:
            self._copied[slot].synchronize()
            buf = torch.empty(full, dtype=torch.uint8).pin_memory()
            self._pinned[slot] = buf
        return buf

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        """Features of one (n, h, w, 3) uint8 batch already on the device."""
        import torch
        import torch.nn.functional as F

        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
            )
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16
        ):
            feats = self._forward(self.model, x)
        return feats.float()


__all__ = ["Forward", "TorchEncoder"]
