"""Datastore fallback: a content tree's ``ds_ids_list`` is tried in order, and a blob two content trees
share can come from either's datastore (EVE's downloader walks the list within one attempt and keeps every
error: pkg/pillar/cmd/downloader/downloader.go:512-540; ds_ids_list wins over dsId:
pkg/pillar/cmd/zedagent/handlecontent.go:39-48). Two real HTTP servers, one of which lacks the file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import serve
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, make_raw_image

MiB = 1 << 20


def run_once(data: Path, b: ConfigBuilder, cfg: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=120)


def test_ds_ids_list_falls_back_and_a_shared_blob_comes_from_either_datastore(tmp_path, datastore_dir,
                                                                              http_server) -> None:
    empty = tmp_path / "empty-datastore"
    empty.mkdir()
    dead = serve(empty)  # answers 404 for everything
    try:
        image = make_raw_image(datastore_dir / "os.raw", 2, seed=95)
        shared = make_raw_image(datastore_dir / "shared.raw", 2, seed=96)
        b = ConfigBuilder()
        bad, good = b.datastore(dead.url), b.datastore(http_server.url)
        # ds_ids_list [bad, good]; dsId names the bad one too, and must not win over the list
        ct = b.content_tree(bad, "os.raw", sha256_file(image), "raw", name="listed")
        entry = b.cfg.contentInfo[-1]
        entry.ds_ids_list.extend([bad, good])
        b.download_volume(ct, 4 * MiB, name="vol-listed")
        # two content trees with the same bytes: the first on the dead datastore, the second on the good one
        first = b.content_tree(bad, "shared.raw", sha256_file(shared), "raw", name="first")
        second = b.content_tree(good, "shared.raw", sha256_file(shared), "raw", name="second")
        b.download_volume(first, 4 * MiB, name="vol-first")
        b.download_volume(second, 4 * MiB, name="vol-second")
        state = parse_config(b.cfg)
        assert (state.content_trees[ct].datastore_id, state.content_trees[ct].fallback_datastore_ids) == (bad, (good,))
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        proc = run_once(data, b, cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "trying the next one" in proc.stderr  # the dead datastore was tried, and failed over
        st = device_status(data)
        for name, src in (("vol-listed", image), ("vol-first", shared), ("vol-second", shared)):
            vol = by_name(st["volumes"], name)
            assert vol["state"] == "CREATED_VOLUME", vol
            with open(vol["path"], "rb") as f:
                assert f.read(2 * MiB) == src.read_bytes()

        # when every datastore fails, the error names each one
        (datastore_dir / "os.raw").rename(datastore_dir / "os.raw.gone")
        other = make_raw_image(tmp_path / "other.raw", 2, seed=97)
        ct2 = b.content_tree(bad, "other.raw", sha256_file(other), "raw", name="nowhere")
        b.cfg.contentInfo[-1].ds_ids_list.extend([bad, good])
        b.download_volume(ct2, 4 * MiB, name="vol-nowhere")
        assert run_once(data, b, cfg).returncode == 1
        err = by_name(device_status(data)["content_trees"], "nowhere")["error"]["description"]
        assert "every datastore failed" in err and bad in err and good in err, err
    finally:
        dead.shutdown()
