"""SFTP datastore (DsSFTP): files on an SSH server, read over SFTP with paramiko.

Field mapping, as EVE's downloader uses them (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go, the
DsSFTP case): ``fqdn`` is the server's ``host:port`` (EVE's SFTP library also takes ``sftp://host:port``;
edgevol takes both, and port 22 when none is given), ``apiKey`` the SSH user, ``password`` its
password, ``dpath`` an optional directory and the content tree's URL the file. The remote path is
built as EVE's zedUpload does (``resolvePath``): ``path.Join(dpath, URL)`` when dpath is set, else
the URL as given. So a URL with a leading ``/`` is absolute only when dpath is empty; under a dpath
it stays under it, and an absolute dpath gives absolute paths. A relative path is the server's
business (normally under the user's login or chroot directory); messages show it as ``/~/path``.
``..`` components are refused rather than resolved.

Host keys: EVE verifies none. Its SFTP client dials with ``ssh.InsecureIgnoreHostKey()`` and no
known-hosts list, and the datastore config has no field that could carry a host key. edgevol does the
same, since a device could not get a key to check against. It logs each new key's SHA256 fingerprint
once at info level, and a warning if a reconnect brings a different key, so an operator can compare.
Like EVE, it tries password authentication and, if the server only allows keyboard-interactive, answers
every prompt with the password.

A fetch attempt is ``ranged.fetch_ranged``: ``stat`` for the size and version (SFTP has no ETag, so the
modification time and size stand in for one), then one pipelined read from the resume offset; the open
file's attributes are compared with that version before and after the read, so a file rewritten in
between fails the read with ObjectChanged. Pipelining keeps a fixed window of READ requests in flight,
which hides the round trip without buffering the file. paramiko's ``prefetch``/``readv`` would also hide
it, but their helper thread cannot be stopped, and a slow consumer can make them fall back to holding
the rest of the file in memory. There is one SSH connection per datastore, opened lazily and dropped
after a connection-level failure so the next attempt starts fresh. Each read uses its own SFTP channel
on that connection, so concurrent downloads of different blobs never share one. Passwords appear in no
message or log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import stat
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgevol.log import get_logger
from edgevol.model.desired import ProxySettings

from .base import ConfigError, DatastoreError, NotFoundError, PermanentError, TransientError
from .proxy import choose, tunnel
from .ranged import BucketStore, ObjectChanged, ObjectStat

__all__ = ["SftpDatastore"]

log = get_logger("edgevol.datastores.sftp")

CHUNK_SIZE = 1 << 20
"""Bytes handed to the sink at a time."""
REQUEST_SIZE = 32 << 10
"""Bytes per SFTP READ: the size every server must serve (paramiko's own choice too)."""
IN_FLIGHT = 64
"""READ requests outstanding at once: 2 MiB, enough to fill a fast link's round trip."""
WINDOW_SIZE = 4 << 20
"""SSH channel window: room for every outstanding answer, so the server never waits for an adjust."""


class SftpDatastore(BucketStore):
    """A DsSFTP datastore; raises ConfigError for an unusable fqdn, user or dpath."""

    # One SSH connection; paramiko decrypts every channel on one thread, so parallel ranges would not
    # go faster than the pipelined read, only cost more channels.
    parallel_ranges = False

    def __init__(self, fqdn: str, dpath: str, *, api_key: str = "", password: str = "",
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, proxy: ProxySettings | None = None) -> None:
        self.host, self.port = _host_port(fqdn)
        if not api_key:
            raise ConfigError("an SFTP datastore names its SSH user in apiKey")
        self.user = api_key
        self._password = password
        self.prefix = dpath.strip()
        _segments(self.prefix, "dpath")  # refuse '..' now, not at the first fetch
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.where = f"sftp://{self.user}@{netloc}:{self.port}"
        self._proxy = proxy
        self._lock = threading.Lock()  # guards the connection and the idle channels
        self._transport: Any = None
        self._idle: list[Any] = []  # SFTP channels whose last use ended cleanly
        self._host_key: str | None = None

    def remote_path(self, suffix: str) -> str:
        """The server path of ``suffix``: EVE's ``path.Join(dpath, URL)``, or the URL when dpath is empty."""
        name = _segments(suffix, "URL")
        if not name:
            raise ConfigError(f"{self.where}: the URL {suffix!r} names no file")
        base = self.prefix or suffix
        segments = _segments(self.prefix, "dpath") + name
        return ("/" if base.startswith("/") else "") + "/".join(segments)

    def describe(self, suffix: str) -> str:
        path = self.remote_path(suffix)
        return f"{self.where}{path if path.startswith('/') else '/~/' + path}"

    def stat(self, suffix: str) -> ObjectStat:
        path = self.remote_path(suffix)
        with self._channel(suffix) as sftp:
            attrs = sftp.stat(path)
        if attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode):
            raise PermanentError(f"{self.describe(suffix)} is a directory, not a file")
        if attrs.st_size is None:
            raise PermanentError(f"{self.describe(suffix)}: the server does not say how big it is")
        return ObjectStat(int(attrs.st_size), _version(attrs))

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        path = self.remote_path(suffix)
        if start >= end:
            return
        with self._channel(suffix) as sftp:
            f = sftp.open(path, "rb")
            self._same_version(suffix, f, version)  # the file opened is the one stat saw
            yield from _pipelined_read(sftp, f.handle, start, end)
            self._same_version(suffix, f, version)  # and nobody rewrote it while it was read
            f.close()  # nothing is in flight any more, so the channel can serve the next read

    def _same_version(self, suffix: str, f: Any, version: str | None) -> None:
        if version is None:
            return
        now = _version(f.stat())
        if now is not None and now != version:
            raise ObjectChanged(f"{self.describe(suffix)}: the file changed during the download "
                                f"(modified time:size {version} is now {now})")

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    # -- the connection -------------------------------------------------------

    @contextmanager
    def _channel(self, suffix: str) -> Iterator[Any]:
        """An SFTP channel on the shared connection, its failures as DatastoreErrors naming the file.

        The channel goes back for reuse only after a clean exit (nothing left in flight). After any
        failure it is closed. The connection is closed too unless the failure left it healthy.
        """
        transport: Any = None
        sftp: Any = None
        clean = False
        try:
            transport = self._connection()
            sftp = self._idle_channel() or self._open_channel(transport)
            yield sftp
            clean = True
        except DatastoreError:
            raise
        except Exception as exc:
            cause = None
            if transport is not None and _connection_failed(exc, transport):
                cause = transport.get_exception()  # why paramiko's thread gave up (e.g. "Mismatched MAC")
                self._drop(transport)
            error = _classify(exc, self.describe(suffix), self.read_timeout, cause)
            if error is exc:
                raise
            raise error from exc
        finally:
            if sftp is not None:
                self._release(transport, sftp, clean)

    def _connection(self) -> Any:
        """The connection, (re)opened when there is none or the last one died."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._drop_locked()
                self._transport = self._connect()
            return self._transport

    def _connect(self) -> Any:
        import paramiko  # imported only when a device has an SFTP datastore: it is a large import

        logging.getLogger("paramiko").setLevel(logging.WARNING)  # its INFO lines narrate every connection
        # Its transport logs each failed connection at ERROR, traceback and all; the failure reaches the
        # downloader (and its log) as this module's error anyway, with paramiko's reason in it.
        logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
        sock = self._socket()
        transport = paramiko.Transport(sock)
        transport.banner_timeout = transport.handshake_timeout = self.connect_timeout
        transport.auth_timeout = self.connect_timeout
        try:
            transport.start_client(timeout=self.connect_timeout)
            self._note_host_key(transport.get_remote_server_key())
            # fallback=True: when the server allows only keyboard-interactive, answer it with the password
            transport.auth_password(self.user, self._password, fallback=True)
        except BaseException:
            transport.close()
            raise
        return transport

    def _socket(self) -> Any:
        """A connection to the server: direct, or through an HTTP CONNECT tunnel of the download proxy."""
        via = choose(self._proxy, "sftp", self.host, self.port)
        if via is not None:
            return tunnel(via, self.host, self.port, timeout=self.connect_timeout, name=self.where,
                          ca_pems=self._proxy.ca_pems if self._proxy else ())
        try:
            return socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise TransientError(f"{self.where}: cannot connect: {reason}") from exc

    def _open_channel(self, transport: Any) -> Any:
        """A new SFTP session; a server silent while it starts closes the connection after connect_timeout."""
        import paramiko

        watchdog = threading.Timer(self.connect_timeout, transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan = transport.open_session(window_size=WINDOW_SIZE, timeout=self.connect_timeout)
            chan.settimeout(self.read_timeout)
            chan.invoke_subsystem("sftp")
            return paramiko.SFTPClient(chan)
        finally:
            watchdog.cancel()

    def _idle_channel(self) -> Any:
        with self._lock:
            while self._idle:
                sftp = self._idle.pop()
                if not sftp.get_channel().closed:
                    return sftp
                sftp.close()
        return None

    def _release(self, transport: Any, sftp: Any, clean: bool) -> None:
        with self._lock:
            if clean and transport is self._transport and transport.is_active() and not sftp.get_channel().closed:
                self._idle.append(sftp)
                return
        sftp.close()

    def _drop(self, transport: Any) -> None:
        with self._lock:
            if transport is self._transport:
                self._drop_locked()
            else:
                transport.close()

    def _drop_locked(self) -> None:
        for sftp in self._idle:
            sftp.close()
        self._idle.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _note_host_key(self, key: Any) -> None:
        """Log a host key the first time it is seen; the key is accepted either way, as EVE does."""
        digest = hashlib.sha256(key.asbytes()).digest()
        fingerprint = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        if fingerprint == self._host_key:
            return
        if self._host_key is None:
            log.info("sftp host key accepted without verification, as EVE does", datastore=self.where,
                     key_type=key.get_name(), fingerprint=fingerprint)
        else:
            log.warning("sftp host key changed since the last connection", datastore=self.where,
                        key_type=key.get_name(), fingerprint=fingerprint, previous=self._host_key)
        self._host_key = fingerprint


def _version(attrs: Any) -> str | None:
    """A file's version as SFTP can tell it: modification time and size (None when the server omits them)."""
    if attrs.st_mtime is None or attrs.st_size is None:
        return None
    return f"{int(attrs.st_mtime)}:{int(attrs.st_size)}"


