"""The processes the publish fault tests start, break and stop: a real Celery worker, a private
Redis and a private SeaweedFS, all on loopback only.

Each class stops exactly the processes it started (by their process group, which is theirs
alone: every one is started in a session of its own), and `close()` is safe to call twice, so
the tests can call it from `finally` whatever state a failure left things in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).parent / "celery"
LOOPBACK = "127.0.0.1"
STOP_SECONDS = 15

T = TypeVar("T")


def _load_stack_script() -> ModuleType:
    # scripts/ is not a package; the SeaweedFS command line is the one `make test` uses, so it is
    # taken from there rather than copied.
    spec = importlib.util.spec_from_file_location("portal_stack_script", ROOT / "scripts/stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


stack_script = _load_stack_script()


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    details: Callable[[], str] = lambda: "",
) -> T:
    """Poll `condition` until it returns something true; fail, saying `what`, at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}\n{details()}")
        time.sleep(interval)


def loopback_port() -> int:
    """A free loopback port below Linux's ephemeral range, so that no outgoing connection (a
    client retrying while the service is down) can take it before the service is restarted."""
    for _ in range(200):
        port = 11000 + secrets.randbelow(11000)
        if stack_script.port_is_free(port):
            return port
    raise RuntimeError("no free loopback port")


def tail(path: Path, lines: int = 60) -> str:
    return str(stack_script.tail(path, lines))


class _ProcessGroup:
    """A process started in a session of its own; signals go to its whole group."""

    def __init__(self, command: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self, *, grace: float = STOP_SECONDS) -> None:
        """SIGTERM, then SIGKILL to the whole group after `grace` seconds. Signals go out only
        while the leader is unreaped, so its group id cannot belong to anyone else yet."""
        if not self.running:
            return
        self.signal(signal.SIGCONT)  # a frozen process would never see the SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


class Worker(_ProcessGroup):
    """`celery -A portal worker` (prefork, one pool process, as production runs it)."""

    def __init__(self, env: dict[str, str], *, log: Path, name: str) -> None:
        command = [str(CELERY), "-A", "portal", "worker", "--loglevel", "info"]
        command += ["--concurrency", "1", "--hostname", f"{name}@%h"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        super().__init__(command, log=log, env=env)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, the whole worker at once: nothing of it gets to clean up."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_SECONDS)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- worker log (last lines) ---\n{tail(self.log)}"


class PrivateRedis:
    """A redis-server of our own that keeps nothing on disk: a restart loses every queue."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = loopback_port()
        self.server: _ProcessGroup | None = None

    def url(self, db: int) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", LOOPBACK]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        command += ["--dir", str(self.folder)]
        self.server = _ProcessGroup(command, log=self.folder / "redis.log")
        wait_for(
            lambda: stack_script.redis_answers(LOOPBACK, self.port),
            timeout=15,
            what=f"the private Redis on port {self.port}",
            details=lambda: tail(self.folder / "redis.log"),
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=5)
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    close = stop


class PrivateSeaweedFS(stack_script.Stack):  # type: ignore[misc]
    """A SeaweedFS S3 store of our own, started exactly as scripts/stack.py starts the stack's,
    that can be stopped and started again on the same ports and data folder."""

    def __init__(self, temp: Path) -> None:
        temp.mkdir(parents=True, exist_ok=True)
        super().__init__(temp=temp)
        self.command: tuple[list[str], Path] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        self.command = (list(command), log)
        self.server = super().spawn(command, log)
        return self.server

    def start_store(self) -> dict[str, str]:
        """Start it with a fresh bucket; returns the S3_* variables that point at it."""
        self.env = self.start_seaweedfs()
        return self.env

    def stop_store(self) -> None:
        assert self.server is not None
        stack_script.stop_group(self.server.pid, self.server)

    def restart_store(self, *, timeout: float = 60) -> None:
        """Start the same command again: same ports, same data, same credentials."""
        assert self.command is not None
        command, log = self.command
        server = self.spawn(command, log)
        client = self.client()

        def answers() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"SeaweedFS did not come back:\n{tail(log)}")
            try:
                client.head_bucket(Bucket=self.env["S3_BUCKET"])
            except Exception:  # not yet
                return False
            return True

        wait_for(answers, timeout=timeout, what="SeaweedFS to answer again", interval=0.2)

    def client(self) -> Any:
        return s3_client(self.env)

    def close(self) -> None:
        self.stop()  # every process spawned here, its sockets in /tmp, and the folder


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 client for the S3 store that the S3_* variables in `env` describe; it fails fast,
    so a test sees a store that is down at once rather than after botocore's retries."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name=env.get("S3_REGION", "us-east-1"),
        aws_access_key_id=env["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"],
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": env.get("S3_ADDRESSING_STYLE", "path")},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def bucket_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(entry["Key"] for entry in page.get("Contents", []))
    return keys


def empty_and_remove_bucket(client: Any, bucket: str) -> None:
    for key in bucket_keys(client, bucket, ""):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)
