"""Signed content (``siginfo``): a bad or unverifiable signature keeps the content from becoming a volume.

The rules are EVE 5.6's verifier (lf-edge/eve 5.6.0, pkg/pillar/cmd/verifier/verifier.go:648-785):
the signer's certificate chains to the device's root through the intermediate certificate
(:695-735), the signature is over the image's sha256 digest (:613, :747 ``VerifyPKCS1v15(pub,
crypto.SHA256, imageHash, imgSig)``), and an ECDSA signature is the base64 text of r||s (:755-770).
The certificates are served by the content tree's own datastore, a real HTTP server here, and
every chain is made at test time with ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.x509.oid import NameOID

from edgevol.model.parse import parse_config
from edgevol.trust.content import sign_content, verify_content_signature
from edgevol.trust.pki import TrustError
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, make_raw_image, open_guest
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401
from tests.test_cli_admin import ok, refused

MiB = 1 << 20
NOW = dt.datetime.now(dt.timezone.utc)


@dataclass
class Cert:
    key: object
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore
                                      serialization.NoEncryption())


def make_cert(cn: str, issuer: Cert | None, *, ca: bool, kind: str = "ec",
              valid: tuple[dt.datetime, dt.datetime] = (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30))
              ) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return Cert(key, builder.sign((issuer or Cert(key, None)).key, hashes.SHA256()))  # type: ignore[arg-type]


def rsa_sign(sha: str, signer: Cert) -> bytes:
    return signer.key.sign(bytes.fromhex(sha), padding.PKCS1v15(), Prehashed(hashes.SHA256()))  # type: ignore


def ecdsa_sign_eve(sha: str, signer: Cert) -> bytes:
    """EVE 5.6's form: base64 of the 64-byte r||s."""
    r, s = decode_dss_signature(signer.key.sign(bytes.fromhex(sha), ec.ECDSA(Prehashed(hashes.SHA256()))))  # type: ignore
    return base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def signed(b: ConfigBuilder, ds: str, image: Path, name: str, signer_url: str, signature: bytes,
           inter_url: str = "") -> str:
    ct = b.content_tree(ds, image.name, sha256_file(image), "raw", name=name)
    si = b.cfg.contentInfo[-1].siginfo
    si.signercerturl, si.intercertsurl, si.signature = signer_url, inter_url, signature
    b.download_volume(ct, 4 * MiB, name=f"vol-{name}")
    return ct


def run_once(data: Path, b: ConfigBuilder, cfg: Path, *trust: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    args = [a for t in trust for a in ("--content-trust", str(t))]
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once",
                           *args], capture_output=True, text=True, timeout=120)


