"""The protobuf layer: generated code is current, the wire matches EVE, files load.

Wire facts are checked two ways: hand-encoded bytes for the fields the rest
of edgevol leans on hardest, and a field-by-field table of the whole public
contract (names, numbers, types, enum values) against the descriptors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format

from edgevol.api import codec
from edgevol.api.codec import (
    ConfigDecodeError,
    decode_edge_dev_config,
    dump_edge_dev_config_json,
    load_edge_dev_config,
    save_edge_dev_config,
)
from edgevol.api.messages import (
    AppInstanceConfig,
    AuthBody,
    AuthContainer,
    CipherBlock,
    CipherContext,
    ConfigItem,
    ConfigRequest,
    ConfigResponse,
    ContentTree,
    DatastoreConfig,
    Drive,
    DriveType,
    DsType,
    EdgeDevConfig,
    Entity,
    ErrorInfo,
    Format,
    HashAlgorithm,
    Image,
    InstanceOpsCmd,
    Severity,
    UUIDandVersion,
    Volume,
    VolumeContentOrigin,
    VolumeContentOriginType,
    VolumeRef,
    ZCert,
    ZCertType,
    ZControllerCert,
    ZInfoBlob,
    ZInfoBlobList,
    ZInfoContentTree,
    ZInfoMsg,
    ZInfoTypes,
    ZInfoVolume,
    ZMetricMsg,
    ZMetricVolume,
    ZRegisterMsg,
    ZSwState,
)

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "src" / "edgevol" / "api"


# --- hand encoding ----------------------------------------------------------


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def vint(field: int, value: int) -> bytes:
    """A varint field (ints, bools, enums)."""
    return tag(field, 0) + varint(value)


def ld(field: int, payload: bytes | str) -> bytes:
    """A length-delimited field (strings, bytes, sub-messages)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return tag(field, 2) + varint(len(payload)) + payload


# --- generated code is current ----------------------------------------------


def _generated(root: Path) -> dict[str, bytes]:
    found = {}
    for pattern in ("*_pb2.py", "*_pb2.pyi"):
        for p in root.rglob(pattern):
            found[p.relative_to(root).as_posix()] = p.read_bytes()
    return found


