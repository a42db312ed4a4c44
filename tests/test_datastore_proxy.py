"""Downloads through an HTTP(S) proxy (Debian's tinyproxy) for every datastore type, against the real servers.

The proxy comes from the config items ``edgevol.download.proxy.*`` or the agent's environment
(HTTP(S)_PROXY, ALL_PROXY, NO_PROXY). Each test proves the traffic really went through the proxy: the
proxy's log shows the request or CONNECT to the server, and the same config with the proxy on a dead
port fails with an error that names the proxy. The rules of which proxy a connection takes live in
edgevol.device.datastores.proxy; their unit tests are at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores import proxy as proxies
from edgevol.model import proxyconfig
from edgevol.device.datastores.oci_manifest import host_platform
from edgevol.model.desired import ProxySettings
from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import RangeHTTPServer, serve
from edgevol.tools.oci_image import Layer, build_image, push
from tests.azure_fixture import ACCOUNT, ACCOUNT_KEY, RunningAzurite, azurite  # noqa: F401  (fixture)
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import by_name, device_status, make_raw_image
from tests.datastore_cases import assert_volume_is, run_once
from tests.gcs_fixture import RunningGcs, gcs_server, start_gcs  # noqa: F401  (fixture)
from tests.proxy_fixture import RunningTinyproxy, TlsRelay, dead_port, start_tinyproxy, tinyproxy  # noqa: F401
from tests.registry_fixture import TEST_PASSWORD, TEST_USER, TokenAuthRegistry, token_auth_registry  # noqa: F401
from tests.s3_fixture import ACCESS_KEY, REGION, SECRET_KEY, RunningS3, s3_server  # noqa: F401  (fixture)
from tests.sftp_fixture import RunningSftp, sftp_server  # noqa: F401  (fixture)
from tests.tls_certs import private_ca

MiB = 1 << 20
PROXY_HTTP, PROXY_HTTPS = "edgevol.download.proxy.http", "edgevol.download.proxy.https"
EXCEPTIONS, PROXY_CA = "edgevol.download.proxy.exceptions", "edgevol.download.proxy.ca.pem"
# gcs-https: GCS over TLS, so requests opens a CONNECT tunnel instead of forwarding a plain-HTTP request
FILE_TYPES = ("http", "https", "s3", "azure", "gcs", "gcs-https", "sftp")


@dataclass
class Servers:
    """One real server of each datastore type, each holding its own image (``images[kind]``: the agent would
    fetch bytes that several trees share only once); and the registry's pushed image."""

    images: dict[str, Path]
    http: RangeHTTPServer
    https: RangeHTTPServer
    https_ca: bytes
    registry: TokenAuthRegistry
    container_digest: str
    s3: RunningS3
    azure: RunningAzurite
    gcs: RunningGcs
    gcs_https: RunningGcs
    sftp: RunningSftp

    def targets(self) -> dict[str, str]:
        """Each type's ``host:port`` as the proxy logs it (the registry's token realm is another port)."""
        return {"http": _hostport(self.http.url), "https": _hostport(self.https.url),
                "registry": self.registry.registry.host,
                "registry-token": _hostport(self.registry.token_server.realm),
                "s3": f"127.0.0.1:{self.s3.port}", "azure": f"127.0.0.1:{self.azure.port}",
                "gcs": f"127.0.0.1:{self.gcs.port}", "gcs-https": f"127.0.0.1:{self.gcs_https.port}",
                "sftp": self.sftp.fqdn}

    def add(self, b: ConfigBuilder, kind: str) -> str:
        """A datastore of ``kind`` with its content tree and volume (named ``kind``); returns the tree's id."""
        if kind == "registry":
            reg = b.registry(self.registry.registry.host, apiKey=TEST_USER, password=TEST_PASSWORD)
            ct = b.content_tree(reg, "team/web:v1", "", "container", name=kind)
            b.download_volume(ct, 0, name=kind)
            return ct
        if kind == "http":
            ds = b.datastore(self.http.url)
        elif kind == "https":
            ds = b.datastore(self.https.url, dsCertPEM=self.https_ca)
        else:
            ds = b.cfg.datastores.add(id=new_id(), **_cloud_fields(self, kind)).id
        ct = b.content_tree(ds, f"{kind}.raw", sha256_file(self.images[kind]), "raw", name=kind)
        b.download_volume(ct, 4 * MiB, name=kind)
        return ct