def test_only_content_with_a_good_trusted_signature_becomes_a_volume(tmp_path, datastore_dir, http_server):
    root = make_cert("content root", None, ca=True)
    inter = make_cert("content intermediate", root, ca=True)
    rsa_signer = make_cert("rsa signer", inter, ca=False, kind="rsa")
    ec_signer = make_cert("ec signer", root, ca=False)
    stranger_root = make_cert("another root", None, ca=True)
    stranger = make_cert("stranger", stranger_root, ca=False)
    expired = make_cert("expired signer", root, ca=False,
                        valid=(NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)))
    certs = datastore_dir / "certs"
    certs.mkdir()
    for name, c in (("inter.pem", inter), ("rsa.pem", rsa_signer), ("ec.pem", ec_signer),
                    ("stranger.pem", stranger), ("expired.pem", expired)):
        (certs / name).write_bytes(c.pem)
    trust = tmp_path / "trust.pem"
    trust.write_bytes(root.pem)

    images = {n: make_raw_image(datastore_dir / f"{n}.raw", 2, seed=i) for i, n in enumerate(
        ("rsa", "ec", "stranger", "expired", "nochain", "tampered", "missing"), start=60)}
    sha = {n: sha256_file(p) for n, p in images.items()}
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    signed(b, ds, images["rsa"], "rsa", "certs/rsa.pem", rsa_sign(sha["rsa"], rsa_signer), "certs/inter.pem")
    signed(b, ds, images["ec"], "ec", "certs/ec.pem", ecdsa_sign_eve(sha["ec"], ec_signer))
    signed(b, ds, images["stranger"], "stranger", "certs/stranger.pem", ecdsa_sign_eve(sha["stranger"], stranger))
    signed(b, ds, images["expired"], "expired", "certs/expired.pem", ecdsa_sign_eve(sha["expired"], expired))
    # broken chain: the intermediate is not given, so the RSA signer cannot reach the root
    signed(b, ds, images["nochain"], "nochain", "certs/rsa.pem", rsa_sign(sha["nochain"], rsa_signer))
    # tampered: a good signer, but the signature is over other content
    signed(b, ds, images["tampered"], "tampered", "certs/ec.pem", ecdsa_sign_eve(sha["rsa"], ec_signer))
    signed(b, ds, images["missing"], "missing", "certs/nowhere.pem", ecdsa_sign_eve(sha["missing"], ec_signer))
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"

    proc = run_once(data, b, cfg, trust)
    assert proc.returncode == 1, proc.stderr[-3000:]  # some content trees are in error
    st = device_status(data)
    trees = {t["display_name"]: t for t in st["content_trees"]}
    vols = {v["display_name"]: v for v in st["volumes"]}
    for good in ("rsa", "ec"):
        assert trees[good]["state"] == "LOADED" and trees[good]["error"] is None, trees[good]
        assert vols[f"vol-{good}"]["state"] == "CREATED_VOLUME"
        with open_guest(vols[f"vol-{good}"]["path"]) as f:
            assert f.read(2 * MiB) == images[good].read_bytes()
    why = {"stranger": "signer certificate not trusted", "expired": "signer certificate not trusted",
           "nochain": "signer certificate not trusted", "tampered": "does not verify over the content's sha256",
           "missing": "fetching the signer's certificates"}
    for bad, text in why.items():
        t = trees[bad]
        assert t["state"] == "ERROR" and t["reported_state"] == "VERIFYING", t
        assert text in t["error"]["description"] and "nothing of this content becomes a volume" in \
            t["error"]["description"], t["error"]
        assert vols[f"vol-{bad}"]["path"] is None  # nothing of it became a volume
    assert "expired" in trees["expired"]["error"]["description"] or "valid" in trees["expired"]["error"]["description"]
    # the blobs themselves are fine (their sha256 matched): only the signature is refused
    assert {bl["state"] for bl in st["blobs"]} == {"LOADED"}

    # the verdict is remembered: after a restart, with the certificates gone from the datastore, the good
    # content is still good (it was not fetched again) and the bad still bad
    (certs / "rsa.pem").rename(certs / "rsa.pem.away")
    (certs / "ec.pem").rename(certs / "ec.pem.away")
    assert run_once(data, b, cfg, trust).returncode == 1
    trees = {t["display_name"]: t for t in device_status(data)["content_trees"]}
    assert trees["rsa"]["state"] == trees["ec"]["state"] == "LOADED"
    assert "does not verify" in trees["tampered"]["error"]["description"]
    (certs / "ec.pem.away").rename(certs / "ec.pem")

    # another trust bundle is a new question: with the stranger's root trusted too, its content goes through
    both = tmp_path / "both.pem"
    both.write_bytes(root.pem + stranger_root.pem)
    run_once(data, b, cfg, both)
    assert by_name(device_status(data)["volumes"], "vol-stranger")["state"] == "CREATED_VOLUME"


def test_without_trust_anchors_signed_content_is_refused(tmp_path, datastore_dir, http_server):
    root = make_cert("root", None, ca=True)
    signer = make_cert("signer", root, ca=False)
    (datastore_dir / "signer.pem").write_bytes(signer.pem)
    image = make_raw_image(datastore_dir / "a.raw", 2, seed=70)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    signed(b, ds, image, "a", "signer.pem", ecdsa_sign_eve(sha256_file(image), signer))
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    assert run_once(data, b, cfg).returncode == 1
    tree = by_name(device_status(data)["content_trees"], "a")
    assert "no trust anchors" in tree["error"]["description"]


def test_a_config_item_can_require_signatures(tmp_path, datastore_dir, http_server):
    root = make_cert("root", None, ca=True)
    signer = make_cert("signer", root, ca=False)
    (datastore_dir / "signer.pem").write_bytes(signer.pem)
    trust = tmp_path / "trust.pem"
    trust.write_bytes(root.pem)
    plain, good = make_raw_image(datastore_dir / "plain.raw", 2, seed=71), \
        make_raw_image(datastore_dir / "good.raw", 2, seed=72)
    b = ConfigBuilder().item("edgevol.content.signature.required", "true")
    ds = b.datastore(http_server.url)
    unsigned = b.content_tree(ds, "plain.raw", sha256_file(plain), "raw", name="plain")
    b.download_volume(unsigned, 4 * MiB, name="vol-plain")
    signed(b, ds, good, "good", "signer.pem", ecdsa_sign_eve(sha256_file(good), signer))
    errors = {e.object_id: e.message for e in parse_config(b.cfg).errors}
    assert "has no siginfo, and edgevol.content.signature.required is true" in errors[unsigned]
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    assert run_once(data, b, cfg, trust).returncode == 1
    st = device_status(data)
    assert by_name(st["volumes"], "vol-good")["state"] == "CREATED_VOLUME"
    assert not any(v["display_name"] == "vol-plain" and v["path"] for v in st["volumes"])
    assert not (datastore_dir / "plain.raw").stat().st_size == 0  # the file is there; it was never fetched
    assert sha256_file(plain) not in {bl["sha256"] for bl in st["blobs"]}


