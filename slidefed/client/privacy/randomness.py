"""Site-held randomness: every draw that shapes a release comes from the site's secret.

The coordinator chooses the run config, the seeds in it and the messages, and it
knows the site's code. Randomness derived from any of those is public: re-running
the site's code would reproduce the DP noise and the Poisson batches, and
subtracting the noise from a released update would recover the sum of clipped
per-patient gradients. So nothing here reads a seed from a message or a run
config. ``slidefed site init`` makes a 256-bit secret (``keys/rng_secret``, mode
0600) that never leaves the site; each draw uses a key derived from it by
HMAC-SHA256 over a purpose and a context (run, round, input digest, ...), so

- the same site folder given the same inputs reproduces its draws bit for bit
  (replays and ``--resume`` rely on it), and
- nobody without the secret can predict or replay them.

DP noise and Poisson sampling are drawn from a ChaCha20 keystream keyed by such a
derived key (:class:`SecureStream`), a cryptographically secure generator, turned
into uniforms with 53 random bits each and into Gaussians by the Box-Muller
transform. Draws that do not need a CSPRNG (bag subsampling, dropout) are seeded
with 64 bits of a derived key (:meth:`SiteRandomness.seed`), which is
unpredictable without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from slidefed.common.errors import PolicyViolation
from slidefed.common.fileio import atomic_write_bytes

SECRET_BYTES = 32
_NONCE = b"\0" * 16  # every stream has its own key, so one fixed nonce is safe


def secret_path(state_dir: Path) -> Path:
    """Where a site keeps its randomness secret."""
    return Path(state_dir) / "keys" / "rng_secret"


def ensure_site_secret(path: Path) -> bool:
    """Create the site's secret if it has none; return whether one was made."""
    path = Path(path)
    if path.is_file():
        return False
    atomic_write_bytes(path, os.urandom(SECRET_BYTES), mode=0o600)
    return True


def load_site_secret(path: Path) -> bytes:
    """The site's secret.

    Raises
    ------
    PolicyViolation
        If it is missing or damaged: without it the site cannot draw private
        randomness, so it trains nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyViolation(
            f"{path}: the site's randomness secret is missing; run "
            "'slidefed site init DIR' (it keeps existing files) before training"
        )
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise PolicyViolation(
            f"{path}: the site's randomness secret is damaged ({len(secret)} bytes, "
            f"expected {SECRET_BYTES}); restore it from the site's backup"
        )
    return secret


class SecureStream:
    """A ChaCha20 keystream read as uniform, Gaussian and Bernoulli draws."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a stream key has 32 bytes")
        self._cipher = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the keystream."""
        return self._cipher.update(b"\0" * n)

    def uniform(self, n: int) -> NDArray[np.float64]:
        """``n`` uniforms in the open interval (0, 1), 53 random bits each."""
        words = np.frombuffer(self.random_bytes(8 * n), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def normal(self, n: int) -> NDArray[np.float64]:
        """``n`` standard normal draws (Box-Muller)."""
        half = (n + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * np.pi * u2
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def bernoulli(self, n: int, p: float) -> NDArray[np.bool_]:
        """``n`` independent draws that are True with probability ``p``."""
        return self.uniform(n) < p


class SiteRandomness:
    """Keys, seeds and streams derived from the site's secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a site secret has {SECRET_BYTES} bytes")
        self._secret = secret

    @classmethod
    def of_site(cls, state_dir: Path) -> SiteRandomness:
        """The randomness of the site whose state folder is ``state_dir``."""
        return cls(load_site_secret(secret_path(state_dir)))

    def key(self, purpose: str, *context: str | int) -> bytes:
        """A 32-byte key for one purpose and context."""
        message = json.dumps([purpose, *context], separators=(",", ":")).encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def seed(self, purpose: str, *context: str | int) -> int:
        """A 64-bit seed for one purpose and context."""
        return int.from_bytes(self.key(purpose, *context)[:8], "little")

    def stream(self, purpose: str, *context: str | int) -> SecureStream:
        """A secure stream for one purpose and context."""
        return SecureStream(self.key(purpose, *context))

    def for_release(self, *context: str | int) -> ReleaseRandomness:
        """The randomness of one release (its kind, run, round and input digest)."""
        return ReleaseRandomness(self, tuple(context))

    @classmethod
    def public(cls, label: str) -> SiteRandomness:
        """Randomness from a public label, for benchmarks and tests only.

        Anyone who knows ``label`` can reproduce it: never use it for a release.
        """
        return cls(hashlib.sha256(f"public:{label}".encode()).digest())


@dataclass(frozen=True)
class ReleaseRandomness:
    """Seeds and streams of one release, all derived from the site's secret."""

    site: SiteRandomness
    context: tuple[str | int, ...]

    def seed(self, purpose: str) -> int:
        """A 64-bit seed for one purpose of this release."""
        return self.site.seed(purpose, *self.context)

    def stream(self, purpose: str) -> SecureStream:
        """A secure stream for one purpose of this release."""
        return self.site.stream(purpose, *self.context)


__all__ = [
    "SECRET_BYTES",
    "ReleaseRandomness",
    "SecureStream",
    "SiteRandomness",
    "ensure_site_secret",
    "load_site_secret",
    "secret_path",
]