def _cloud_fields(s: Servers, kind: str) -> dict[str, object]:
    if kind == "s3":
        return dict(dType=m.DsType.DsS3, fqdn=s.s3.endpoint, dpath="images/vm", apiKey=ACCESS_KEY,
                    password=SECRET_KEY, region=REGION)
    if kind == "azure":
        return dict(dType=m.DsType.DsAzureBlob, fqdn=s.azure.account_url, dpath="images/vm", apiKey=ACCOUNT,
                    password=ACCOUNT_KEY)
    if kind in ("gcs", "gcs-https"):
        tls = kind == "gcs-https"
        return dict(dType=m.DsType.DsGoogleStorage, fqdn=(s.gcs_https if tls else s.gcs).endpoint, dpath="images/vm",
                    dsCertPEM=[s.https_ca] if tls else [])
    assert kind == "sftp"
    return dict(dType=m.DsType.DsSFTP, fqdn=s.sftp.fqdn, dpath="images", apiKey=s.sftp.user,
                password=s.sftp.password)


def _hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, token_auth_registry: TokenAuthRegistry,  # noqa: F811
            s3_server: RunningS3, azurite: RunningAzurite, gcs_server: RunningGcs,  # noqa: F811
            sftp_server: RunningSftp) -> Iterator[Servers]:  # noqa: F811
    root = tmp_path_factory.mktemp("proxy-datastore")
    images = {kind: make_raw_image(root / f"{kind}.raw", 2, seed=71 + n) for n, kind in enumerate(FILE_TYPES)}
    ca_dir = tmp_path_factory.mktemp("proxy-https-ca")
    ca_pem, cert, key = private_ca(ca_dir)
    http, https = serve(root), serve(root, certfile=cert, keyfile=key)
    gcs_https = start_gcs(tmp_path_factory.mktemp("proxy-gcs-https"), cert=cert, key=key, ca_file=ca_dir / "ca.pem")
    gcs_https.put("images", "vm/gcs-https.raw", images["gcs-https"], verify=str(ca_dir / "ca.pem"))
    os_name, arch, variant = host_platform()
    layer = Layer.from_files({"etc/": ("dir",), "etc/motd": b"through the proxy\n"})
    container = build_image([layer], {"Cmd": ["/bin/true"]}, os=os_name, arch=arch, variant=variant)
    reg = token_auth_registry.registry
    push(reg.url, "team/web", "v1", container, api_key=TEST_USER, password=TEST_PASSWORD)
    s3_server.put("images", "vm/s3.raw", images["s3"])
    azurite.put("images", "vm/azure.raw", images["azure"])
    gcs_server.put("images", "vm/gcs.raw", images["gcs"])
    sftp_server.put("images/sftp.raw", images["sftp"])
    yield Servers(images, http, https, ca_pem, token_auth_registry, container.digest, s3_server, azurite,
                  gcs_server, gcs_https, sftp_server)
    http.shutdown()
    https.shutdown()
    gcs_https.stop()


def _all_types(servers: Servers, b: ConfigBuilder) -> ConfigBuilder:
    for kind in (*FILE_TYPES, "registry"):
        servers.add(b, kind)
    return b