class _Replies:
    """Collects answers to pipelined READs: paramiko hands each answer to the object named in its request."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.got[num] = (t, msg)


def _pipelined_read(sftp: Any, handle: bytes, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` of an open file, in order, with IN_FLIGHT requests outstanding.

    Uses the request/answer primitives paramiko's own prefetch is built on, from this thread only, so
    memory stays bounded (one chunk plus the channel window) and stopping is just closing the channel.
    Ends early, without raising, at the end of the file.
    """
    from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64
    from paramiko.ssh_exception import SSHException

    replies = _Replies()
    inflight: deque[tuple[int, int, int]] = deque()  # (request number, offset, length), in file order
    next_offset = start
    parts: list[bytes] = []
    held = 0

    def request(offset: int, length: int, *, first: bool = False) -> None:
        num = sftp._async_request(replies, CMD_READ, handle, int64(offset), int(length))
        (inflight.appendleft if first else inflight.append)((num, offset, length))

    while True:
        while len(inflight) < IN_FLIGHT and next_offset < end:
            length = min(REQUEST_SIZE, end - next_offset)
            request(next_offset, length)
            next_offset += length
        if not inflight:
            break
        num, offset, length = inflight.popleft()
        while num not in replies.got:
            sftp._read_response()
        t, msg = replies.got.pop(num)
        if t == CMD_STATUS:
            try:
                sftp._convert_status(msg)
            except EOFError:  # the file ends before `end`: fetch_ranged reports the shortfall
                break
            raise SSHException("the server answered a READ with no data")
        if t != CMD_DATA:
            raise SSHException(f"the server answered a READ with message type {t}")
        data = msg.get_string()[:length]
        if not data:
            break
        parts.append(data)
        held += len(data)
        if len(data) < length:  # servers may send less than asked: ask for the rest before anything else
            request(offset + len(data), length - len(data), first=True)
        if held >= CHUNK_SIZE:
            yield b"".join(parts)
            parts, held = [], 0
    if parts:
        yield b"".join(parts)


