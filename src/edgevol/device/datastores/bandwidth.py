"""Download bandwidth caps: one token bucket for the device and one per datastore, charged as bytes arrive.

Bytes are charged at the sink, before each write. A fetch that waits there
also stops reading its socket, so TCP flow control slows the sender and the
bytes on the wire follow the cap too. They run ahead of it only by what is
buffered on the way: the socket buffers, and for parallel ranged reads
(``ranged._parallel``) the parts read ahead, at most ``streams`` of 8 MiB.
That lead is taken once, at the start of a download, and does not grow.

Only datastore content is charged. Manifests, registry tokens and
certificates (``fetch_small``) are small and pass freely, and the controller
link (``device/uplink``) has its own HTTP client and never waits here, so
config polls and reports carry on at their pace however low a cap is set.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

from edgevol.device.datastores.base import Cancelled, Sink

__all__ = ["Bandwidth", "RateLimiter", "ThrottledSink"]

BURST_SECONDS = 0.1
"""A bucket holds at most this much of its rate: accurate over seconds, and a big write waits in small pieces."""
MIN_BURST = 4096
PIECE = 64 << 10
"""Writers waiting together take turns this many bytes at a time (a bucket's burst, when that is smaller)."""
WAKE_SECONDS = 0.1
"""A waiter sleeps until this much of the rate has come in (the bucket is full), so it wakes ten times a second
whatever its writes' size: each sleep lets the socket buffer fill and the sender stall, which costs CPU."""
CANCEL_CHECK_SECONDS = 0.1
"""An Event cannot wake a condition wait, so a waiter with a cancel event looks at it this often."""


class RateLimiter:
    """A thread-safe token bucket; a rate of ``None`` is no limit.

    Tokens may go negative: a piece of a write passes as soon as the bucket
    is not in debt, and the next one waits until the debt is paid. So over any
    window the bytes that pass are the rate times the window, give or take one
    burst. Writers waiting together take turns a piece at a time, so each gets
    an equal share of bytes whatever size its writes are.
    """

    def __init__(self, rate: float | None = None) -> None:
        self._cond = threading.Condition()
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._turns: deque[object] = deque()  # writers in this bucket, the one whose turn it is first
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the rate now; waiters wake and wait again on the new rate.

        A debt (at most one piece) is paid at the new rate, like every byte still to pass.
        """
        if rate is not None and rate <= 0:
            raise ValueError(f"a rate must be positive or None, not {rate}")
        with self._cond:
            old = self._rate
            if rate == old:
                return
            self._refill()
            if rate is None or old is None:
                self._tokens = 0.0
            self._rate = rate
            self._tokens = min(self._tokens, self._burst())
            self._cond.notify_all()

    def take(self, n: int, cancel: threading.Event | None = None) -> None:
        """Wait until ``n`` bytes may pass; raise Cancelled if ``cancel`` is set while waiting."""
        if self._rate is None:  # unlimited: no lock at all (a change applies from the next write)
            return
        me = object()
        with self._cond:
            self._turns.append(me)
            try:
                while n > 0 and self._rate is not None:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    n -= self._try_piece(me, n)
                    if n > 0:
                        self._wait(me, cancel)
            finally:
                self._turns.remove(me)
                if self._turns:  # the next writer's turn
                    self._cond.notify_all()

    def _try_piece(self, me: object, n: int) -> int:
        """Bytes of ``n`` that pass now: one piece if it is ``me``'s turn and the bucket is not in debt."""
        self._refill()
        if self._turns[0] is not me or self._tokens < 0:
            return 0
        piece = min(n, PIECE, self._burst())
        self._tokens -= piece
        if piece < n and len(self._turns) > 1:
            self._turns.rotate(-1)  # the next writer's turn
            self._cond.notify_all()
        return piece

    def _wait(self, me: object, cancel: threading.Event | None) -> None:
        """Sleep until the bucket has refilled a little (``me``'s turn) or another writer passes the turn."""
        rate = self._rate
        if rate is None or (self._turns[0] is me and self._tokens >= 0):
            return
        wait = (min(rate * WAKE_SECONDS, self._burst()) - self._tokens) / rate if self._turns[0] is me else None
        if cancel is not None:
            wait = CANCEL_CHECK_SECONDS if wait is None else min(wait, CANCEL_CHECK_SECONDS)
        self._cond.wait(wait)

    def _burst(self) -> float:
        return max(MIN_BURST, (self._rate or 0) * BURST_SECONDS)

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate is not None:
            self._tokens = min(self._burst(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


class ThrottledSink:
    """A Sink whose writes first wait for their bytes in every given bucket.

    Any other attribute is the wrapped sink's, so callers that know their sink
    (an ingest's extras) keep working through the wrapper.
    """

    def __init__(self, sink: Sink, limiters: Sequence[RateLimiter], cancel: threading.Event | None) -> None:
        self._sink = sink
        self._limiters = tuple(limiters)
        self._cancel = cancel

    @property
    def offset(self) -> int:
        return self._sink.offset

    def write(self, data: bytes) -> None:
        for limiter in self._limiters:
            limiter.take(len(data), self._cancel)
        self._sink.write(data)

    def reset(self) -> None:
        self._sink.reset()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sink, name)


class Bandwidth:
    """The device-wide bucket and each datastore's, with the config's caps in bytes per second (0: none).

    A datastore's bucket is made at its first download and kept, so a download
    in flight and one starting later share it; ``configure`` changes the rates
    of all of them at once, downloads in flight included.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.device = RateLimiter()
        self._datastores: dict[str, RateLimiter] = {}
        self._default = 0
        self._own: dict[str, int] = {}

    def configure(self, device: int, datastore_default: int, datastores: Mapping[str, int]) -> None:
        """Apply the caps: ``datastores`` (uuid -> cap) wins over ``datastore_default`` for a datastore."""
        with self._lock:
            self.device.set_rate(device or None)
            self._default, self._own = datastore_default, dict(datastores)
            for uuid, limiter in self._datastores.items():
                limiter.set_rate(self._cap(uuid))

    def throttle(self, sink: Sink, datastore: str, cancel: threading.Event | None) -> ThrottledSink:
        """``sink`` charged to ``datastore``'s bucket and the device's."""
        with self._lock:
            own = self._datastores.get(datastore)
            if own is None:
                own = self._datastores[datastore] = RateLimiter(self._cap(datastore))
        return ThrottledSink(sink, (own, self.device), cancel)

    def _cap(self, datastore: str) -> int | None:
        return self._own.get(datastore, self._default) or None
