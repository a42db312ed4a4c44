"""Benchmark 6: download + verify a blob from an S3 server, against boto3's transfer manager and `aws s3 cp`.

The server is the one the S3 datastore tests use (SeaweedFS's S3 gateway on
loopback, a child of this process); edgevol and every baseline fetch the same
object from it. edgevol verifies sha256 and fsyncs before it commits, so the
baselines get a like-for-like variant that hashes and syncs too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from bench.cases import Env, display_cmd, edgevol_cmd, log_span, net_row, spans_row
from bench.datagen import random_blob
from bench.harness import Runs, run_timed
from bench.report import Table, fmt_bytes, fmt_mb, fmt_ratio, runs_cells
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.s3_fixture import ACCESS_KEY, REGION, SECRET_KEY, start_s3

__all__ = ["download_s3"]

BUCKET, KEY = "bench", "images/blob.raw"
STREAMS = (2, 4)  # edgevol.download.parallel: 2 is the default

# boto3's managed download (multipart ranged GETs, 10 threads by default) of the same object.
_BOTO3 = ("import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')"
          ".download_file(sys.argv[2], sys.argv[3], sys.argv[4])")


def _baselines(endpoint: str, out_file: Path) -> list[tuple[str, str, str]]:
    """(log name, shell command, label) of each baseline available on this machine."""
    f = shlex.quote(str(out_file))
    boto3 = f"{shlex.quote(sys.executable)} -c {shlex.quote(_BOTO3)} {endpoint} {BUCKET} {KEY} {f}"
    verify = f" && openssl dgst -sha256 {f} && sync {f}"  # the SHA-NI accelerated hasher: the fair comparison
    found = [("boto3", boto3, "boto3 download_file"),
             ("boto3-verify", boto3 + verify, "boto3 download_file && openssl dgst -sha256 FILE && sync FILE")]
    aws = shutil.which("aws")
    if aws:
        cp = f"{shlex.quote(aws)} s3 cp --only-show-errors --endpoint-url {endpoint} s3://{BUCKET}/{KEY} {f}"
        found += [("aws", cp, "aws s3 cp"),
                  ("aws-verify", cp + verify, "aws s3 cp && openssl dgst -sha256 FILE && sync FILE")]
    return found


def download_s3(env: Env) -> Table:
    server = start_s3(env.out / "seaweedfs", volume_size_mb=1024, max_volumes=16 + env.size // (1 << 30))
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    try:
        blob = env.out / "s3-blob.raw"
        digest = random_blob(blob, env.size)
        server.put(BUCKET, KEY, blob)
        blob.unlink()
        configs = {}
        for streams in STREAMS:
            b = ConfigBuilder().item("edgevol.download.parallel", str(streams))
            ds = b.cfg.datastores.add(id=new_id(), dType=3, fqdn=server.endpoint, dpath=f"{BUCKET}/images",
                                      apiKey=ACCESS_KEY, password=SECRET_KEY, region=REGION)
            b.content_tree(str(ds.id), "blob.raw", digest, "raw", name="blob")
            configs[streams] = b.save(env.out / f"s3-{streams}.pb")
        out_file = env.out / "work" / "s3.out"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        baselines = _baselines(server.endpoint, out_file)
        ev = {s: Runs() for s in STREAMS}
        spans: dict[int, list[float]] = {s: [] for s in STREAMS}
        refs: list[float] = []
        measured = {name: Runs() for name, _, _ in baselines}
        for i in range(env.reps):
            refs.append(env.run_empty(f"s3-{i}"))
            for streams in STREAMS:
                data = env.scratch("s3")
                log = env.log(f"s3-edgevol-{streams}-{i}")
                ev[streams].add(run_timed(edgevol_cmd(data, configs[streams]), log))
                if sha256_file(data / "cas" / "blobs" / "sha256" / digest) != digest:
                    raise RuntimeError("edgevol's blob does not match the source")
                span = log_span(log, "download started", "blob loaded")
                if span is not None:
                    spans[streams].append(span)
                shutil.rmtree(data)
            for name, command, _ in baselines:
                out_file.unlink(missing_ok=True)
                log = env.log(f"s3-{name}-{i}")
                measured[name].add(run_timed([command], log, shell=True))
                if name.endswith("verify") and digest not in log.read_text():
                    raise RuntimeError(f"{name} produced a different sha256 (log {log})")
            out_file.unlink(missing_ok=True)
    finally:
        server.stop()

    size = env.size
    t = Table(f"6. Download + verify a {fmt_bytes(size)} random blob from S3 (SeaweedFS on loopback)",
              "A config holding one RAW content tree on a DsS3 datastore and no volume; timed until `device run "
              "--once` exits (blob downloaded with ranged GETs, sha256-verified, fsynced, committed). "
              "`edgevol.download.parallel` sets how many ranged GETs of one object run at once. The baselines "
              "fetch the same object from the same server; `boto3 download_file` is boto3's transfer manager "
              "(10 threads by default). Ratios: edgevol ÷ baseline, *net* of edgevol's start-up.")
    nets = {}
    for streams in STREAMS:
        runs = ev[streams]
        t.rows.append(runs_cells(display_cmd("D", f"s3-{streams}.pb") + f"  (parallel {streams})", runs, size))
        row, nets[streams] = net_row(f"edgevol parallel {streams}, net of start-up", runs.seconds, refs, size)
        t.rows.append(row)
        if spans[streams]:
            t.rows.append(spans_row(f"edgevol parallel {streams}, agent log: `download started` → `blob loaded`",
                                    spans[streams], size))
    best = min(nets, key=lambda s: nets[s])
    for name, _, label in baselines:
        runs = measured[name]
        t.rows.append(runs_cells(label, runs, size, ratio=f"{fmt_ratio(nets[best], runs.median)} net "
                                 f"(parallel {best})"))
    peak = max(r.peak_rss for r in ev.values())
    t.notes.append(f"Peak RSS of edgevol while downloading: {fmt_mb(peak)} MB (ranged reads hold at most "
                   "parallel + 1 parts of 8 MiB in memory; importing boto3 accounts for most of the rest).")
    t.notes.append("`boto3 download_file` and `aws s3 cp` neither verify nor fsync what they write; edgevol does both "
                   "before it commits. The `openssl dgst -sha256 FILE && sync FILE` rows add that work (hashing "
                   "after the download rather than while it streams, as a shell user would).")
    if not shutil.which("aws"):
        t.notes.append("`aws` (the AWS CLI) is not installed on this machine, so it has no row.")
    like = measured["boto3-verify"].median
    env.summary.append(f"S3 download + verify of {fmt_bytes(size)}: edgevol (parallel {best}) "
                       f"{size / nets[best] / 1e6:.0f} MB/s net, {fmt_ratio(nets[best], like)} of boto3 "
                       f"download_file + openssl dgst + sync, {fmt_ratio(nets[best], measured['boto3'].median)} of "
                       f"download_file alone (goal ≤ 1.0×).")
    return t