def _connection_failed(exc: BaseException, transport: Any) -> bool:
    """Whether the connection, not just one request, is unusable (dead, stalled or out of step)."""
    from paramiko.ssh_exception import ChannelException, SSHException

    if isinstance(exc, ChannelException):  # the server refused one more session (MaxSessions); others are fine
        return not transport.is_active()
    return not transport.is_active() or isinstance(exc, (TimeoutError, EOFError, SSHException, ConnectionError))


def _classify(exc: Exception, name: str, read_timeout: float, cause: BaseException | None = None) -> Exception:
    """paramiko's and the socket's exceptions as datastore errors; ``cause`` is why the connection died, if it
    did. The messages carry no credentials."""
    from paramiko.ssh_exception import AuthenticationException, BadAuthenticationType, SSHException

    if isinstance(exc, BadAuthenticationType):
        return PermanentError(f"{name}: the datastore refused the credentials: it accepts only "
                              f"{', '.join(exc.allowed_types) or 'no'} authentication, not a password; check the "
                              "datastore's apiKey (the SSH user) and password")
    if isinstance(exc, AuthenticationException):
        return PermanentError(f"{name}: the datastore refused the credentials ({exc}); check the datastore's "
                              "apiKey (the SSH user) and password")
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{name}: not found on the datastore")
    if isinstance(exc, PermissionError):
        return PermanentError(f"{name}: permission denied: the datastore refused the credentials access to it; "
                              "check the datastore's apiKey (the SSH user) and password, and the file's "
                              "permissions on the server")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{name}: the server sent nothing for {read_timeout:g}s")
    if cause is not None and cause is not exc and not isinstance(cause, EOFError):
        return TransientError(f"{name}: the connection failed: {cause or type(cause).__name__}")
    if isinstance(exc, EOFError):
        return TransientError(f"{name}: the server closed the connection")
    if isinstance(exc, socket.gaierror):
        return TransientError(f"{name}: cannot resolve the host: {exc.strerror or exc}")
    if isinstance(exc, (SSHException, OSError)):
        return TransientError(f"{name}: {exc or type(exc).__name__}")
    return exc  # a bug, not a datastore failure: let it show as one


