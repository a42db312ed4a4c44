"""A real OCI registry (Debian's docker-registry, distribution 2.8) for tests.

Fixtures (import them into a test module to use them):

- ``registry``: anonymous registry on 127.0.0.1 with filesystem storage.
- ``basic_auth_registry``: the same behind htpasswd basic auth.
- ``token_auth_registry``: real token auth: docker-registry trusts a
  self-signed certificate, and a tiny loopback token server signs RS256 JWTs
  with its key (``openssl`` does the RSA work, so no Python crypto package).
- ``fault_proxy``: edgevol's fault proxy (``edgevol.tools.faultproxy``) in
  front of ``registry``, with shorthand knobs to drop a blob download midway,
  redirect blobs to another host or demand credentials, so resume and
  redirect handling meet a real server's bytes.

The access log (docker-registry writes it to stdout) is kept in a file, so
tests can count the requests the registry really served.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from edgevol.tools.faultproxy import FaultProxy as GenericFaultProxy
from edgevol.tools.faultproxy import Kind

REGISTRY_BIN = "/usr/bin/docker-registry"
TEST_USER = "edgevol-user"
TEST_PASSWORD = "s3cret-passw0rd"
TOKEN_SERVICE = "edgevol-test-registry"
TOKEN_ISSUER = "edgevol-test-token-issuer"

_ACCESS_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    size: int


@dataclass
class RunningRegistry:
    """A docker-registry process; ``url`` is http://127.0.0.1:PORT."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    access_log: Path
    error_log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def requests(self) -> list[LoggedRequest]:
        """Every request in the access log so far.

        The registry logs a request just after answering it, so wait until the
        log stops growing before reading it.
        """
        last = -1
        for _ in range(40):
            size = self.access_log.stat().st_size
            if size == last:
                break
            last = size
            time.sleep(0.05)
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = _ACCESS_LINE.match(line)
            if m:
                size_text = m.group(4)
                out.append(
                    LoggedRequest(m.group(1), m.group(2), int(m.group(3)), 0 if size_text == "-" else int(size_text))
                )
        return out

    def blob_gets(self, digest: str) -> list[LoggedRequest]:
        return [r for r in self.requests() if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(workdir: Path, auth_yaml: str = "") -> RunningRegistry:
    """Start docker-registry with a generated config and wait until /v2/ answers."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.fail("docker-registry is missing: run scripts/bootstrap.sh (apt package docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
        + auth_yaml
    )
    access_log = workdir / "access.log"
    error_log = workdir / "registry.log"
    with open(access_log, "wb") as out, open(error_log, "wb") as err:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    reg = RunningRegistry(proc, port, root, access_log, error_log)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}:\n{error_log.read_text()[-3000:]}")
        try:
            status = httpx.get(f"{reg.url}/v2/", timeout=1).status_code
            if status in (200, 401):
                return reg
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            reg.stop()
            raise RuntimeError(f"docker-registry did not answer on {reg.url}:\n{error_log.read_text()[-3000:]}")
        time.sleep(0.05)


# -- basic auth -------------------------------------------------------------


def bcrypt_hash(password: str) -> tuple[str, str] | None:
    """``(hash, method)`` in the bcrypt form docker-registry's htpasswd needs, or None.

    Tries the bcrypt package, then apache2-utils' htpasswd, then the system
    libcrypt (libxcrypt supports bcrypt), so no extra install is needed.
    """
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode(), "bcrypt package"
    except ImportError:
        pass
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run(
            [htpasswd, "-nbB", "-C", "5", "u", password], capture_output=True, text=True, check=True
        ).stdout
        return out.strip().split(":", 1)[1], "htpasswd command"
    name = ctypes.util.find_library("crypt")
    if name:
        lib = ctypes.CDLL(name)
        if hasattr(lib, "crypt_gensalt") and hasattr(lib, "crypt"):
            lib.crypt_gensalt.restype = ctypes.c_char_p
            lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
            hashed = lib.crypt(password.encode(), salt) if salt else None
            if hashed and hashed.startswith(b"$2"):
                return hashed.decode(), "libcrypt (libxcrypt)"
    return None


# -- token auth -------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """Signs docker-registry bearer tokens (RS256 JWTs with the cert in ``x5c``)."""

    def __init__(self, workdir: Path) -> None:
        self.key = workdir / "token-key.pem"
        self.cert = workdir / "token-cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={TOKEN_ISSUER}", "-keyout", str(self.key), "-out", str(self.cert),
            ],
            check=True,
            capture_output=True,
        )
        pem = self.cert.read_text()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        self._x5c = base64.b64encode(base64.b64decode("".join(body.split()))).decode("ascii")

    def sign(self, subject: str, access: list[dict[str, object]], lifetime: int = 300) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + lifetime,
            "nbf": now - 30,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


class TokenServer(ThreadingHTTPServer):
    """The realm: grants requested scopes to TEST_USER, nothing to anonymous callers."""

    daemon_threads = True

    def __init__(self, issuer: TokenIssuer) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.issuer = issuer
        self.issued: list[tuple[str, list[str]]] = []  # (account or "", scopes)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path != "/token":
            self._reply(404, {"error": "not found"})
            return
        user = ""
        auth = self.headers.get("Authorization", "")
        if auth:
            expected = "Basic " + base64.b64encode(f"{TEST_USER}:{TEST_PASSWORD}".encode()).decode()
            if not hmac.compare_digest(auth, expected):
                self._reply(401, {"details": "invalid credentials"})
                return
            user = TEST_USER
        scopes = query.get("scope", [])
        access = []
        if user:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self.server.issued.append((user, scopes))
        token = self.server.issuer.sign(user, access)
        self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

    def _reply(self, status: int, doc: dict[str, object]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class TokenAuthRegistry:
    registry: RunningRegistry
    token_server: TokenServer


# -- fault-injecting proxy --------------------------------------------------

_BLOB_PATH = r"^/v2/(?!_)[^?]*/blobs/sha256:"


class FaultProxy(GenericFaultProxy):
    """:class:`edgevol.tools.faultproxy.FaultProxy` in front of a registry, with shorthand knobs.

    - ``drop_blob_after``: the next blob GET sends this many body bytes, then
      the connection is cut (one shot); ``drops`` counts the cuts.
    - ``redirect_blobs``: blob GETs answer 307 to the same proxy under the
      host name ``localhost`` (a different origin), as registries do when
      blobs live in object storage; ``redirected`` records those requests'
      headers.
    - ``require_basic``: (user, password) the proxy demands on every request
      except redirected ones.
    - ``tamper_manifests``: manifest GETs come with a byte changed (a
      different digest), as a lying registry or cache would serve them.
    - ``strip_headers``: response headers (lowercase) to leave out, to play a
      registry that omits optional ones such as Docker-Content-Digest.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.alias_prefix = "/_redirected"

    @property
    def drop_blob_after(self) -> None:
        return None

    @drop_blob_after.setter
    def drop_blob_after(self, cut: int | None) -> None:
        if cut is not None:
            self.inject(Kind.DROP, path=_BLOB_PATH, methods=frozenset({"GET"}), at=cut, times=1)

    @property
    def drops(self) -> int:
        return self.counts().get(Kind.DROP.value, 0)

    @property
    def redirect_blobs(self) -> bool:
        return self.redirect is not None

    @redirect_blobs.setter
    def redirect_blobs(self, on: bool) -> None:
        self.redirect = _BLOB_PATH if on else None

    @property
    def redirected(self) -> list[dict[str, str]]:
        return self.aliased

    @property
    def tamper_manifests(self) -> bool:
        return any(r.kind is Kind.CORRUPT for r in self._rules)

    @tamper_manifests.setter
    def tamper_manifests(self, on: bool) -> None:
        if on:
            self.inject(Kind.CORRUPT, path="/manifests/", methods=frozenset({"GET"}))

    @property
    def seen(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path as received, headers) of every request."""
        return [(s.method, s.path, s.headers) for s in self.requests_for()]


def start_fault_proxy(upstream: str) -> FaultProxy:
    return FaultProxy(upstream).start()  # type: ignore[return-value]


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """Credentials: TEST_USER / TEST_PASSWORD."""
    hashed = bcrypt_hash(TEST_PASSWORD)
    if hashed is None:
        pytest.fail("no bcrypt implementation (bcrypt package, htpasswd or libcrypt) for htpasswd; "
                    "libcrypt1 is part of every Debian system")
    workdir = tmp_path_factory.mktemp("registry-basic")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{TEST_USER}:{hashed[0]}\n")
    reg = start_registry(workdir, f"auth:\n  htpasswd:\n    realm: edgevol-test\n    path: {htpasswd}\n")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenAuthRegistry]:
    """Real bearer-token auth; the token server grants TEST_USER everything it asks."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to sign registry tokens: run 'make test', which installs it")
    workdir = tmp_path_factory.mktemp("registry-token")
    issuer = TokenIssuer(workdir)
    server = TokenServer(issuer)
    auth = (
        "auth:\n  token:\n"
        f"    realm: {server.realm}\n    service: {TOKEN_SERVICE}\n"
        f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {issuer.cert}\n"
    )
    try:
        reg = start_registry(workdir, auth)
    except BaseException:
        server.stop()
        raise
    yield TokenAuthRegistry(reg, server)
    reg.stop()
    server.stop()


@pytest.fixture
def fault_proxy(registry: RunningRegistry) -> Iterator[FaultProxy]:
    proxy = start_fault_proxy(registry.host)
    yield proxy
    proxy.stop()