def test_sign_and_verify_both_key_types_and_signature_forms():
    """The controller signs with an operator's key in EVE's form; the device accepts that and the other forms."""
    root = make_cert("root", None, ca=True)
    sha = hashlib.sha256(b"content").hexdigest()
    for kind in ("ec", "rsa"):
        signer = make_cert(f"{kind} signer", root, ca=False, kind=kind)
        sig = sign_content(sha, signer.key_pem)
        verify_content_signature(sha, sig, signer.pem, root.pem)
        if kind == "ec":
            raw = base64.b64decode(sig)
            assert len(raw) == 64  # EVE 5.6: base64 of r||s
            verify_content_signature(sha, raw, signer.pem, root.pem)  # raw r||s
            der = signer.key.sign(bytes.fromhex(sha), ec.ECDSA(Prehashed(hashes.SHA256())))  # type: ignore
            verify_content_signature(sha, der, signer.pem, root.pem)  # ASN.1 DER
        other = hashlib.sha256(b"other").hexdigest()
        try:
            verify_content_signature(other, sig, signer.pem, root.pem)
        except TrustError as exc:
            assert "does not verify" in str(exc)
        else:
            raise AssertionError("a signature over other content verified")


def test_the_controller_signs_with_the_operators_key_and_an_online_device_verifies(
        controller_factory, agent_factory, datastore_dir, http_server, tmp_path):  # noqa: F811
    """`edgevol admin content-tree create --sign-key` signs the sha256 at the controller (the key is not kept),
    the config carries siginfo, the device verifies it; a garbage signature is refused, VERIFYING on the wire."""
    root = make_cert("operator root", None, ca=True)
    signer = make_cert("operator signer", root, ca=False)
    (datastore_dir / "signer.pem").write_bytes(signer.pem)
    key = tmp_path / "signer.key"
    key.write_bytes(signer.key_pem)
    trust = tmp_path / "trust.pem"
    trust.write_bytes(root.pem)
    good, bad = make_raw_image(datastore_dir / "good.raw", 2, seed=81), make_raw_image(datastore_dir / "bad.raw", 2,
                                                                                       seed=82)
    garbage = tmp_path / "garbage.sig"
    garbage.write_bytes(b"\x00" * 64)
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    ok(ctrl, "datastore", "create", "local", "--type", "DsHttp", "--fqdn", http_server.url)
    ok(ctrl, "content-tree", "create", "good", "--device", "dev1", "--datastore", "local", "--url", "good.raw",
       "--format", "RAW", "--sha256", sha256_file(good), "--sign-key", str(key), "--signer-cert", "signer.pem")
    ok(ctrl, "content-tree", "create", "bad", "--device", "dev1", "--datastore", "local", "--url", "bad.raw",
       "--format", "RAW", "--sha256", sha256_file(bad), "--signature", str(garbage), "--signer-cert", "signer.pem")
    assert "signing needs the content's sha256" in refused(
        ctrl, "content-tree", "create", "nosha", "--device", "dev1", "--datastore", "local", "--url", "x.raw",
        "--format", "RAW", "--sign-key", str(key), "--signer-cert", "signer.pem")
    stored = ctrl.admin("GET", "/devices/dev1/content-trees/good")
    assert stored["signer_cert_url"] == "signer.pem" and "key" not in str(stored).lower().replace("sign_key", "")
    for name in ("good", "bad"):
        ctrl.admin("POST", "/devices/dev1/volumes", json={"name": f"vol-{name}", "origin": "download",
                                                          "content_tree": name, "max_size_bytes": 4 * MiB})
    agent.start("--content-trust", str(trust))

    def reported(kind: str) -> dict[str, dict]:
        return {r["display_name"]: r for r in ctrl.admin("GET", "/devices/dev1/reported", params={"kind": kind})}

    wait_for(lambda: reported("volume").get("vol-good", {}).get("state_name") == "CREATED_VOLUME", 60,
             "the signed content's volume")
    bad_tree = wait_for(lambda: (lambda t: t if t and t["error"] else None)(reported("content_tree").get("bad")),
                        60, "the bad signature's error")
    assert bad_tree["state_name"] == "VERIFYING"
    assert "signature: ecdsa signature does not verify" in bad_tree["error"]["description"]
    assert reported("content_tree")["good"]["state_name"] == "DELIVERED"
    assert reported("volume").get("vol-bad", {}).get("state_name") != "CREATED_VOLUME"
    assert not [v for v in agent.status()["volumes"] if v["display_name"] == "vol-bad" and v["path"]]