def _assert_loaded(data: Path, servers: Servers, kinds: tuple[str, ...], st: dict | None = None) -> None:
    """Each tree LOADED with the image's sha256 (the registry's: the pushed manifest's digest), each volume
    made of the right bytes. ``st``: a ``device status`` already taken."""
    st = st or device_status(data)
    for kind in kinds:
        tree = by_name(st["content_trees"], kind)
        assert tree["state"] == "LOADED", tree
        if kind == "registry":
            assert tree["sha256"] == servers.container_digest.removeprefix("sha256:"), tree
            assert by_name(st["volumes"], kind)["state"] == "CREATED_VOLUME"
        else:
            assert tree["sha256"] == sha256_file(servers.images[kind]), tree
            assert_volume_is(data, kind, servers.images[kind], st)


def _errors(data: Path, st: dict | None = None) -> dict[str, str]:
    """Each failed content tree's error, by name (from one ``device status``, or ``st`` already taken)."""
    return {t["display_name"]: str(t["error"]["description"]) for t in (st or device_status(data))["content_trees"]
            if t.get("error")}


def test_every_datastore_type_downloads_through_the_proxy(tmp_path, servers: Servers,
                                                          tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    """HTTP, HTTPS (a CONNECT tunnel), the registry with its token realm on another port, S3, Azure Blob,
    GCS over HTTP and HTTPS (CONNECT), and SFTP (a CONNECT tunnel opened with python-socks): every connection
    in the proxy's log."""
    b = _all_types(servers, ConfigBuilder().fast_retries(2).item(PROXY_HTTP, tinyproxy.url)
                   .item(PROXY_HTTPS, tinyproxy.url))
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_loaded(tmp_path / "dev", servers, (*FILE_TYPES, "registry"))
    missing = [kind for kind, target in servers.targets().items() if not tinyproxy.saw(mark, target)]
    assert missing == [], (missing, tinyproxy.since(mark)[-3000:])


def test_a_dead_proxy_fails_every_type_with_an_error_naming_the_proxy(tmp_path, servers: Servers) -> None:
    """The same config with the proxy on a port nothing listens on: no type reaches its server directly,
    and each says it could not reach the proxy (a transient failure: it was retried)."""
    dead = f"http://127.0.0.1:{dead_port()}"
    b = _all_types(servers, ConfigBuilder().fast_retries(2).item(PROXY_HTTP, dead).item(PROXY_HTTPS, dead))
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = _errors(tmp_path / "dev")
    for kind in (*FILE_TYPES, "registry"):
        err = errors[kind]
        assert f"through proxy {dead}" in err and "cannot reach the proxy" in err, (kind, err)
    assert "gave up after 2 attempts" in errors["http"]  # transient: it was retried


def test_the_no_proxy_list_sends_a_server_direct(tmp_path, servers: Servers,
                                                 tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    """An exception (host:port here) goes direct while the rest still goes through the proxy."""
    targets = servers.targets()
    b = ConfigBuilder().fast_retries(2).item(PROXY_HTTP, tinyproxy.url).item(PROXY_HTTPS, tinyproxy.url)
    b.item(EXCEPTIONS, f"example.com, {targets['http']}, {targets['sftp']}")
    for kind in ("http", "sftp", "s3"):
        servers.add(b, kind)
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_loaded(tmp_path / "dev", servers, ("http", "sftp", "s3"))
    assert tinyproxy.saw(mark, targets["s3"])
    log = tinyproxy.since(mark)
    assert targets["http"] not in log and targets["sftp"] not in log, log[-3000:]


def test_proxies_from_the_environment_and_the_config_item_wins(tmp_path, servers: Servers,
                                                               tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    """The agent honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY (and lower-case, ALL_PROXY) read at start; a
    config item replaces the environment's proxies."""
    targets = servers.targets()
    env = {"HTTP_PROXY": tinyproxy.url, "https_proxy": tinyproxy.url, "NO_PROXY": targets["s3"]}
    b = ConfigBuilder().fast_retries(2)
    for kind in ("http", "https", "s3"):
        servers.add(b, kind)
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb", env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_loaded(tmp_path / "dev", servers, ("http", "https", "s3"))
    assert tinyproxy.saw(mark, targets["http"]) and tinyproxy.saw(mark, targets["https"])
    assert targets["s3"] not in tinyproxy.since(mark)  # NO_PROXY

    # ALL_PROXY names a dead proxy; the config item names tinyproxy and wins
    dead = f"http://127.0.0.1:{dead_port()}"
    b2 = ConfigBuilder().fast_retries(2).item(PROXY_HTTP, tinyproxy.url)
    servers.add(b2, "http")
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev2", b2, tmp_path / "config2.pb", env_extra={"ALL_PROXY": dead})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tinyproxy.saw(mark, targets["http"])

    # with only the environment's ALL_PROXY, that dead proxy is used, and named
    b3 = ConfigBuilder().fast_retries(1)
    servers.add(b3, "http")
    proc = run_once(tmp_path / "dev3", b3, tmp_path / "config3.pb", env_extra={"ALL_PROXY": dead})
    assert proc.returncode == 1
    assert f"through proxy {dead}" in _errors(tmp_path / "dev3")["http"]


def test_a_malformed_proxy_item_is_a_config_error_and_no_proxy_applies(tmp_path, servers: Servers,
                                                                       tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    b = ConfigBuilder().fast_retries(1).item(PROXY_HTTP, "socks5://alice:hunter2-secret@127.0.0.1:1080")
    b.item(EXCEPTIONS, "ok.example.com, not a host")
    servers.add(b, "http")
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb", env_extra={"HTTP_PROXY": tinyproxy.url})
    st = device_status(tmp_path / "dev")
    errors = {e["id"]: e["message"] for e in st["config_errors"]}
    assert "socks5 proxy is not supported" in errors[PROXY_HTTP], errors
    assert "'not a host' is not a host" in errors[EXCEPTIONS], errors
    assert "hunter2-secret" not in json.dumps(st) + proc.stderr + proc.stdout
    # the broken items leave the config's proxy unset: the environment's applies, as with no items at all
    assert proc.returncode == 1  # for the config errors: the download itself went through
    assert by_name(st["volumes"], "http")["state"] == "CREATED_VOLUME"
    assert tinyproxy.saw(mark, servers.targets()["http"])


def test_proxy_credentials_work_are_checked_and_never_shown(tmp_path, servers: Servers) -> None:
    """A proxy that wants Basic credentials: the right ones in the URL work (forwarded HTTP and CONNECT tunnels
    alike); none (407) or wrong ones (tinyproxy answers those 401) fail permanently with a hint to fix them;
    and the password shows neither in the agent's log nor in ``device status``."""
    user, password, wrong = "edgevol-proxy", "pr0xy-s3cret-word", "wr0ng-s3cret-word"
    proxy = start_tinyproxy(tmp_path / "authproxy", basic_auth=(user, password))
    shown = ""
    try:
        runs = {"good": (f"http://{user}:{password}@127.0.0.1:{proxy.port}", ("http", "https", "sftp", "gcs")),
                "none": (f"http://127.0.0.1:{proxy.port}",
                         ("http", "s3", "azure", "registry", "https", "gcs-https", "sftp")),
                "wrong": (f"http://{user}:{wrong}@127.0.0.1:{proxy.port}", ("https", "sftp"))}
        for run, (url, kinds) in runs.items():
            b = ConfigBuilder().fast_retries(2).item(PROXY_HTTP, url).item(PROXY_HTTPS, url)
            for kind in kinds:
                servers.add(b, kind)
            mark = proxy.mark()
            proc = run_once(tmp_path / run, b, tmp_path / f"{run}.pb")
            st = device_status(tmp_path / run)
            shown += proc.stderr + proc.stdout + json.dumps(st)
            if run == "good":
                assert proc.returncode == 0, proc.stderr[-3000:]
                _assert_loaded(tmp_path / run, servers, kinds, st)
                assert all(proxy.saw(mark, servers.targets()[k]) for k in kinds)
                continue
            assert proc.returncode == 1
            status, errors = (407 if run == "none" else 401), _errors(tmp_path / run, st)
            for kind in kinds:
                err = errors[kind]
                assert f"through proxy http://127.0.0.1:{proxy.port}: the proxy answered HTTP {status}" in err, err
                assert "check the user:password in the proxy URL" in err and "attempts" not in err, err
    finally:
        proxy.stop()
    assert password not in shown and wrong not in shown


def test_an_https_proxy_is_trusted_only_with_its_ca_in_the_proxy_ca_item(tmp_path, servers: Servers,
                                                                         tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    """TLS to the proxy (a TLS relay in front of tinyproxy, with a private CA's certificate): without that CA
    in edgevol.download.proxy.ca.pem the connection fails certificate verification, naming the proxy; with
    it the download goes through. (Not S3: botocore never verifies TLS to an https proxy that forwards a
    plain-HTTP request, and edgevol allows plain HTTP to an object store only on loopback, as here.)"""
    (tmp_path / "relay-ca").mkdir()
    ca_pem, cert, key = private_ca(tmp_path / "relay-ca")
    relay = TlsRelay(("127.0.0.1", tinyproxy.port), cert, key)
    kinds = ("http", "https", "azure", "gcs", "gcs-https", "sftp")
    try:
        b = ConfigBuilder().fast_retries(1).item(PROXY_HTTP, relay.url).item(PROXY_HTTPS, relay.url)
        for kind in kinds:
            servers.add(b, kind)
        proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
        assert proc.returncode == 1
        errors = _errors(tmp_path / "dev")
        for kind in kinds:
            err = errors[kind]
            assert f"through proxy {relay.url}: TLS certificate verification failed" in err, (kind, err)
            assert "edgevol.download.proxy.ca.pem" in err, err

        b.item(PROXY_CA, ca_pem.decode())
        mark = tinyproxy.mark()
        proc = run_once(tmp_path / "dev2", b, tmp_path / "config2.pb")
        assert proc.returncode == 0, proc.stderr[-3000:]
        _assert_loaded(tmp_path / "dev2", servers, kinds)
        assert all(tinyproxy.saw(mark, servers.targets()[k]) for k in kinds)
    finally:
        relay.stop()


def test_a_networks_enterprise_proxy_applies_when_no_item_is_set(tmp_path, servers: Servers,
                                                                  tinyproxy: RunningTinyproxy) -> None:  # noqa: F811
    """EVE's controller sends the proxy as EdgeDevConfig.networks[].entProxy (read as EVE's zedagent does:
    pkg/pillar/cmd/zedagent/parseconfig.go:2428-2454): it is the download proxy when no item is set."""
    b = ConfigBuilder().fast_retries(2)
    b.network_proxy(http=f"127.0.0.1:{tinyproxy.port}", https=f"127.0.0.1:{dead_port()}")
    servers.add(b, "http")
    mark = tinyproxy.mark()
    proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_loaded(tmp_path / "dev", servers, ("http",))
    assert tinyproxy.saw(mark, servers.targets()["http"])


# -- the rules, without servers -----------------------------------------------------------------------------


def _settings(no_proxy: str = "", http: str = "http://proxy:3128", https: str = "http://proxy:3128") -> ProxySettings:
    return ProxySettings(http, https, proxyconfig.parse_no_proxy(no_proxy, "test"))


def test_scheme_picks_the_proxy_and_sftp_tunnels_through_the_http_one() -> None:
    """As EVE: an https URL takes the HTTPS proxy, an http one the HTTP proxy
    (pkg/pillar/controllerconn/proxy.go:103-108); an SFTP address without scheme is looked up as http://
    (proxy.go:457-460), so it tunnels through the HTTP proxy, else through the HTTPS one."""
    s = ProxySettings("http://h:1", "http://s:2")
    assert proxies.choose_for_url(s, "https://x.example/a") == "http://s:2"
    assert proxies.choose_for_url(s, "http://x.example/a") == "http://h:1"
    assert proxies.choose(s, "sftp", "x.example", 22) == "http://h:1"
    assert proxies.choose(ProxySettings("", "http://s:2"), "sftp", "x.example", 22) == "http://s:2"
    assert proxies.choose(ProxySettings("", "http://s:2"), "http", "x.example") is None
    assert proxies.choose(None, "https", "x.example") is None


@pytest.mark.parametrize("entry, host, port, direct", [
    ("*", "anything.example", 443, True),
    ("example.com", "example.com", 443, True),
    ("example.com", "a.b.example.com", 443, True),
    ("example.com", "notexample.com", 443, False),
    (".example.com", "example.com", 443, False),
    (".example.com", "a.example.com", 443, True),
    ("*.example.com", "a.example.com", 443, True),
    ("*.example.com", "example.com", 443, False),
    ("example.com:8443", "example.com", 8443, True),
    ("example.com:8443", "example.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.1.2.3", 443, False),
    ("10.1.2.3", "10.1.2.3", 80, True),
    ("10.1.2.3:80", "10.1.2.3", 443, False),
    ("[::1]:80", "::1", 80, True),
    ("fd00::/8", "[fd00::5]", 443, True),
    ("EXAMPLE.com", "Example.COM.", 443, True),
])
def test_no_proxy_entries_match_as_eve_does(entry: str, host: str, port: int, direct: bool) -> None:
    """EVE's ProxyConfig.exceptions rules (pkg/pillar/controllerconn/proxy.go:36-49 and 188-244): ``*``,
    CIDRs, IPs, host names matching their subdomains, ``.domain`` and ``*.domain`` for subdomains only,
    each with an optional port, case-insensitive. One difference: loopback is not implicitly direct
    (proxy.go:153-160 makes it so); the list says what is."""
    s = _settings(entry)
    assert (proxies.choose(s, "https", host, port) is None) is direct
    assert proxies.choose(_settings(""), "https", "127.0.0.1", 443) == "http://proxy:3128"


@pytest.mark.parametrize("value, normalized", [
    ("proxy.example:3128", "http://proxy.example:3128"),
    ("http://proxy.example", "http://proxy.example:80"),
    ("https://proxy.example/", "https://proxy.example:443"),
    ("http://u%40x:p%3Aw@[fd00::1]:8080", "http://u%40x:p%3Aw@[fd00::1]:8080"),
])
def test_proxy_urls_are_normalized(value: str, normalized: str) -> None:
    assert proxyconfig.parse_proxy_url(value, "item") == normalized


@pytest.mark.parametrize("value, message", [
    ("socks5://h:1080", "socks5 proxy is not supported"),
    ("http://h:99999", "is not a proxy URL"),
    ("http://h:3128/path", "no path, query or fragment"),
    ("http://:3128", "names no valid proxy host"),
    ("http://user:pa55word@bad host:1", "not repeated here"),
])
def test_bad_proxy_urls_are_refused_without_their_credentials(value: str, message: str) -> None:
    with pytest.raises(proxyconfig.ProxyConfigError, match=message) as info:
        proxyconfig.parse_proxy_url(value, "item")
    assert "pa55word" not in str(info.value)


def test_proxy_items_parse_into_settings_and_bad_ones_are_config_errors(tmp_path) -> None:
    ca_pem, _cert, _key = private_ca(tmp_path)
    b = ConfigBuilder().item(PROXY_HTTPS, "https://u:p@proxy.example:8443").item(EXCEPTIONS, " .corp, 10.0.0.0/8 ")
    b.item(PROXY_CA, (ca_pem + ca_pem).decode())
    state = parse_config(b.cfg)
    assert state.errors == []
    assert state.settings.proxy == ProxySettings("", "https://u:p@proxy.example:8443", (".corp", "10.0.0.0/8"),
                                                 (ca_pem.strip() + b"\n",) * 2)
    assert "u:p" not in repr(state.settings)
    bad = parse_config(ConfigBuilder().item(PROXY_HTTP, "http://proxy:3128").item(PROXY_CA, "not a cert").cfg)
    assert bad.settings.proxy == ProxySettings()
    assert [(e.object_id, "no PEM certificate" in e.message) for e in bad.errors] == [(PROXY_CA, True)]


def test_environment_variables_and_what_wins() -> None:
    env = {"http_proxy": "proxy:1", "HTTPS_PROXY": "http://s:2", "https_proxy": "http://lower:3",
           "NO_PROXY": "a.example, bad entry", "ALL_PROXY": "socks5://x:1"}
    settings, warnings = proxies.from_environment(env)
    assert settings == ProxySettings("http://proxy:1", "http://s:2", ("a.example",))
    assert len(warnings) == 2 and "socks5" in warnings[0] and "'bad entry'" in warnings[1], warnings
    fallback, _ = proxies.from_environment({"all_proxy": "http://all:9"})
    assert (fallback.http_proxy, fallback.https_proxy) == ("http://all:9", "http://all:9")
    config = ProxySettings("", "", ("b.example",), (b"ca",))
    assert proxies.effective(config, settings) == ProxySettings("http://proxy:1", "http://s:2", ("b.example",),
                                                                (b"ca",))
    named = ProxySettings("http://c:5", "", (), ())
    assert proxies.effective(named, settings) == named
    assert os.environ.get("HTTP_PROXY") is None  # conftest keeps the host's proxies away from every agent


def test_ent_proxy_is_read_as_eve_reads_it_and_items_win(tmp_path) -> None:
    """PROXY_HTTP for http:// targets, PROXY_HTTPS for https:// ones, each at server:port with http://
    prepended (pkg/pillar/controllerconn/proxy.go:408-435 and 119-135; types/dpc.go:942-957); the first
    network with a proxy counts; SOCKS and PAC are reported, not used; an edgevol.download.proxy.* item wins."""
    ca_pem, _cert, _key = private_ca(tmp_path)
    b = ConfigBuilder()
    b.cfg.networks.add(id="no-proxy-here")
    net = b.network_proxy(http="proxy.corp:3128", https="secure.corp:8443", exceptions=".corp", certs=(ca_pem,))
    b.cfg.networks[-1].entProxy.proxies.add(proto=m.proxyProto.PROXY_SOCKS, server="socks.corp", port=1080)
    b.cfg.networks[-1].entProxy.pacfile = "ZnVuY3Rpb24="
    b.network_proxy(http="second.corp:1")
    state = parse_config(b.cfg)
    assert state.settings.proxy == ProxySettings("http://proxy.corp:3128", "http://secure.corp:8443", (".corp",),
                                                 (ca_pem.strip() + b"\n",))
    assert sorted(("PAC" in e.message, "type 2 is not supported" in e.message, e.object_id) for e in state.errors) == [
        (False, True, net), (True, False, net)]
    b.item(PROXY_HTTPS, "http://item.corp:1")
    assert parse_config(b.cfg).settings.proxy == ProxySettings("", "http://item.corp:1")
    bad = ConfigBuilder()
    bad.network_proxy(http="proxy.corp:3128", exceptions="not a host")
    bad_state = parse_config(bad.cfg)
    assert bad_state.settings.proxy == ProxySettings() and "no download proxy applies" in bad_state.errors[0].message


@pytest.mark.parametrize("status, reason, retryable, words", [
    (None, "Connection refused", True, "cannot reach the proxy: Connection refused"),
    (407, "", False, "HTTP 407 (proxy authentication)"),
    (403, "", False, "its access rules"),
    (502, "", True, "could not reach the server"),
    (405, "", False, "refused the request (HTTP 405)"),
])
def test_proxy_failures_are_classified_and_never_show_credentials(status: int | None, reason: str, retryable: bool,
                                                                  words: str) -> None:
    err = proxies.proxy_failure("http://me:pa55word@proxy.corp:3128", "https://x/y", status=status, reason=reason)
    assert err.retryable is retryable and words in str(err), str(err)
    assert str(err).startswith("https://x/y: through proxy http://proxy.corp:3128: ") and "pa55word" not in str(err)