def test_committed_generated_code_matches_proto_sources(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_protos.sh"), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    fresh = _generated(tmp_path / "edgevol" / "api")
    committed = _generated(API_DIR)
    protos = sorted(p.relative_to(API_DIR).as_posix() for p in API_DIR.rglob("*.proto"))

    assert len(protos) >= 10
    assert len(fresh) == 2 * len(protos), "every .proto yields a _pb2.py and a _pb2.pyi"
    assert sorted(committed) == sorted(fresh), (
        "generated files out of sync with .proto files (stale or orphaned); "
        "run scripts/gen_protos.sh"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}; run scripts/gen_protos.sh"


def test_every_generated_package_is_importable() -> None:
    for area in ("common", "config", "info", "metrics", "auth", "certs", "register"):
        assert (API_DIR / "eve" / area / "__init__.py").is_file()
    from edgevol.api import devconfig_pb2, info_pb2
    from edgevol.api.eve.config import storage_pb2

    assert devconfig_pb2.EdgeDevConfig is EdgeDevConfig
    assert info_pb2.ZInfoMsg is ZInfoMsg
    assert storage_pb2.Volume is Volume


# --- wire facts, byte by byte -----------------------------------------------


def test_full_type_names_use_eve_packages() -> None:
    names = {
        EdgeDevConfig: "org.lfedge.eve.config.EdgeDevConfig",
        ContentTree: "org.lfedge.eve.config.ContentTree",
        DatastoreConfig: "org.lfedge.eve.config.DatastoreConfig",
        ZInfoMsg: "org.lfedge.eve.info.ZInfoMsg",
        ZMetricMsg: "org.lfedge.eve.metrics.ZMetricMsg",
        AuthContainer: "org.lfedge.eve.auth.AuthContainer",
        CipherBlock: "org.lfedge.eve.common.CipherBlock",
        ZControllerCert: "org.lfedge.eve.certs.ZControllerCert",
        ZRegisterMsg: "org.lfedge.eve.register.ZRegisterMsg",
    }
    for cls, full_name in names.items():
        assert cls.DESCRIPTOR.full_name == full_name
    assert HashAlgorithm.DESCRIPTOR.full_name == "org.lfedge.eve.common.HashAlgorithm"
    assert ZSwState.DESCRIPTOR.full_name == "org.lfedge.eve.info.ZSwState"


def test_zinfomsg_oneof_numbers_on_the_wire() -> None:
    vol = ld(1, "vol-1") + vint(5, ZSwState.CREATED_VOLUME) + vint(8, 3)
    wire = vint(1, 7) + ld(2, "dev-1") + ld(13, vol)
    msg = ZInfoMsg.FromString(wire)
    assert msg.ztype == ZInfoTypes.ZiVolume
    assert msg.devId == "dev-1"
    assert msg.WhichOneof("InfoContent") == "vinfo"
    assert msg.vinfo.uuid == "vol-1"
    assert msg.vinfo.state == ZSwState.CREATED_VOLUME == 15
    assert msg.vinfo.generation_count == 3

    built = ZInfoMsg(ztype=ZInfoTypes.ZiVolume, devId="dev-1")
    built.vinfo.uuid = "vol-1"
    built.vinfo.state = ZSwState.CREATED_VOLUME
    built.vinfo.generation_count = 3
    assert built.SerializeToString() == wire

    tree = ZInfoMsg(ztype=ZInfoTypes.ZiContentTree)
    tree.cinfo.sha256 = "ab"
    tree.cinfo.generation_count = 2
    assert tree.SerializeToString() == vint(1, 8) + ld(14, ld(3, "ab") + vint(10, 2))

    blobs = ZInfoMsg(ztype=ZInfoTypes.ZiBlobList)
    blobs.binfo.blob.add(sha256="cd", state=ZSwState.LOADED, progressPercentage=100)
    assert blobs.SerializeToString() == vint(1, 9) + ld(
        15, ld(1, ld(1, "cd") + vint(4, 19) + vint(5, 100))
    )

    stamped = ZInfoMsg()
    stamped.atTimeStamp.seconds = 5
    assert stamped.SerializeToString() == ld(6, vint(1, 5))


def test_config_object_numbers_on_the_wire() -> None:
    ct = ContentTree(uuid="c", sha256="s", generation_count=1, ds_ids_list=["d1", "d2"])
    assert ct.SerializeToString() == ld(1, "c") + ld(5, "s") + vint(9, 1) + ld(11, "d1") + ld(11, "d2")

    vol = Volume(uuid="v", generationCount=4, maxsizebytes=1 << 30, readonly=True)
    vol.origin.type = VolumeContentOriginType.VCOT_DOWNLOAD
    vol.origin.downloadContentTreeID = "c"
    assert vol.SerializeToString() == (
        ld(1, "v") + ld(2, vint(1, 2) + ld(2, "c")) + vint(4, 4) + vint(5, 1 << 30) + vint(6, 1)
    )

    ds = DatastoreConfig(id="ds", dType=DsType.DsHttps, fqdn="https://h")
    # id is field 100: tag (100 << 3 | 2) = 802 = varint a2 06.
    assert ds.SerializeToString() == vint(1, 2) + ld(2, "https://h") + b"\xa2\x06\x02ds"

    app = AppInstanceConfig(displayname="a")
    app.volumeRefList.add(uuid="v", generationCount=4, mount_dir="/data")
    assert app.SerializeToString() == ld(2, "a") + ld(16, ld(1, "v") + vint(2, 4) + ld(3, "/data"))

    cfg = EdgeDevConfig()
    cfg.contentInfo.add(uuid="c")
    cfg.volumes.add(uuid="v")
    assert cfg.SerializeToString() == ld(20, ld(1, "c")) + ld(21, ld(1, "v"))


def test_auth_metrics_and_register_numbers_on_the_wire() -> None:
    env = AuthContainer(
        protectedPayload=AuthBody(payload=b"P"),
        algo=HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES,
        senderCertHash=b"H",
        signatureHash=b"S",
        senderCert=b"C",
        cipherContext=CipherContext(contextId="x"),
        cipherData=CipherBlock(cipherContextId="x"),
    )
    assert env.SerializeToString() == (
        ld(1, ld(1, b"P"))
        + vint(2, 2)
        + ld(3, b"H")
        + ld(4, b"S")
        + ld(5, b"C")
        + ld(6, ld(1, "x"))
        + ld(7, ld(1, "x"))
    )

    metrics = ZMetricMsg(devID="d")
    metrics.vm.add(uuid="v", totalBytes=10, usedBytes=4)
    assert metrics.SerializeToString() == ld(1, "d") + ld(8, ld(1, "v") + vint(7, 10) + vint(8, 4))

    reg = ZRegisterMsg(pemCert=b"PEM", serial="123", softSerial="abc")
    assert reg.SerializeToString() == ld(2, b"PEM") + ld(3, "123") + ld(4, "abc")

    certs = ZControllerCert()
    certs.certs.add(
        hashAlgo=HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES,
        certHash=b"h",
        type=ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE,
        cert=b"c",
    )
    assert certs.SerializeToString() == ld(1, vint(1, 1) + ld(2, b"h") + vint(3, 2) + ld(4, b"c"))

    req = ConfigRequest(configHash="h", integrity_token=b"t")
    assert req.SerializeToString() == ld(1, "h") + ld(2, b"t")
    resp = ConfigResponse(configHash="h")
    resp.config.id.uuid = "d"
    assert resp.SerializeToString() == ld(1, ld(1, ld(1, "d"))) + ld(2, "h")


# --- wire facts, the whole table --------------------------------------------

# The public contract (API.md), in proto-like shorthand. Short type names are
# resolved in the message's own package.
MESSAGES: dict[str, str] = {
    "org.lfedge.eve.config.UUIDandVersion": "string uuid=1; string version=2",
    "org.lfedge.eve.config.ConfigItem": "string key=1; string value=2",
    "org.lfedge.eve.config.SignatureInfo": "string intercertsurl=1; string signercerturl=2; bytes signature=3",
    "org.lfedge.eve.config.DatastoreConfig": (
        "string id=100; DsType dType=1; string fqdn=2; string apiKey=3; string password=4; "
        "string dpath=5; string region=6; org.lfedge.eve.common.CipherBlock cipherData=7; "
        "repeated bytes dsCertPEM=8"
    ),
    "org.lfedge.eve.config.Image": (
        "UUIDandVersion uuidandversion=1; string name=2; string sha256=3; Format iformat=4; "
        "SignatureInfo siginfo=5; string dsId=6; int64 sizeBytes=8"
    ),
    "org.lfedge.eve.config.Drive": (
        "Image image=1; bool readonly=5; bool preserve=6; DriveType drvtype=8; Target target=9; "
        "int64 maxsizebytes=10"
    ),
    "org.lfedge.eve.config.ContentTree": (
        "string uuid=1; string dsId=2; string URL=3; Format iformat=4; string sha256=5; "
        "uint64 maxSizeBytes=6; SignatureInfo siginfo=7; string displayName=8; "
        "int64 generation_count=9; string custom_meta_data=10; repeated string ds_ids_list=11"
    ),
    "org.lfedge.eve.config.VolumeContentOrigin": (
        "VolumeContentOriginType type=1; string downloadContentTreeID=2"
    ),
    "org.lfedge.eve.config.Volume": (
        "string uuid=1; VolumeContentOrigin origin=2; repeated VolumeAccessProtocols protocols=3; "
        "int64 generationCount=4; int64 maxsizebytes=5; bool readonly=6; string displayName=7; "
        "bool clear_text=8; Target target=9"
    ),
    "org.lfedge.eve.config.InstanceOpsCmd": "uint32 counter=2; string opsTime=4",
    "org.lfedge.eve.config.VolumeRef": "string uuid=1; int64 generationCount=2; string mount_dir=3",
    "org.lfedge.eve.config.AppInstanceConfig": (
        "UUIDandVersion uuidandversion=1; string displayname=2; repeated Drive drives=4; "
        "bool activate=5; InstanceOpsCmd restart=9; InstanceOpsCmd purge=10; "
        "repeated VolumeRef volumeRefList=16"
    ),
    "org.lfedge.eve.config.EdgeDevConfig": (
        "UUIDandVersion id=1; repeated AppInstanceConfig apps=4; "
        "repeated DatastoreConfig datastores=6; repeated ConfigItem configItems=11; "
        "repeated ContentTree contentInfo=20; repeated Volume volumes=21; repeated NetworkConfig networks=5"
    ),
    "org.lfedge.eve.config.NetworkConfig": "string id=1; org.lfedge.eve.common.ProxyConfig entProxy=8",
    "org.lfedge.eve.common.ProxyConfig": (
        "bool networkProxyEnable=1; repeated ProxyServer proxies=2; string exceptions=3; string pacfile=4; "
        "string networkProxyURL=5; repeated bytes proxyCertPEM=6"
    ),
    "org.lfedge.eve.common.ProxyServer": "proxyProto proto=1; string server=2; uint32 port=3",
    "org.lfedge.eve.config.ConfigRequest": "string configHash=1; bytes integrity_token=2",
    "org.lfedge.eve.config.ConfigResponse": "EdgeDevConfig config=1; string configHash=2",
    "org.lfedge.eve.info.DeviceEntity": "Entity entity=1; string entity_id=2; string entity_name=3",
    "org.lfedge.eve.info.ErrorInfo": (
        "string description=1; google.protobuf.Timestamp timestamp=2; Severity severity=3; "
        "repeated DeviceEntity entities=4; string retry_condition=5"
    ),
    "org.lfedge.eve.info.UsageInfo": (
        "google.protobuf.Timestamp createTime=1; uint32 refCount=2; "
        "google.protobuf.Timestamp lastRefcountChangeTime=3"
    ),
    "org.lfedge.eve.info.VolumeResources": "uint64 maxSizeBytes=1; uint64 curSizeBytes=2",
    "org.lfedge.eve.info.ZInfoVolume": (
        "string uuid=1; string displayName=2; UsageInfo usage=3; VolumeResources resources=4; "
        "ZSwState state=5; uint32 progressPercentage=6; ErrorInfo volumeErr=7; "
        "int64 generation_count=8"
    ),
    "org.lfedge.eve.info.ContentResources": "uint64 curSizeBytes=1",
    "org.lfedge.eve.info.ZInfoContentTree": (
        "string uuid=1; string displayName=2; string sha256=3; ContentResources resources=4; "
        "UsageInfo usage=5; ZSwState state=6; uint32 progressPercentage=7; ErrorInfo err=8; "
        "repeated string componentShaList=9; int64 generation_count=10"
    ),
    "org.lfedge.eve.info.ZInfoBlob": (
        "string sha256=1; ContentResources resources=2; UsageInfo usage=3; ZSwState state=4; "
        "uint32 progressPercentage=5; ErrorInfo err=6"
    ),
    "org.lfedge.eve.info.ZInfoBlobList": "repeated ZInfoBlob blob=1",
    "org.lfedge.eve.info.ZInfoApp": (
        "string AppID=1; string AppName=7; repeated ErrorInfo appErr=14; ZSwState state=15; "
        "repeated string volumeRefs=17"
    ),
    "org.lfedge.eve.info.ZInfoMsg": (
        "ZInfoTypes ztype=1; string devId=2; ZInfoApp ainfo=5; ZInfoVolume vinfo=13; "
        "ZInfoContentTree cinfo=14; ZInfoBlobList binfo=15; google.protobuf.Timestamp atTimeStamp=6"
    ),
    "org.lfedge.eve.metrics.ZMetricVolume": (
        "string uuid=1; string displayName=2; uint64 readBytes=3; uint64 writeBytes=4; "
        "uint64 readCount=5; uint64 writeCount=6; uint64 totalBytes=7; uint64 usedBytes=8; "
        "uint64 freeBytes=9"
    ),
    "org.lfedge.eve.metrics.ZMetricMsg": (
        "string devID=1; google.protobuf.Timestamp atTimeStamp=3; repeated ZMetricVolume vm=8"
    ),
    "org.lfedge.eve.auth.AuthBody": "bytes payload=1",
    "org.lfedge.eve.auth.AuthContainer": (
        "AuthBody protectedPayload=1; org.lfedge.eve.common.HashAlgorithm algo=2; "
        "bytes senderCertHash=3; bytes signatureHash=4; bytes senderCert=5; "
        "org.lfedge.eve.common.CipherContext cipherContext=6; "
        "org.lfedge.eve.common.CipherBlock cipherData=7"
    ),
    "org.lfedge.eve.common.CipherContext": (
        "string contextId=1; HashAlgorithm hashScheme=2; KeyExchangeScheme keyExchangeScheme=3; "
        "EncryptionScheme encryptionScheme=4; bytes deviceCertHash=5; bytes controllerCertHash=6"
    ),
    "org.lfedge.eve.common.CipherBlock": (
        "string cipherContextId=1; bytes initialValue=2; bytes cipherData=3; bytes clearTextSha256=4"
    ),
    "org.lfedge.eve.register.ZRegisterMsg": (
        "string onBoardKey=1; bytes pemCert=2; string serial=3; string softSerial=4"
    ),
    "org.lfedge.eve.certs.ZControllerCert": "repeated ZCert certs=1",
    "org.lfedge.eve.certs.ZCert": (
        "org.lfedge.eve.common.HashAlgorithm hashAlgo=1; bytes certHash=2; ZCertType type=3; "
        "bytes cert=4"
    ),
}

ENUMS: dict[str, str] = {
    "org.lfedge.eve.config.DsType": (
        "DsUnknown=0 DsHttp=1 DsHttps=2 DsS3=3 DsSFTP=4 DsContainerRegistry=5 DsAzureBlob=6 "
        "DsGoogleStorage=7"
    ),
    "org.lfedge.eve.config.Format": (
        "FmtUnknown=0 RAW=1 QCOW=2 QCOW2=3 VHD=4 VMDK=5 OVA=6 VHDX=7 CONTAINER=8 ISO=9 PVC=10"
    ),
    "org.lfedge.eve.config.Target": "TgtUnknown=0 Disk=1 Kernel=2 Initrd=3 RamDisk=4 AppCustom=5",
    "org.lfedge.eve.config.DriveType": "Unclassified=0 CDROM=1 HDD=2 NET=3 HDD_EMPTY=4",
    "org.lfedge.eve.config.VolumeAccessProtocols": "VAP_NONE=0 VAP_9P=1",
    "org.lfedge.eve.config.VolumeContentOriginType": "VCOT_UNKNOWN=0 VCOT_BLANK=1 VCOT_DOWNLOAD=2",
    "org.lfedge.eve.info.ZInfoTypes": (
        "ZiNop=0 ZiDevice=1 ZiApp=3 ZiNetworkInstance=6 ZiVolume=7 ZiContentTree=8 ZiBlobList=9"
    ),
    "org.lfedge.eve.info.ZSwState": (
        "INVALID=0 INITIAL=1 DOWNLOAD_STARTED=2 DOWNLOADED=3 DELIVERED=4 INSTALLED=5 BOOTING=6 "
        "RUNNING=7 HALTING=8 HALTED=9 RESTARTING=10 PURGING=11 RESOLVING_TAG=12 RESOLVED_TAG=13 "
        "CREATING_VOLUME=14 CREATED_VOLUME=15 VERIFYING=16 VERIFIED=17 LOADING=18 LOADED=19 "
        "AWAITNETWORKINSTANCE=20 ERROR=21 START_DELAYED=22 PENDING=23 SCHEDULING=24"
    ),
    "org.lfedge.eve.info.Severity": (
        "SEVERITY_UNSPECIFIED=0 SEVERITY_NOTICE=1 SEVERITY_WARNING=2 SEVERITY_ERROR=3"
    ),
    "org.lfedge.eve.info.Entity": (
        "ENTITY_UNSPECIFIED=0 ENTITY_BASE_OS=1 ENTITY_SYSTEM_ADAPTER=2 ENTITY_VAULT=3 "
        "ENTITY_ATTESTATION=4 ENTITY_APP_INSTANCE=5 ENTITY_PORT=6 ENTITY_NETWORK=7 "
        "ENTITY_NETWORK_INSTANCE=8 ENTITY_CONTENT_TREE=9 ENTITY_CONTENT_BLOB=10 ENTITY_VOLUME=11"
    ),
    "org.lfedge.eve.common.proxyProto": "PROXY_HTTP=0 PROXY_HTTPS=1 PROXY_SOCKS=2 PROXY_FTP=3 PROXY_OTHER=255",
    "org.lfedge.eve.common.HashAlgorithm": (
        "HASH_ALGORITHM_INVALID=0 HASH_ALGORITHM_SHA256_16BYTES=1 HASH_ALGORITHM_SHA256_32BYTES=2"
    ),
    "org.lfedge.eve.certs.ZCertType": (
        "CERT_TYPE_CONTROLLER_NONE=0 CERT_TYPE_CONTROLLER_SIGNING=1 "
        "CERT_TYPE_CONTROLLER_INTERMEDIATE=2 CERT_TYPE_CONTROLLER_ECDH_EXCHANGE=3"
    ),
}

_SCALARS = {
    "string": _descriptor.FieldDescriptor.TYPE_STRING,
    "bytes": _descriptor.FieldDescriptor.TYPE_BYTES,
    "bool": _descriptor.FieldDescriptor.TYPE_BOOL,
    "int64": _descriptor.FieldDescriptor.TYPE_INT64,
    "uint64": _descriptor.FieldDescriptor.TYPE_UINT64,
    "uint32": _descriptor.FieldDescriptor.TYPE_UINT32,
}
_FIELD = re.compile(r"^(repeated )?([\w.]+) (\w+)=(\d+)$")


def _pool():
    import edgevol.api  # noqa: F401  (loads every generated module into the pool)
    from google.protobuf import descriptor_pool

    return descriptor_pool.Default()


@pytest.mark.parametrize("full_name", sorted(MESSAGES))
def test_message_fields_match_public_contract(full_name: str) -> None:
    desc = _pool().FindMessageTypeByName(full_name)
    package = full_name.rsplit(".", 1)[0]
    for spec in MESSAGES[full_name].split("; "):
        m = _FIELD.match(spec)
        assert m, spec
        repeated, type_name, name, number = m.group(1), m.group(2), m.group(3), int(m.group(4))
        field = desc.fields_by_name.get(name)
        assert field is not None, f"{full_name}.{name} missing"
        assert field.number == number, f"{full_name}.{name} is {field.number}, want {number}"
        assert field.is_repeated == bool(repeated), f"{full_name}.{name} label"
        if type_name in _SCALARS:
            assert field.type == _SCALARS[type_name], f"{full_name}.{name} type"
        else:
            want = type_name if "." in type_name else f"{package}.{type_name}"
            got = field.message_type or field.enum_type
            assert got is not None and got.full_name == want, f"{full_name}.{name} type"


@pytest.mark.parametrize("full_name", sorted(ENUMS))
def test_enum_values_match_public_contract(full_name: str) -> None:
    desc = _pool().FindEnumTypeByName(full_name)
    for item in ENUMS[full_name].split():
        name, number = item.split("=")
        assert name in desc.values_by_name, f"{full_name}.{name} missing"
        assert desc.values_by_name[name].number == int(number), f"{full_name}.{name}"


def test_zinfomsg_content_is_one_oneof() -> None:
    oneof = ZInfoMsg.DESCRIPTOR.oneofs_by_name["InfoContent"]
    assert {f.name for f in oneof.fields} == {"ainfo", "vinfo", "cinfo", "binfo"}


# --- unknown fields survive -------------------------------------------------


def realistic_config() -> EdgeDevConfig:
    cfg = EdgeDevConfig(id=UUIDandVersion(uuid="7b1e0c44-9b8f-4c59-9f3f-1b2d3c4d5e6f", version="12"))
    cfg.datastores.add(
        id="ds-http", dType=DsType.DsHttps, fqdn="https://images.example.com", dpath="eve/images"
    )
    cfg.datastores.add(
        id="ds-oci", dType=DsType.DsContainerRegistry, fqdn="docker://registry.example.com"
    )
    cfg.contentInfo.add(
        uuid="ct-1",
        dsId="ds-http",
        ds_ids_list=["ds-http"],
        URL="ubuntu-22.04.qcow2",
        iformat=Format.QCOW2,
        sha256="a" * 64,
        maxSizeBytes=2 << 30,
        displayName="ubuntu",
        generation_count=1,
    )
    cfg.contentInfo.add(
        uuid="ct-2", ds_ids_list=["ds-oci"], URL="library/nginx:1.25", iformat=Format.CONTAINER
    )
    cfg.volumes.add(
        uuid="vol-root",
        origin=VolumeContentOrigin(
            type=VolumeContentOriginType.VCOT_DOWNLOAD, downloadContentTreeID="ct-1"
        ),
        generationCount=2,
        maxsizebytes=8 << 30,
        displayName="root",
    )
    cfg.volumes.add(
        uuid="vol-data",
        origin=VolumeContentOrigin(type=VolumeContentOriginType.VCOT_BLANK),
        maxsizebytes=1 << 30,
    )
    app = cfg.apps.add(
        uuidandversion=UUIDandVersion(uuid="app-1", version="3"),
        displayname="web",
        activate=True,
        purge=InstanceOpsCmd(counter=1),
    )
    app.volumeRefList.add(uuid="vol-root", generationCount=2)
    app.volumeRefList.add(uuid="vol-data", mount_dir="/data")
    app.drives.add(
        image=Image(
            uuidandversion=UUIDandVersion(uuid="img-1"),
            name="legacy.img",
            sha256="b" * 64,
            iformat=Format.RAW,
            dsId="ds-http",
            sizeBytes=1 << 20,
        ),
        drvtype=DriveType.HDD,
        maxsizebytes=1 << 30,
        preserve=True,
    )
    cfg.configItems.add(key="timer.config.interval", value="60")
    return cfg


def test_fields_edgevol_does_not_model_survive_a_round_trip() -> None:
    base = realistic_config()
    volumes = list(base.volumes)
    apps = list(base.apps)
    del base.volumes[:]
    del base.apps[:]

    # Unknown inside a Volume (field 99 varint, field 50 bytes) and an app
    # carrying "fixedresources" (3) and "interfaces" (6) we do not describe.
    vol_unknown = vint(99, 7) + ld(50, b"\x00\x01opaque")
    app_unknown = ld(3, vint(1, 2048) + vint(2, 2)) + ld(6, ld(1, "eth0"))
    # EdgeDevConfig "reboot" (9) and "baseos" (26) submessages.
    cfg_unknown = ld(9, ld(1, "reboot-uuid") + vint(2, 4)) + ld(26, ld(1, ld(1, "baseos-uuid")))

    # Build the wire form the way a serializer would order it: known fields
    # in number order, unknown fields after the known ones of each message.
    head = base.SerializeToString()  # fields 1, 6, 11, 20
    apps_wire = b"".join(ld(4, a.SerializeToString() + app_unknown) for a in apps)
    vols_wire = b"".join(ld(21, v.SerializeToString() + vol_unknown) for v in volumes)
    # apps (4) must come before datastores (6): splice them in order.
    id_part = ld(1, base.id.SerializeToString())
    assert head.startswith(id_part)
    wire = id_part + apps_wire + head[len(id_part) :] + vols_wire + cfg_unknown

    cfg = EdgeDevConfig.FromString(wire)
    assert cfg.id.uuid == "7b1e0c44-9b8f-4c59-9f3f-1b2d3c4d5e6f"
    assert [d.id for d in cfg.datastores] == ["ds-http", "ds-oci"]
    assert cfg.contentInfo[0].sha256 == "a" * 64
    assert cfg.contentInfo[0].iformat == Format.QCOW2
    assert cfg.contentInfo[1].URL == "library/nginx:1.25"
    assert [v.uuid for v in cfg.volumes] == ["vol-root", "vol-data"]
    assert cfg.volumes[0].origin.downloadContentTreeID == "ct-1"
    assert cfg.volumes[0].generationCount == 2
    assert cfg.volumes[1].origin.type == VolumeContentOriginType.VCOT_BLANK
    assert [(r.uuid, r.generationCount, r.mount_dir) for r in cfg.apps[0].volumeRefList] == [
        ("vol-root", 2, ""),
        ("vol-data", 0, "/data"),
    ]
    assert cfg.apps[0].drives[0].image.sha256 == "b" * 64
    assert cfg.apps[0].drives[0].preserve is True
    assert cfg.configItems[0].value == "60"

    again = cfg.SerializeToString()
    assert again == wire
    assert cfg_unknown in again and vol_unknown in again and app_unknown in again

    # Editing a known field keeps the unknown ones.
    cfg.volumes[0].maxsizebytes = 16 << 30
    edited = EdgeDevConfig.FromString(cfg.SerializeToString())
    assert edited.volumes[0].maxsizebytes == 16 << 30
    assert vol_unknown in edited.volumes[0].SerializeToString()
    assert cfg_unknown in edited.SerializeToString()


def test_info_message_of_an_unknown_kind_passes_through() -> None:
    # dinfo (3) is a device report edgevol does not describe.
    wire = vint(1, 1) + ld(2, "dev") + ld(3, ld(1, "x"))
    msg = ZInfoMsg.FromString(wire)
    assert msg.ztype == ZInfoTypes.ZiDevice
    assert msg.WhichOneof("InfoContent") is None
    assert msg.SerializeToString() == wire


def test_error_info_round_trips_through_binary_and_json() -> None:
    info = ZInfoMsg(ztype=ZInfoTypes.ZiVolume, devId="d")
    info.vinfo.uuid = "v"
    info.vinfo.state = ZSwState.ERROR
    err = info.vinfo.volumeErr
    err.description = "download failed: 404"
    err.severity = Severity.SEVERITY_ERROR
    err.timestamp.FromSeconds(1_700_000_000)
    err.entities.add(entity=Entity.ENTITY_CONTENT_TREE, entity_id="ct-1")
    err.retry_condition = "retrying in 60s"

    assert ZInfoMsg.FromString(info.SerializeToString()) == info
    as_json = json_format.MessageToJson(info)
    assert '"ENTITY_CONTENT_TREE"' in as_json and '"volumeErr"' in as_json
    assert json_format.Parse(as_json, ZInfoMsg()) == info
    assert isinstance(info.vinfo.volumeErr, ErrorInfo)


# --- codec ------------------------------------------------------------------


def test_load_binary_config(tmp_path: Path) -> None:
    cfg = realistic_config()
    path = tmp_path / "config.pb"
    path.write_bytes(cfg.SerializeToString())
    assert load_edge_dev_config(path) == cfg


def test_json_dump_uses_proto_field_names_and_loads_back(tmp_path: Path) -> None:
    cfg = realistic_config()
    text = dump_edge_dev_config_json(cfg)
    assert '"generation_count": "1"' in text
    assert '"ds_ids_list"' in text and '"dsIdsList"' not in text
    assert '"volumeRefList"' in text and '"iformat": "QCOW2"' in text
    path = tmp_path / "config.json"
    path.write_text(text)
    assert load_edge_dev_config(path) == cfg


def test_load_json_accepts_camel_case_and_proto_names(tmp_path: Path) -> None:
    camel = """{
      "id": {"uuid": "dev"},
      "datastores": [{"id": "ds", "dType": "DsHttp", "fqdn": "http://127.0.0.1:8080"}],
      "contentInfo": [{"uuid": "ct", "dsIdsList": ["ds"], "URL": "a.raw", "iformat": "RAW",
                       "generationCount": "2", "customMetaData": "m"}],
      "volumes": [{"uuid": "v", "origin": {"type": "VCOT_DOWNLOAD", "downloadContentTreeID": "ct"},
                   "generationCount": 3, "clearText": true}],
      "apps": [{"volumeRefList": [{"uuid": "v", "mountDir": "/m"}]}],
      "configItems": [{"key": "k", "value": "v"}]
    }"""
    proto_names = camel.replace("dsIdsList", "ds_ids_list").replace(
        '"generationCount": "2"', '"generation_count": "2"'
    )
    proto_names = proto_names.replace("customMetaData", "custom_meta_data")
    proto_names = proto_names.replace("clearText", "clear_text").replace("mountDir", "mount_dir")
    assert proto_names != camel

    for name, text in (("camel.json", camel), ("proto.json", proto_names)):
        path = tmp_path / name
        path.write_text(text)
        cfg = load_edge_dev_config(path)
        ct = cfg.contentInfo[0]
        assert list(ct.ds_ids_list) == ["ds"]
        assert ct.generation_count == 2
        assert ct.custom_meta_data == "m"
        assert ct.iformat == Format.RAW
        assert cfg.datastores[0].dType == DsType.DsHttp
        assert cfg.volumes[0].generationCount == 3
        assert cfg.volumes[0].clear_text is True
        assert cfg.apps[0].volumeRefList[0].mount_dir == "/m"


def test_unknown_json_field_is_an_error_naming_field_and_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    path.write_text('{"volumes": [{"uuid": "v", "generationCout": 1}]}')
    with pytest.raises(ConfigDecodeError) as exc_info:
        load_edge_dev_config(path)
    message = str(exc_info.value)
    assert str(path) in message
    assert "generationCout" in message

    cfg = load_edge_dev_config(path, ignore_unknown_json_fields=True)
    assert cfg.volumes[0].uuid == "v"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("truncated.pb", realistic_config().SerializeToString()[:-3]),
        ("garbage.pb", b"\x0a\xff\xff\xff\xff\x0f"),
        ("truncated.json", b'{"volumes": [{"uuid": "v"'),
        ("wrongtype.json", b'{"volumes": {"uuid": "v"}}'),
        ("badenum.json", b'{"contentInfo": [{"iformat": "QCOW9"}]}'),
        ("latin1.json", b'{"id": {"uuid": "\xe9"}}'),
        ("empty.pb", b""),
        ("garbage.cfg", b"\xff\xff\xff\xff"),
        ("broken.cfg", b'  {"volumes": ['),
    ],
)
def test_malformed_file_raises_config_decode_error(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConfigDecodeError) as exc_info:
        load_edge_dev_config(path)
    assert isinstance(exc_info.value, ValueError)
    assert str(path) in str(exc_info.value)


