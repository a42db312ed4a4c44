"""One import point for the EVE API message and enum classes edgevol uses.

Why: the generated modules are split the way the .proto files are (one per
area), which is an implementation detail. The rest of edgevol imports from
here, so moving a message between .proto files never touches callers.

Enums are the generated ``EnumTypeWrapper`` objects: ``ZSwState.LOADED`` is the
number, ``ZSwState.Name(19)`` the name.
"""

from __future__ import annotations

from edgevol.api.eve.attest.attest_pb2 import (
    AttestStorageKeys,
    AttestStorageKeysResp,
    AttestStorageKeysResponseCode,
    ZAttestNonceResp,
    ZAttestQuote,
    ZAttestQuoteResp,
    ZAttestReq,
    ZAttestReqType,
    ZAttestResponse,
    ZAttestResponseCode,
    ZAttestRespType,
)
from edgevol.api.eve.auth.auth_pb2 import AuthBody, AuthContainer
from edgevol.api.eve.certs.certs_pb2 import (
    ZCert,
    ZCertAttr,
    ZCertType,
    ZControllerCert,
)
from edgevol.api.eve.common.acipherinfo_pb2 import (
    CipherBlock,
    CipherContext,
    EncryptionBlock,
    EncryptionScheme,
    KeyExchangeScheme,
)
from edgevol.api.eve.common.evecommon_pb2 import HashAlgorithm
from edgevol.api.eve.common.netcmn_pb2 import ProxyConfig, ProxyServer, proxyProto
from edgevol.api.eve.config.appconfig_pb2 import (
    AppInstanceConfig,
    InstanceOpsCmd,
    VolumeRef,
)
from edgevol.api.eve.config.datastore_pb2 import DatastoreConfig, DsType
from edgevol.api.eve.config.devcommon_pb2 import ConfigItem, UUIDandVersion
from edgevol.api.eve.config.devconfig_pb2 import (
    ConfigRequest,
    ConfigResponse,
    EdgeDevConfig,
)
from edgevol.api.eve.config.netconfig_pb2 import NetworkConfig
from edgevol.api.eve.config.storage_pb2 import (
    ContentTree,
    Drive,
    DriveType,
    Format,
    Image,
    SignatureInfo,
    Target,
    Volume,
    VolumeAccessProtocols,
    VolumeContentOrigin,
    VolumeContentOriginType,
)
from edgevol.api.eve.info.info_pb2 import (
    ContentResources,
    DeviceEntity,
    Entity,
    ErrorInfo,
    Severity,
    UsageInfo,
    VolumeResources,
    ZInfoApp,
    ZInfoBlob,
    ZInfoBlobList,
    ZInfoContentTree,
    ZInfoMsg,
    ZInfoTypes,
    ZInfoVolume,
    ZSwState,
)
from edgevol.api.eve.metrics.metrics_pb2 import ZMetricMsg, ZMetricVolume
from edgevol.api.eve.register.register_pb2 import ZRegisterMsg
from edgevol.api.eve.uuid.eveuuid_pb2 import UuidRequest, UuidResponse

__all__ = [
    # config
    "AppInstanceConfig",
    "ConfigItem",
    "ConfigRequest",
    "ConfigResponse",
    "ContentTree",
    "DatastoreConfig",
    "Drive",
    "DriveType",
    "DsType",
    "EdgeDevConfig",
    "Format",
    "Image",
    "InstanceOpsCmd",
    "NetworkConfig",
    "ProxyConfig",
    "ProxyServer",
    "SignatureInfo",
    "Target",
    "UUIDandVersion",
    "Volume",
    "VolumeAccessProtocols",
    "VolumeContentOrigin",
    "VolumeContentOriginType",
    "VolumeRef",
    "proxyProto",
    # info
    "ContentResources",
    "DeviceEntity",
    "Entity",
    "ErrorInfo",
    "Severity",
    "UsageInfo",
    "VolumeResources",
    "ZInfoApp",
    "ZInfoBlob",
    "ZInfoBlobList",
    "ZInfoContentTree",
    "ZInfoMsg",
    "ZInfoTypes",
    "ZInfoVolume",
    "ZSwState",
    # metrics
    "ZMetricMsg",
    "ZMetricVolume",
    # onboarding: register, uuid, attest
    "AttestStorageKeys",
    "AttestStorageKeysResp",
    "AttestStorageKeysResponseCode",
    "UuidRequest",
    "UuidResponse",
    "ZAttestNonceResp",
    "ZAttestQuote",
    "ZAttestQuoteResp",
    "ZAttestReq",
    "ZAttestReqType",
    "ZAttestRespType",
    "ZAttestResponse",
    "ZAttestResponseCode",
    # auth, certs, register, common
    "AuthBody",
    "AuthContainer",
    "CipherBlock",
    "CipherContext",
    "EncryptionBlock",
    "EncryptionScheme",
    "HashAlgorithm",
    "KeyExchangeScheme",
    "ZCert",
    "ZCertAttr",
    "ZCertType",
    "ZControllerCert",
    "ZRegisterMsg",
]
