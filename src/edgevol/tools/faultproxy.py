"""A loopback HTTP proxy that injects network faults, for tests and the crash harness.

Datastores, registries and controllers misbehave in a handful of ways that a
device must survive: connections drop mid-body, links stall, bodies end early,
bytes arrive flipped, servers answer 5xx or 429, lie about Content-Length or
ignore ``Range``. Putting this proxy between a real client and a real server
makes those faults happen on demand, reproducibly (seeded), and counts every
fault it injected so a test can prove the client met it.

Faults are :class:`Rule` objects: a kind, which requests it applies to (path
regex, methods), how often (every N-th eligible request, a seeded
probability, at most ``times`` injections) and its parameters. A rule only
counts requests it could act on (a body fault needs a 2xx body, ignoring
Range needs a Range header), so "the 3rd request" means the 3rd it could
break. Besides faults the proxy can play tricks of origin that registry
tests need: demand basic auth, strip response headers, and redirect requests
to itself under another host name (``localhost``), a different origin.

    python -m edgevol.tools.faultproxy --upstream 127.0.0.1:8080 \\
        --fault 'drop:path=/blobs/,every=2' --fault '5xx:every=5,status=503'

prints the proxy's URL, serves until SIGTERM/SIGINT, then prints the counts
of injected faults as JSON.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import http.client
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Callable

__all__ = ["FaultProxy", "Kind", "Rule", "Seen", "main", "parse_rule"]

CHUNK = 64 << 10
ALIAS_PREFIX = "/_alias"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


class Kind(str, Enum):
    """What a rule does; the value is the name used in counts and on the command line."""

    DROP = "drop"  # reset the connection after ``at`` body bytes (no body: lose the response)
    STALL = "stall"  # go silent for ``seconds`` (before forwarding, before headers or mid-body)
    TRUNCATE = "truncate"  # correct Content-Length, then close cleanly after ``at`` bytes
    CORRUPT = "corrupt"  # flip ``count`` bytes of the body
    ERROR = "5xx"  # answer ``status`` instead of forwarding
    THROTTLE = "429"  # answer 429 with Retry-After: ``seconds`` instead of forwarding
    LIE_LENGTH = "lie_length"  # announce len+``delta`` bytes (send len, then close)
    IGNORE_RANGE = "ignore_range"  # strip Range upstream: a 200 with the whole body


_PRE = {Kind.ERROR, Kind.THROTTLE, Kind.IGNORE_RANGE}  # decided before forwarding
_ANSWER = {Kind.ERROR, Kind.THROTTLE}  # each replaces the upstream's answer; one per request
_BODY_END = {Kind.DROP, Kind.TRUNCATE, Kind.LIE_LENGTH}  # each decides how a body ends; one per response


@dataclass
class Rule:
    """One fault and when to inject it. Counters are updated by the proxy under its lock."""

    kind: Kind
    path: str = ""  # regex searched in the request path (with query); "" matches all
    methods: frozenset[str] = frozenset()  # upper-case; empty matches all
    every: int = 1  # inject on every N-th eligible request (1: each one)
    times: int | None = None  # at most this many injections (None: no limit)
    probability: float = 1.0  # seeded coin tossed for each N-th eligible request
    at: int | None = None  # body offset for drop/truncate/stall(body)/corrupt; None: seeded random
    seconds: float = 1.0  # stall length; Retry-After of a 429
    status: int = 503  # answer of a 5xx rule
    count: int = 1  # bytes a corrupt rule flips
    delta: int = 4096  # lie_length: announced minus real length (negative: announce less)
    phase: str = "request"  # stall: "request" (before forwarding), "response" (before headers), "body"
    eligible: int = 0  # requests it could have acted on so far
    injected: int = 0  # faults it injected so far
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)
        self.methods = frozenset(m.upper() for m in self.methods)
        if self.every < 1:
            raise ValueError("every must be >= 1")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if self.phase not in ("request", "response", "body"):
            raise ValueError("phase must be request, response or body")
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and bool(self._pattern.search(path))

    def _fire(self) -> bool:
        """Count one eligible request and decide whether to inject (caller holds the proxy lock)."""
        if self.times is not None and self.injected >= self.times:
            return False
        self.eligible += 1
        if self.eligible % self.every or self._rng.random() >= self.probability:
            return False
        self.injected += 1
        return True


@dataclass
class Seen:
    """One request the proxy received, and the faults it met."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None  # what the client was told (None: nothing, the connection went away)
    faults: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the proxy was done with it (None: still in flight)