def test_missing_file_raises_config_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pb"
    with pytest.raises(ConfigDecodeError, match="nope.pb"):
        load_edge_dev_config(path)


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    cfg = realistic_config()
    binary = tmp_path / "config.checkpoint"
    binary.write_bytes(cfg.SerializeToString())
    text = tmp_path / "config.txt"
    text.write_text("\n  " + dump_edge_dev_config_json(cfg))
    assert load_edge_dev_config(binary) == cfg
    assert load_edge_dev_config(text) == cfg
    assert decode_edge_dev_config(cfg.SerializeToString()) == cfg


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = realistic_config().SerializeToString()
    monkeypatch.setattr(codec, "MAX_CONFIG_BYTES", len(data) - 1)
    path = tmp_path / "big.pb"
    path.write_bytes(data)
    with pytest.raises(ConfigDecodeError, match="larger than"):
        load_edge_dev_config(path)


def test_save_writes_atomically_in_the_suffix_format(tmp_path: Path) -> None:
    cfg = realistic_config()
    pb = tmp_path / "out" / "config.pb"
    js = tmp_path / "out" / "config.json"
    save_edge_dev_config(pb, cfg)
    save_edge_dev_config(js, cfg)
    assert EdgeDevConfig.FromString(pb.read_bytes()) == cfg
    assert js.read_text() == dump_edge_dev_config_json(cfg)
    assert load_edge_dev_config(js) == cfg
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "config.pb"]


