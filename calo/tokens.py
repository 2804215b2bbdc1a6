"""Random tokens: unguessable hex strings for job ids and request ids.

Owns how Calo Jobs draws randomness that must not be guessed (the kernel's CSPRNG).

Threads: `random_token` is safe on any thread (a lock guards the buffer), and in a
forked child, which starts with a fresh buffer and never repeats its parent's tokens.
Must never: use the `random` module (predictable), or block.
"""

from __future__ import annotations

import os
import threading


class _RandomTokens:
    """Hex tokens cut from the kernel's CSPRNG 4 KiB at a time: one `getrandom` call per
    512 tokens instead of one per token (that call was about 5% of a POST's CPU time)."""

    READ = 4096
    TOKEN_BYTES = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._at = "", 0

    def next(self) -> str:
        width = 2 * self.TOKEN_BYTES
        with self._lock:
            if self._at >= len(self._hex):
                self._hex, self._at = os.urandom(self.READ).hex(), 0
            token = self._hex[self._at:self._at + width]
            self._at += width
        return token


random_token = _RandomTokens().next  # 16 hex characters, unguessable
