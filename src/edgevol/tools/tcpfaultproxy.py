"""A loopback TCP relay that injects faults into the server-to-client stream, for tests.

``faultproxy`` breaks HTTP responses. SSH (the SFTP datastore) is one long
encrypted stream that an HTTP proxy cannot touch, so faults have to happen
at the TCP level. This relay can drop a connection after N bytes, flip one
byte at offset N (the SSH MAC check fails and the client has to reconnect),
or go silent for S seconds after N bytes. Offsets count the bytes relayed
server-to-client on one connection, so "at=N" means the same on every
connection. Each rule fires at most ``times`` times and counts ``injected``,
so a test can prove the client met the fault. Corruption masks are seeded.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from dataclasses import dataclass, field

__all__ = ["TcpFaultProxy", "TcpRule"]

CHUNK = 64 << 10
KINDS = ("drop", "corrupt", "stall")


@dataclass
class TcpRule:
    """One fault at byte ``at`` of a connection's server-to-client stream; counters updated under the proxy's lock."""

    kind: str  # "drop": close both sides; "corrupt": flip the byte; "stall": relay nothing for ``seconds``
    at: int
    times: int | None = 1  # at most this many injections (None: on every connection that gets that far)
    seconds: float = 1.0
    injected: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.at < 0:
            raise ValueError("at must be >= 0")


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket
    fired: set[int] = field(default_factory=set)  # ids of the rules already applied here: once per connection
    done: threading.Event = field(default_factory=threading.Event)


class TcpFaultProxy:
    """Relays loopback TCP to ``upstream`` (``host:port``), applying its rules. Thread-safe; rules may be added live."""

    def __init__(self, upstream: str, *, seed: int = 0, port: int = 0) -> None:
        host, _, up_port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(up_port))
        self.connections = 0
        self.rules: list[TcpRule] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._live: set[_Conn] = set()
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def add(self, kind: str, at: int, *, times: int | None = 1, seconds: float = 1.0) -> TcpRule:
        """Start injecting a fault into connections from now on (and into live ones not yet past ``at``)."""
        rule = TcpRule(kind, at, times, seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def start(self) -> TcpFaultProxy:
        self._thread = threading.Thread(target=self._accept_loop, name="tcpfaultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every relayed connection and wake stalls (safe to call twice)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._listener.close()
        with self._lock:
            live = list(self._live)
        for conn in live:
            self._close(conn)

    def __enter__(self) -> TcpFaultProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _abort(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            conn = _Conn(client, upstream)
            with self._lock:
                self.connections += 1
                self._live.add(conn)
            threading.Thread(target=self._pump_up, args=(conn,), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(conn,), daemon=True).start()

    def _pump_up(self, conn: _Conn) -> None:
        """Client to server, untouched; the client leaving closes the server side too."""
        try:
            while data := conn.client.recv(CHUNK):
                conn.upstream.sendall(data)
        except OSError:
            pass
        self._close(conn)

    def _pump_down(self, conn: _Conn) -> None:
        """Server to client, where the faults happen."""
        sent = 0
        try:
            while data := conn.upstream.recv(CHUNK):
                while data:
                    rule = self._next_fault(conn, sent, len(data))
                    if rule is None:
                        conn.client.sendall(data)
                        sent += len(data)
                        break
                    cut = rule.at - sent
                    conn.client.sendall(data[:cut])
                    sent, data = rule.at, data[cut:]
                    if rule.kind == "drop":
                        self._close(conn)
                        return
                    if rule.kind == "stall":
                        conn.done.wait(rule.seconds)
                    else:  # corrupt: flip the byte at `at`
                        with self._lock:
                            mask = self._rng.randrange(1, 256)
                        data = bytes([data[0] ^ mask]) + data[1:]
                        conn.client.sendall(data[:1])
                        sent, data = sent + 1, data[1:]
            conn.client.shutdown(socket.SHUT_WR)  # the server finished: pass its FIN on, the client closes
            return
        except OSError:
            pass
        self._close(conn)

    def _next_fault(self, conn: _Conn, sent: int, size: int) -> TcpRule | None:
        """The first rule due in bytes ``sent .. sent+size`` of this connection, counted as injected."""
        with self._lock:
            due = [r for r in self.rules if sent <= r.at < sent + size and id(r) not in conn.fired
                   and (r.times is None or r.injected < r.times)]
            if not due:
                return None
            rule = min(due, key=lambda r: r.at)
            rule.injected += 1
            conn.fired.add(id(rule))
            return rule

    def _close(self, conn: _Conn) -> None:
        """Cut both sides (a reset) and wake a stall on this connection; idempotent."""
        with self._lock:
            self._live.discard(conn)
        conn.done.set()
        _abort(conn.client)
        _abort(conn.upstream)


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed peer or middlebox does; wakes a thread blocked in recv."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