def test_unknown_fields_survive_binary_save_and_load(tmp_path: Path) -> None:
    wire = realistic_config().SerializeToString() + ld(26, ld(1, ld(1, "baseos-uuid")))  # baseos: unknown
    cfg = decode_edge_dev_config(wire, "binary")
    path = tmp_path / "config.pb"
    save_edge_dev_config(path, cfg)
    assert path.read_bytes() == wire
    assert load_edge_dev_config(path).SerializeToString() == wire


def test_messages_module_exports_enums_with_eve_values() -> None:
    assert ZSwState.Name(ZSwState.LOADED) == "LOADED"
    assert VolumeContentOriginType.VCOT_BLANK == 1
    assert ZCertType.CERT_TYPE_CONTROLLER_SIGNING == 1
    assert isinstance(ZCert(), ZCert) and isinstance(Drive(), Drive)
    assert isinstance(ZInfoVolume(), ZInfoVolume) and isinstance(ZInfoContentTree(), ZInfoContentTree)
    assert isinstance(ZInfoBlob(), ZInfoBlob) and isinstance(ZInfoBlobList(), ZInfoBlobList)
    assert isinstance(ZMetricVolume(), ZMetricVolume) and isinstance(ConfigItem(), ConfigItem)
    assert isinstance(VolumeRef(), VolumeRef) and isinstance(AppInstanceConfig(), AppInstanceConfig)
