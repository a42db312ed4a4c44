"""Build EdgeDevConfig messages for tests, the way a controller would."""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from pathlib import Path

from edgevol.api import messages as m
from edgevol.api.codec import save_edge_dev_config

# edgevol's format names (edgevol.model.desired.ImageFormat values) -> the wire's Format numbers
FMT = {"raw": m.Format.RAW, "qcow": m.Format.QCOW, "qcow2": m.Format.QCOW2, "vhd": m.Format.VHD,
       "vmdk": m.Format.VMDK, "ova": m.Format.OVA, "vhdx": m.Format.VHDX, "container": m.Format.CONTAINER,
       "iso": m.Format.ISO}


def new_id() -> str:
    return str(uuidlib.uuid4())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


DRIVE_TYPES = {"unclassified": m.DriveType.Unclassified, "cdrom": m.DriveType.CDROM, "hdd": m.DriveType.HDD,
               "net": m.DriveType.NET, "hdd_empty": m.DriveType.HDD_EMPTY}


def drive(ds_id: str = "", url: str = "", sha256: str = "", fmt: str = "qcow2", *, drvtype: str = "hdd",
          max_size: int = 0, size_bytes: int = 0, readonly: bool = False, preserve: bool = False,
          image_id: str | None = None) -> m.Drive:
    """A legacy Drive; it carries an Image when ``url`` or ``image_id`` is given (new image id if only url)."""
    d = m.Drive(drvtype=DRIVE_TYPES[drvtype], maxsizebytes=max_size, readonly=readonly, preserve=preserve)
    if url or image_id:
        d.image.uuidandversion.uuid = image_id or new_id()
        d.image.uuidandversion.version = "1"
        d.image.name = url
        d.image.sha256 = sha256
        d.image.iformat = FMT[fmt]
        d.image.dsId = ds_id
        d.image.sizeBytes = size_bytes
    return d


class ConfigBuilder:
    def __init__(self, device_id: str | None = None) -> None:
        self.cfg = m.EdgeDevConfig()
        self.cfg.id.uuid = device_id or new_id()
        self.cfg.id.version = "1"

    def item(self, key: str, value: str) -> ConfigBuilder:
        self.cfg.configItems.add(key=key, value=value)
        return self

    def fast_retries(self, attempts: int = 3) -> ConfigBuilder:
        return (self.item("edgevol.download.max.attempts", str(attempts))
                .item("edgevol.download.retry.base.seconds", "0.05")
                .item("edgevol.download.retry.cap.seconds", "0.2"))

    def datastore(self, url: str, dpath: str = "", ds_id: str | None = None, **extra: object) -> str:
        ds_id = ds_id or new_id()
        ds = self.cfg.datastores.add(id=ds_id, dType=m.DsType.DsHttps if url.startswith("https") else m.DsType.DsHttp,
                                     fqdn=url, dpath=dpath)
        for k, v in extra.items():
            if k == "dsCertPEM":
                ds.dsCertPEM.append(v)  # type: ignore[arg-type]
            else:
                setattr(ds, k, v)
        return ds_id

    def registry(self, host: str, dpath: str = "", ds_id: str | None = None, **extra: object) -> str:
        """A DsContainerRegistry datastore; ``host`` is HOST:PORT or a docker:// address."""
        fqdn = host if "://" in host else f"docker://{host}"
        ds_id = ds_id or new_id()
        ds = self.cfg.datastores.add(id=ds_id, dType=m.DsType.DsContainerRegistry, fqdn=fqdn, dpath=dpath)
        for k, v in extra.items():
            if k == "dsCertPEM":
                ds.dsCertPEM.append(v)  # type: ignore[arg-type]
            else:
                setattr(ds, k, v)
        return ds_id

    def content_tree(self, ds_id: str, url: str, sha256: str, fmt: str = "qcow2", max_size: int = 0,
                     name: str = "", ct_id: str | None = None) -> str:
        ct_id = ct_id or new_id()
        self.cfg.contentInfo.add(uuid=ct_id, dsId=ds_id, URL=url, iformat=FMT[fmt], sha256=sha256,
                                 maxSizeBytes=max_size, displayName=name or url)
        return ct_id

    def blank_volume(self, size: int, name: str = "blank", vol_id: str | None = None, generation: int = 0,
                     readonly: bool = False) -> str:
        vol_id = vol_id or new_id()
        v = self.cfg.volumes.add(uuid=vol_id, generationCount=generation, maxsizebytes=size, displayName=name,
                                 readonly=readonly)
        v.origin.type = m.VolumeContentOriginType.VCOT_BLANK
        return vol_id

    def download_volume(self, ct_id: str, size: int, name: str = "disk", vol_id: str | None = None,
                        generation: int = 0, readonly: bool = False) -> str:
        vol_id = vol_id or new_id()
        v = self.cfg.volumes.add(uuid=vol_id, generationCount=generation, maxsizebytes=size, displayName=name,
                                 readonly=readonly)
        v.origin.type = m.VolumeContentOriginType.VCOT_DOWNLOAD
        v.origin.downloadContentTreeID = ct_id
        return vol_id

    def app(self, volume_ids: list[str], name: str = "app", app_id: str | None = None, activate: bool = False) -> str:
        app_id = app_id or new_id()
        a = self.cfg.apps.add(displayname=name, activate=activate)
        a.uuidandversion.uuid = app_id
        a.uuidandversion.version = "1"
        for vid in volume_ids:
            a.volumeRefList.add(uuid=vid)
        return app_id

    def app_with_drives(self, drives: list[m.Drive], name: str = "app", app_id: str | None = None,
                        volume_ids: list[str] | None = None) -> str:
        """An app the legacy way (``drives``); with ``volume_ids`` too, as a phase-1 controller sends it."""
        app_id = self.app(volume_ids or [], name=name, app_id=app_id)
        a = self.cfg.apps[-1]
        for d in drives:
            a.drives.add().CopyFrom(d)
        return app_id

    def network_proxy(self, http: str = "", https: str = "", exceptions: str = "", certs: tuple[bytes, ...] = (),
                      net_id: str | None = None) -> str:
        """A network whose ``entProxy`` has these proxies (``host:port``), as an EVE controller sends them."""
        net = self.cfg.networks.add(id=net_id or new_id())
        for proto, address in ((m.proxyProto.PROXY_HTTP, http), (m.proxyProto.PROXY_HTTPS, https)):
            if address:
                server, _, port = address.rpartition(":")
                net.entProxy.proxies.add(proto=proto, server=server, port=int(port))
        net.entProxy.exceptions = exceptions
        net.entProxy.proxyCertPEM.extend(certs)
        return str(net.id)

    def save(self, path: Path) -> Path:
        save_edge_dev_config(path, self.cfg)
        return path