class FaultProxy:
    """Forwards loopback HTTP to ``upstream`` (``host:port``), injecting the faults of its rules.

    Thread-safe; rules may be added or cleared while traffic flows. Knobs for
    origin tricks are plain attributes: ``require_basic`` (user, password),
    ``strip_headers`` (lowercase response headers to leave out) and
    ``redirect`` (a path regex answered with a 307 to the same proxy as
    ``localhost`` under ``alias_prefix``; those requests are forwarded without
    Authorization and their headers kept in ``aliased``).
    """

    def __init__(self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1", port: int = 0,
                 upstream_timeout: float = 60.0) -> None:
        self.upstream = upstream
        self.seed = seed
        self.upstream_timeout = upstream_timeout
        self.require_basic: tuple[str, str] | None = None
        self.strip_headers: set[str] = set()
        self.redirect: str | None = None
        self.alias_prefix = ALIAS_PREFIX
        self.aliased: list[dict[str, str]] = []
        self.requests: list[Seen] = []
        self._rules: list[Rule] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and release the port (safe to call twice)."""
        self._closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules and figures ---------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Start injecting ``rule``; its randomness is seeded from the proxy's seed and its position."""
        with self._lock:
            rule._rng = random.Random(f"{self.seed}/{len(self._rules)}/{rule.kind.value}")
            self._rules.append(rule)
        return rule

    def inject(self, kind: Kind | str, **params: Any) -> Rule:
        """``add(Rule(kind, **params))``."""
        return self.add(Rule(Kind(kind), **params))

    def clear(self) -> None:
        """Remove every rule (counts of faults already injected stay)."""
        with self._lock:
            self._rules.clear()

    def counts(self) -> dict[str, int]:
        """Faults injected so far, by kind name."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def requests_for(self, path: str = "", method: str = "") -> list[Seen]:
        """Requests whose path matches the regex ``path`` (and ``method`` when given)."""
        pattern = re.compile(path)
        with self._lock:
            return [s for s in self.requests if pattern.search(s.path) and (not method or s.method == method)]

    # -- used by the handler -------------------------------------------------

    def _decide(self, kinds: set[Kind], method: str, path: str, seen: Seen,
                eligible: Callable[[Rule], bool] | None = None) -> list[Rule]:
        """The rules of ``kinds`` that fire for this request, counted as injected."""
        fired = []
        with self._lock:
            for rule in self._rules:
                if rule.kind not in kinds or not rule.matches(method, path):
                    continue
                if eligible is not None and not eligible(rule):
                    continue
                if any(rule.kind in group and any(r.kind in group for r in fired)
                       for group in (_ANSWER, _BODY_END)):
                    continue  # another rule already decides this; do not count one that cannot act
                if rule._fire():
                    self._counts[rule.kind.value] = self._counts.get(rule.kind.value, 0) + 1
                    seen.faults.append(rule.kind.value)
                    fired.append(rule)
        return fired

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _wait(self, seconds: float) -> None:
        self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], proxy: FaultProxy) -> None:
        super().__init__(address, handler)
        self.proxy = proxy

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients giving up on a stalled or broken response is the point of this server.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 120  # frees the thread of a client that went silent

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- one request ---------------------------------------------------------

    def _handle(self) -> None:
        seen = Seen(self.command, self.path, {k: v for k, v in self.headers.items()})
        try:
            self._serve(seen)
        finally:
            seen.ended = time.monotonic()

    def _serve(self, seen: Seen) -> None:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path
        proxy._record(seen)
        aliased = path.startswith(proxy.alias_prefix + "/")
        if aliased:
            path = path[len(proxy.alias_prefix):]
            with proxy._lock:
                proxy.aliased.append(dict(headers))
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        elif proxy.require_basic is not None:
            user, password = proxy.require_basic
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                self._simple(seen, 401, {"WWW-Authenticate": 'Basic realm="faultproxy"'})
                return
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if proxy.redirect and not aliased and re.search(proxy.redirect, path):
            self._simple(seen, 307, {"Location": f"http://localhost:{proxy.port}{proxy.alias_prefix}{path}"})
            return

        pre = proxy._decide(_ANSWER | {Kind.STALL}, self.command, path, seen,
                            lambda r: r.kind is not Kind.STALL or r.phase == "request")
        for rule in pre:
            if rule.kind is Kind.STALL:
                proxy._wait(rule.seconds)
        for rule in pre:
            if rule.kind is Kind.ERROR:
                self._simple(seen, rule.status)
                return
            if rule.kind is Kind.THROTTLE:
                self._simple(seen, 429, {"Retry-After": str(max(0, math.ceil(rule.seconds)))})
                return
        if any(k.lower() == "range" for k in headers) and proxy._decide({Kind.IGNORE_RANGE}, self.command, path,
                                                                        seen):
            headers = {k: v for k, v in headers.items() if k.lower() not in ("range", "if-range")}
        self._forward(seen, path, headers, body)

    def _forward(self, seen: Seen, path: str, headers: dict[str, str], body: bytes | None) -> None:
        proxy = self.server.proxy
        forward = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(proxy.upstream, timeout=proxy.upstream_timeout)
        try:
            try:
                conn.request(self.command, path, body=body, headers=forward)
                resp = conn.getresponse()
            except OSError:
                self._simple(seen, 502)
                return
            self._relay(seen, path, resp)
        finally:
            conn.close()

    def _relay(self, seen: Seen, path: str, resp: http.client.HTTPResponse) -> None:
        proxy = self.server.proxy
        raw_length = resp.getheader("Content-Length")
        length = int(raw_length) if raw_length and raw_length.strip().isdigit() else None
        has_body = self.command != "HEAD" and 200 <= resp.status < 300

        def eligible(rule: Rule) -> bool:
            if rule.kind is Kind.STALL:
                return rule.phase == "response" or (rule.phase == "body" and has_body and bool(length))
            if rule.kind is Kind.DROP:
                return has_body
            return has_body and bool(length)  # truncate, corrupt, lie_length need a known, non-empty body

        post = proxy._decide({Kind.STALL, Kind.DROP, Kind.TRUNCATE, Kind.CORRUPT, Kind.LIE_LENGTH},
                             self.command, path, seen, eligible)
        plan = _BodyPlan.make(post, length)
        if plan.stall_response:
            proxy._wait(plan.stall_response)
        if plan.drop_at is not None and (length or 0) == 0:
            seen.status = None
            self._reset()  # the upstream did the work; the client never hears about it
            return
        self.send_response(resp.status)
        has_length = False
        for key, value in resp.getheaders():
            lower = key.lower()
            if lower in _HOP_BY_HOP or lower in proxy.strip_headers:
                continue
            if lower == "content-length":
                has_length = True
                if plan.announce is not None:
                    value = str(plan.announce)
            self.send_header(key, value)
        seen.status = resp.status
        ends_early = plan.drop_at is not None or plan.truncate_at is not None or plan.announce is not None
        if not has_length or ends_early:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_body(resp, plan)

    def _send_body(self, resp: http.client.HTTPResponse, plan: _BodyPlan) -> None:
        sent = 0
        cut = plan.drop_at if plan.drop_at is not None else plan.truncate_at
        stall = plan.stall_body
        try:
            while chunk := resp.read(CHUNK):
                if plan.flips:
                    chunk = plan.flip(chunk, sent)
                if stall is not None and sent <= stall[0] < sent + len(chunk) and (cut is None or stall[0] < cut):
                    split = stall[0] - sent
                    self.wfile.write(chunk[:split])
                    self.wfile.flush()
                    self.server.proxy._wait(stall[1])
                    chunk, sent, stall = chunk[split:], stall[0], None
                if cut is not None and sent + len(chunk) > cut:
                    self.wfile.write(chunk[: cut - sent])
                    self.wfile.flush()
                    if plan.drop_at is not None:
                        self._reset()
                    else:
                        self.connection.shutdown(socket.SHUT_WR)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP reset, as a crashed server or middlebox does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _simple(self, seen: Seen, status: int, headers: dict[str, str] | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        seen.status = status
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True


@dataclass
class _BodyPlan:
    """What the fired post-response rules do to one body, resolved to byte offsets."""

    drop_at: int | None = None
    truncate_at: int | None = None
    announce: int | None = None
    stall_response: float = 0.0
    stall_body: tuple[int, float] | None = None
    flips: dict[int, int] = field(default_factory=dict)  # offset -> xor mask

    @classmethod
    def make(cls, fired: list[Rule], length: int | None) -> _BodyPlan:
        plan = cls()
        n = length or 0
        for rule in fired:
            rng = rule._rng
            if rule.kind is Kind.STALL:
                if rule.phase == "response":
                    plan.stall_response += rule.seconds
                else:
                    plan.stall_body = (_offset(rule, rng, n), rule.seconds)
            elif rule.kind is Kind.DROP:
                plan.drop_at = _offset(rule, rng, n) if n else 0
            elif rule.kind is Kind.TRUNCATE:
                plan.truncate_at = _offset(rule, rng, n)
            elif rule.kind is Kind.LIE_LENGTH:
                plan.announce = max(0, n + rule.delta)
                if plan.announce == n:
                    plan.announce = n + 1
            elif rule.kind is Kind.CORRUPT:
                start = None if rule.at is None else min(rule.at, n - 1)
                for i in range(min(rule.count, n)):
                    pos = rng.randrange(n) if start is None else min(start + i, n - 1)
                    plan.flips[pos] = rng.randrange(1, 256)
        return plan

    def flip(self, chunk: bytes, offset: int) -> bytes:
        hits = [p for p in self.flips if offset <= p < offset + len(chunk)]
        if not hits:
            return chunk
        buf = bytearray(chunk)
        for p in hits:
            buf[p - offset] ^= self.flips[p]
        return bytes(buf)


def _offset(rule: Rule, rng: random.Random, length: int) -> int:
    """Where in a body of ``length`` bytes the rule acts: ``at`` (kept inside the body) or seeded."""
    if length <= 0:
        return 0
    return min(rule.at, length - 1) if rule.at is not None else rng.randrange(length)


# -- command line -------------------------------------------------------------

_INT_PARAMS = {"every", "times", "at", "status", "count", "delta"}
_FLOAT_PARAMS = {"probability", "seconds"}


def parse_rule(text: str) -> Rule:
    """``KIND[:key=value,...]``, e.g. ``drop:path=/blobs/,every=2,at=65536`` or ``429:seconds=2``."""
    kind, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: want key=value")
        if key in _INT_PARAMS:
            params[key] = int(value)
        elif key in _FLOAT_PARAMS:
            params[key] = float(value)
        elif key == "methods":
            params[key] = frozenset(value.split("+"))
        elif key in ("path", "phase"):
            params[key] = value
        else:
            raise ValueError(f"unknown fault parameter {key!r}")
    return Rule(Kind(kind), **params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevol.tools.faultproxy",
                                     description="Forward loopback HTTP to UPSTREAM, injecting faults.")
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", action="append", default=[], metavar="KIND[:k=v,...]",
                        help=f"kinds: {', '.join(k.value for k in Kind)}; repeatable")
    args = parser.parse_args(argv)
    try:
        rules = [parse_rule(text) for text in args.fault]
    except ValueError as exc:
        parser.error(str(exc))
    proxy = FaultProxy(args.upstream, seed=args.seed, port=args.port)
    for rule in rules:
        proxy.add(rule)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    proxy.start()
    print(proxy.url, flush=True)
    done.wait()
    proxy.stop()
    print(json.dumps(proxy.counts(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