def _host_port(fqdn: str) -> tuple[str, int]:
    """``host[:port]`` or ``sftp://host[:port]`` as (host, port); port 22 when absent."""
    from urllib.parse import urlsplit

    text = fqdn.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "sftp":
            raise ConfigError(f"SFTP fqdn {fqdn!r} has scheme {scheme!r}; want host:port or sftp://host:port")
        text = rest[:-1] if rest.endswith("/") else rest
    if "@" in text:  # not echoed: it would hold the credentials
        raise ConfigError("credentials in an SFTP datastore's fqdn are not allowed; use apiKey/password")
    if not text or any(c in text for c in "/?#"):
        raise ConfigError(f"SFTP fqdn {fqdn!r} is not host:port (a directory belongs in dpath)")
    try:
        parts = urlsplit(f"sftp://{text}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"SFTP fqdn {fqdn!r} is not host:port: {exc}") from None
    if not host:
        raise ConfigError(f"SFTP fqdn {fqdn!r} names no host")
    return host, port or 22


def _segments(path: str, what: str) -> list[str]:
    """A path's components without empty and '.' ones (as Go's path.Clean drops them); '..' is refused."""
    out = []
    for seg in path.split("/"):
        if seg == "..":
            raise ConfigError(f"the SFTP {what} {path!r} has a '..' component, which could leave the datastore")
        if seg and seg != ".":
            out.append(seg)
    return out
