"""A small static file server with byte ranges, for the demo, tests and benchmarks.

Python's ``http.server`` has no Range support, which is exactly what resumable
downloads need, so this adds single-range GET/HEAD, refuses paths outside the
root and copies with ``sendfile`` in 1 MiB steps (fast enough for 1 GiB
benchmarks). Like a real server it sends validators (a strong ``ETag`` made of
the file's inode, modification time and size, as nginx makes one, and
``Last-Modified``) and honours ``If-Range``: a range whose validator no longer
matches gets the whole file. Tests flip attributes on the server object to inject
faults: dropped connections, ignored ranges or If-Range, weak or no ETags, wrong
lengths, error statuses, redirects, required basic auth and a throttled (slow) link.

    python -m edgevol.tools.httpserve ROOT [--host H] [--port N] [--certfile C --keyfile K]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hmac
import os
import re
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

__all__ = ["RangeHTTPServer", "main", "make_server", "serve"]

CHUNK_SIZE = 1 << 20
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
_UNSATISFIABLE = "unsatisfiable"


class RangeHTTPServer(ThreadingHTTPServer):
    """Serves regular files under ``root``; fault knobs are plain attributes."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        root: Path,
        address: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        quiet: bool = True,
    ) -> None:
        super().__init__(address, _Handler)
        self.root = Path(root).resolve(strict=True)
        self.quiet = quiet
        self.scheme = "https" if ssl_context is not None else "http"
        if ssl_context is not None:
            # Handshake lazily in the handler thread so one slow client cannot
            # block the accept loop.
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        # Fault injection (tests set these directly).
        self.drop_after: int | None = None  # close after this many body bytes ...
        self.drops_remaining: int | None = 1  # ... this many times (None: always)
        self.ignore_range = False
        self.lie_content_length: int | None = None
        self.omit_content_length = False  # no Content-Length: body ends at close
        self.fail_with: list[int] = []  # answer these statuses first, one per request
        self.redirects: dict[str, str] = {}  # URL path -> Location (302)
        self.auth: tuple[str, str] | None = None
        self.rate_limit_bytes_per_sec: int | None = None  # throttle each body (slow-link tests)
        self.etag = "strong"  # "weak": W/"..." (never usable in If-Range); "none": Last-Modified only
        self.ignore_if_range = False  # serve the range even when If-Range names another version
        # Observations.
        self.requests: list[tuple[str, str, str | None]] = []
        self.request_headers: list[dict[str, str]] = []  # each request's headers, in the order of requests
        self.statuses: list[int] = []  # each answer's status, in the order answered
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> RangeHTTPServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="httpserve", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and release the port (safe to call twice)."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-body is normal here (aborts, fault tests).
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    # -- thread-safe bookkeeping used by the handler -------------------------

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no response is being sent, so counters are final.

        A client can finish reading before the handler thread has counted the
        last chunk it sent; tests call this before asserting ``bytes_served``.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def begin(self, method: str, path: str, range_header: str | None, headers: dict[str, str]) -> None:
        with self._lock:
            self._active += 1
            self.requests.append((method, path, range_header))
            self.request_headers.append(headers)

    def answered(self, status: int) -> None:
        with self._lock:
            self.statuses.append(status)

    def end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def add_served(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def take_failure(self) -> int | None:
        with self._lock:
            return self.fail_with.pop(0) if self.fail_with else None

    def take_drop(self, body_length: int) -> int | None:
        """Where to cut this body, consuming one drop only if it actually applies."""
        with self._lock:
            if self.drop_after is None or body_length <= self.drop_after:
                return None
            if self.drops_remaining is None:
                return self.drop_after
            if self.drops_remaining > 0:
                self.drops_remaining -= 1
                return self.drop_after
            return None


class _Handler(BaseHTTPRequestHandler):
    server: RangeHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "edgevol-httpserve"
    sys_version = ""
    timeout = 120  # frees the thread of a client that went silent

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _serve(self, send_body: bool) -> None:
        self.server.begin(self.command, self.path, self.headers.get("Range"), dict(self.headers.items()))
        try:
            self._respond(send_body)
        finally:
            self.server.end()

    def _respond(self, send_body: bool) -> None:
        srv = self.server
        range_header = self.headers.get("Range")
        if srv.auth is not None and not self._authorized(srv.auth):
            self._simple(401, {"WWW-Authenticate": 'Basic realm="edgevol"'})
            return
        failure = srv.take_failure()
        if failure is not None:
            self._simple(failure)
            return
        url_path = urlsplit(self.path).path
        if url_path in srv.redirects:
            self._simple(302, {"Location": srv.redirects[url_path]})
            return
        target = self._resolve(url_path)
        if isinstance(target, int):
            self._simple(target)
            return
        try:
            f = open(target, "rb")
        except OSError:
            self._simple(404)
            return
        with f:
            self._send_file(f, range_header, send_body)

    def _send_file(self, f: BinaryIO, range_header: str | None, send_body: bool) -> None:
        srv = self.server
        st = os.fstat(f.fileno())
        size = st.st_size
        validators = _validators(st, srv.etag)
        if_range = self.headers.get("If-Range")
        if range_header and if_range and not srv.ignore_if_range and not _if_range_holds(if_range, validators):
            range_header = None  # the client holds another version: it gets all of this one
        rng = None if srv.ignore_range else _parse_range(range_header, size)
        if rng == _UNSATISFIABLE:
            self._simple(416, {"Content-Range": f"bytes */{size}", **validators})
            return
        start, end = (0, size) if rng is None else rng
        length = end - start
        self.send_response(200 if rng is None else 206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        for name, value in validators.items():
            self.send_header(name, value)
        if rng is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if srv.omit_content_length:
            self.send_header("Connection", "close")
        elif srv.lie_content_length is not None:
            self.send_header("Content-Length", str(srv.lie_content_length))
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if not send_body:
            return
        cut = srv.take_drop(length)
        limit = length if cut is None else cut
        sent = self._copy(f, start, limit)
        if cut is not None or sent < length:
            self.close_connection = True  # the body is short: the peer must see EOF

    def _copy(self, f: BinaryIO, start: int, count: int) -> int:
        """Send ``count`` bytes from ``start``; returns how many went out."""
        sent = 0
        try:
            while sent < count:
                rate = self.server.rate_limit_bytes_per_sec  # read each step: tests may lift it
                step = CHUNK_SIZE if not rate else max(1, min(CHUNK_SIZE, rate // 20))
                n = self.connection.sendfile(f, start + sent, min(step, count - sent))
                if n == 0:
                    break  # file shrank under us
                sent += n
                self.server.add_served(n)
                if rate:
                    time.sleep(n / rate)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        return sent

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.answered(code)
        super().send_response(code, message)

    def _simple(self, status: int, headers: dict[str, str] | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self, expected: tuple[str, str]) -> bool:
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        wanted = f"{expected[0]}:{expected[1]}".encode()
        return hmac.compare_digest(given, wanted)

    def _resolve(self, url_path: str) -> Path | int:
        """The file for ``url_path``, or an HTTP status when there is none to serve."""
        raw = unquote(url_path)
        if "\x00" in raw or "\\" in raw:
            return 400
        parts = [p for p in raw.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return 403
        root = self.server.root
        real = root.joinpath(*parts).resolve()
        if real != root and root not in real.parents:
            return 403  # a symlink pointing outside the root
        if not real.is_file():
            return 404  # includes directories: no listings
        return real


def _validators(st: os.stat_result, etag: str) -> dict[str, str]:
    """``ETag`` (unless ``etag`` is "none") and ``Last-Modified`` for a file: a new inode, modification time or
    size is a new version, as nginx sees it (a file replaced by a rename gets a new inode)."""
    out = {"Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
    if etag != "none":
        tag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        out["ETag"] = f"W/{tag}" if etag == "weak" else tag
    return out


def _if_range_holds(if_range: str, validators: dict[str, str]) -> bool:
    """RFC 9110 §13.1.5: an entity tag matches only strongly (a weak one never does), a date only exactly."""
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        etag = validators.get("ETag", "")
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    return value == validators["Last-Modified"]


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end_exclusive), _UNSATISFIABLE, or None to send the whole file.

    Multiple ranges and malformed headers are ignored, as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header)
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return _UNSATISFIABLE
        return (max(0, size - n), size)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return _UNSATISFIABLE
    end = size if not last else min(int(last) + 1, size)
    return (start, end)


def make_server(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    quiet: bool = True,
) -> RangeHTTPServer:
    """A bound but not yet serving server; TLS when ``certfile`` is given."""
    ctx = None
    if certfile is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
    return RangeHTTPServer(Path(root), (host, port), ssl_context=ctx, quiet=quiet)


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    quiet: bool = True,
) -> RangeHTTPServer:
    """Start serving ``root`` in a daemon thread; stop with ``.shutdown()``."""
    return make_server(root, host, port, certfile=certfile, keyfile=keyfile, quiet=quiet).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgevol.tools.httpserve",
        description="Serve files under ROOT over HTTP(S) with byte-range support.",
    )
    parser.add_argument("root", type=Path, help="directory to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--certfile", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--keyfile", help="PEM private key for --certfile")
    parser.add_argument("--log", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a directory")
    server = make_server(
        args.root, args.host, args.port, certfile=args.certfile, keyfile=args.keyfile, quiet=not args.log
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(server.url, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
