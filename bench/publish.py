"""Publish benchmark: instances per second from the ingest spool into the encrypted store.

One command (PostgreSQL and Redis are used or started, SeaweedFS started fresh, by the stack
script):

    .venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.publish

What happens, in order (bench/README.md explains how to read the result):

1. A synthetic CT study (the project's generator, `studies.synthetic`; no PHI) of 300
   instances of 512x512 is written to a temporary folder, with a 5-instance warm-up study of
   another synthetic patient beside it.
2. A template database is created beside the one DATABASE_URL names (`<name>_publish_template`)
   and migrated, with one facility in it.
3. Each round gets a new copy of it (`<name>_publish`), a new spool folder and a node name of
   its own (so its publish queue and its "task pending" marker are its own too). Both studies
   are ingested through `study_ingest_instance` in a child process, the way every way in ends,
   with no Celery worker running: the time of the timed study is the round's ingest rate.
   Ingest queues the publish task itself (the `instance_received` receiver), as in production.
4. Then ONE `celery -A portal worker` is started and the database is polled until every
   instance is `published`. The publish rate is the instances divided by the time from the
   first claim to the last object recorded (the database's own timestamps), i.e. without the
   worker's start-up; the time from starting the worker until the poll saw the last one is
   reported as well, with the CPU time the worker's processes used and how busy the machine's
   CPUs were meanwhile. Once the studies are settled the worker gets a warm shutdown, and
   everything is checked (every instance published, every object stored, the spool empty,
   the studies available, the bucket holding exactly those objects).
5. Configurations, interleaved round by round: the worker as `celery -A portal worker` starts
   by default (prefork, one pool process per core), with `--concurrency 1`, and as an
   experiment the default worker with a second publish task queued before it starts.
6. One more round publishes in-process with timers around each step of `publish_spooled`
   (claim, data key, encrypt, PUT, read-back, decrypt, SQL, ...), to say where the time goes.

The medians of the rounds are printed as a table. Everything is stopped and removed at the end
(the worker's process group, both databases, the round's Redis keys, the uploaded objects), also
on Ctrl-C or an error. Peak memory of encryption is bench/crypto.py's part (make bench-crypto).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib.metadata
import io
import json
import os
import platform
import pstats
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench.ingest import (
    PORTAL_VARIABLE_PREFIXES,
    BenchError,
    cpu_busy_fraction,
    generate_studies,
    say,
    stop_group,
    tail,
    with_path,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CELERY = str(Path(sys.executable).parent / "celery")
MB = 1_000_000
FACILITY_NAME = "Publish benchmark (synthetic)"
CALLING_AET = "BENCHSCU"
POLL_SECONDS = 0.1
PUBLISH_TIMEOUT_SECONDS = 1800
STOP_SECONDS = 30
SETTLE_SECONDS = 30  # after the last instance is published, for its study to be available
BUSY_WARNING = 0.15
# Reference: bench/README.md, `make bench-ingest` on the same VM (portal, instances/s).
INGEST_REFERENCE = "DIMSE 123.8, STOW-RS 84.2 (1/request) to 136.1 (10/request)"
SETUP_CODE = f"""
from facilities.models import Facility

Facility.objects.create(
    name={FACILITY_NAME!r},
    kind=Facility.Kind.ORIGINATING,
    default_issuer_of_patient_id="BENCH",
)
"""


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    worker_arguments: tuple[str, ...] = ()
    extra_tasks: int = 0  # publish tasks queued before the worker starts, beyond ingest's own


CONFIGS = {
    "default": Config(
        "default", "publish, `celery worker` as started (prefork, {cores} processes)"
    ),
    "c1": Config("c1", "publish, `celery worker --concurrency 1`", ("--concurrency", "1")),
    "two-tasks": Config(
        "two-tasks", "publish, as started, a 2nd task queued first [experiment]", extra_tasks=1
    ),
}


@dataclass
class Together:
    run: int
    ingest_rate: float  # the timed study, with the worker publishing at the same time
    behind_at_end: int  # instances not yet published when ingest committed its last one
    drain_seconds: float  # from ingest's last commit to the last object recorded


@dataclass
class Round:
    config: str
    run: int
    instances: int  # published in the round: the timed study and the warm-up study
    ingest_instances: int
    ingest_seconds: float
    publish_seconds: float  # first claim to last object recorded
    wall_seconds: float  # worker started to the poll seeing the last one published
    tasks: int  # publish task executions (claim tokens)
    most_at_once: int  # the most tasks publishing at the same moment
    megabytes: float
    worker_cpu_seconds: float  # the worker's processes, first claim seen to all published
    machine_busy: float  # all CPUs, the same span: 1.0 = every core busy

    @property
    def ingest_rate(self) -> float:
        return self.ingest_instances / self.ingest_seconds

    @property
    def publish_rate(self) -> float:
        return self.instances / self.publish_seconds


# --- Databases, Redis, the bucket ------------------------------------------------------------


class Databases:
    """`<name>_publish_template` (migrated once) and `<name>_publish` (a new copy per round),
    beside the database DATABASE_URL names, which itself is never touched."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        if not parts.scheme.startswith("postgres"):
            raise BenchError(f"DATABASE_URL must name PostgreSQL, not {database_url}")
        base = parts.path.lstrip("/") or "portal"
        self.name = f"{base}_publish"
        self.template = f"{self.name}_template"
        self.admin_url = with_path(database_url, "/postgres")
        self.url = with_path(database_url, f"/{self.name}")
        self.template_url = with_path(database_url, f"/{self.template}")
        self.created: list[str] = []

    def _admin(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)

    def _drop(self, name: str) -> None:
        from psycopg import sql

        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create_template(self) -> None:
        from psycopg import sql

        for name in (self.name, self.template):
            self._drop(name)
        self.created = [self.template, self.name]
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))

    def fresh(self) -> None:
        from psycopg import sql

        self._drop(self.name)
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(self.name), sql.Identifier(self.template)
            )
        )

    def query(self, statement: str) -> tuple[Any, ...]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as connection:
            row = connection.execute(statement).fetchone()
        assert row is not None
        return tuple(row)

    def column(self, statement: str) -> list[Any]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return [row[0] for row in connection.execute(statement).fetchall()]

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self._drop(name)
            except Exception as exc:  # report and go on: the rest must be cleaned up too
                say(f"could not drop database {name}: {exc}")


def forget_node_keys(node: str) -> int:
    """Delete what one round's node left in Redis: its publish queue and pending marker, and
    its worker's entries in kombu's exchange bindings. Nothing else is touched."""
    import redis

    removed = 0
    for variable in ("REDIS_URL", "CACHE_URL"):
        client = redis.Redis.from_url(os.environ[variable], socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"*{node}*", count=1000))
            if keys:
                removed += int(client.delete(*keys))
            for binding in client.scan_iter(match="_kombu.binding.*", count=1000):
                if client.type(binding) != b"set":
                    continue
                stale = [member for member in client.smembers(binding) if node.encode() in member]
                if stale:
                    removed += int(client.srem(binding, *stale))
        finally:
            client.close()
    return removed


def kombu_keys() -> set[bytes]:
    """kombu's own keys in the broker database (exchange bindings), to remove at the end the
    ones that this benchmark's workers created."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    try:
        return set(client.scan_iter(match="_kombu.*", count=1000))
    finally:
        client.close()


def forget_keys(keys: set[bytes]) -> None:
    import redis

    if keys:
        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
        try:
            client.delete(*keys)
        finally:
            client.close()


def s3_client() -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": os.environ.get("S3_ADDRESSING_STYLE") or "path"},
        ),
    )


def bucket_names(client: Any, prefix: str = "instance/") -> set[str]:
    names: set[str] = set()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=os.environ["S3_BUCKET"], Prefix=prefix):
        names.update(item["Key"] for item in page.get("Contents", []))
    return names


def delete_objects(client: Any, names: list[str]) -> None:
    for start in range(0, len(names), 1000):
        chunk = [{"Key": name} for name in names[start : start + 1000]]
        client.delete_objects(Bucket=os.environ["S3_BUCKET"], Delete={"Objects": chunk})


# --- Children: the portal's own code, in processes of their own ----------------------------------


def portal_environment(databases: Databases, *, spool: Path, node: str) -> dict[str, str]:
    """The stack's environment (S3, Redis, keyring, secret key) with this round's database,
    spool and node; nothing else of the caller's portal settings leaks in."""
    kept = {"REDIS_URL", "CACHE_URL", "PORTAL_KEYRING", "PORTAL_VAR_DIR", "PORTAL_HTTPS"}
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(PORTAL_VARIABLE_PREFIXES)
        or name in kept
        or name.startswith(("S3_", "DJANGO_SECRET_KEY", "DJANGO_DEBUG"))
    }
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": databases.url,
            "INGEST_SPOOL_DIR": str(spool),
            "PORTAL_NODE": node,
        }
    )
    return environment


def run_child(arguments: list[str], environment: dict[str, str], what: str) -> dict[str, Any]:
    finished = subprocess.run(
        [PYTHON, "-m", "bench.publish", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=PUBLISH_TIMEOUT_SECONDS,
        check=False,
    )
    if finished.returncode != 0:
        raise BenchError(f"{what} failed ({finished.returncode}):\n{finished.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def manage(arguments: list[str], environment: dict[str, str]) -> str:
    finished = subprocess.run(
        [PYTHON, "manage.py", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if finished.returncode != 0:
        raise BenchError(
            f"manage.py {arguments[0]} failed ({finished.returncode}):\n"
            f"{finished.stdout[-1500:]}{finished.stderr[-3000:]}"
        )
    return finished.stdout


def child_ingest(study: Path, warmup: Path, extra_tasks: int) -> dict[str, Any]:
    """Ingest the warm-up study, then the timed one, each as one transfer; with no worker
    running, ingest's own receiver leaves the publish task waiting in the node's queue."""
    import django

    django.setup()
    from django.conf import settings

    from audit.codes import ActorKind
    from facilities.models import Facility
    from sharing.tasks import request_publish
    from studies.services import Channel, IngestOutcome, IngestSource, study_ingest_instance
    from studies.spool import get_spool

    facility = Facility.objects.get(name=FACILITY_NAME)
    spool = get_spool()

    def ingest(paths: list[Path]) -> None:
        source = IngestSource(
            facility, Channel.DIMSE, ActorKind.DICOM_NODE, CALLING_AET, address="127.0.0.1"
        )
        for path in paths:
            with path.open("rb") as file:
                incoming = spool.receive(file)
            result = study_ingest_instance(path=incoming, source=source, spool=spool)
            if result.outcome is not IngestOutcome.STORED:
                raise SystemExit(f"ingest of {path.name}: {result.outcome} {result.message}")

    ingest(sorted(warmup.glob("*.dcm")))
    paths = sorted(study.glob("*.dcm"))
    started = time.perf_counter()
    ingest(paths)
    seconds = time.perf_counter() - started
    for _ in range(extra_tasks):
        request_publish(settings.PORTAL_NODE, force=True)
    return {"instances": len(paths), "seconds": seconds}


# --- In-process timing of publish_spooled -----------------------------------------------------


class Timers:
    """Wall time spent inside wrapped functions, by label; safe across threads (boto3 reads the
    encrypting stream in a thread of its own while the caller waits)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.phase = ""
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds
            self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(self, owner: Any, attribute: str, label: str, *, phase: str = "") -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            previous = self.phase
            if phase:
                self.phase = phase
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - started)
                self.phase = previous

        setattr(owner, attribute, timed)

    def wrap_iterator(self, owner: Any, attribute: str, label: Callable[[], str]) -> None:
        """Time the call and every step of the iterator it returns, under `label()` as it is
        when each step starts (the phase: reading the spool file, or the GET's body)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            name = label()
            started = time.perf_counter()
            iterator = iter(original(*args, **kwargs))
            self.add(name, time.perf_counter() - started)

            def steps() -> Iterator[Any]:
                while True:
                    started = time.perf_counter()
                    try:
                        item = next(iterator)
                    except StopIteration:
                        self.add(name, time.perf_counter() - started)
                        return
                    self.add(name, time.perf_counter() - started)
                    yield item

            return steps()

        setattr(owner, attribute, timed)


def child_profile(top: int) -> dict[str, Any]:
    """Publish everything waiting on this node in-process, batch after batch, with timers."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection, connections

    import sharing.crypto
    import sharing.services
    import sharing.store
    import studies.spool

    # One upload at a time, in this thread, so that the steps' timers add up to the whole.
    settings.PUBLISH_UPLOADS_IN_FLIGHT = 1
    timers = Timers()
    timers.wrap(sharing.services, "_claim", "claim")
    timers.wrap(sharing.services, "study_data_key", "data key")
    timers.wrap(sharing.services, "_upload", "upload")
    timers.wrap(sharing.services, "_record", "record")
    timers.wrap(sharing.services, "ObjectEncryptor", "new encryptor")
    timers.wrap(studies.spool.Spool, "discard", "unlink")
    timers.wrap(sharing.store.ObjectStore, "put", "put", phase="put")
    timers.wrap(sharing.store.ObjectStore, "put_verified", "put verified")
    timers.wrap_iterator(sharing.crypto.ObjectEncryptor, "encrypt", lambda: "encrypt in memory")
    timers.wrap(sharing.services._HashingReader, "readinto", "read+hash")
    timers.wrap(sharing.crypto._EncryptingReader, "readinto", "encrypt+read")
    timers.wrap(sharing.services, "_verify", "verify", phase="verify")
    timers.wrap(sharing.store.ObjectStore, "_s3_get", "get")
    timers.wrap_iterator(sharing.services, "decrypt_stream", lambda: "body+decrypt")
    timers.wrap_iterator(sharing.crypto, "_pieces", lambda: f"pieces {timers.phase}")
    timers.wrap(sharing.services, "_settle_studies", "settle")
    timers.wrap(type(connections["default"]), "_commit", "commit")
    sql = {"seconds": 0.0, "statements": 0}

    def sql_timer(execute: Any, statement: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(statement, params, many, context)
        finally:
            sql["seconds"] += time.perf_counter() - started
            sql["statements"] += 1

    profiler = cProfile.Profile() if top else None
    published = batches = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    with connection.execute_wrapper(sql_timer):
        if profiler:
            profiler.enable()
        while True:
            report = sharing.services.publish_spooled(settings.PORTAL_NODE)
            published += report.published
            batches += 1
            if not report.more:
                break
        if profiler:
            profiler.disable()
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    profile_text = ""
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        out.write(own_time_by_package(stats, total))
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
        profile_text = out.getvalue()
    return {
        "published": published,
        "batches": batches,
        "seconds": total,
        "cpu_seconds": cpu,
        "timers": timers.seconds,
        "calls": timers.calls,
        "sql": sql,
        "cprofile": profile_text,
    }


def own_time_by_package(stats: pstats.Stats, total: float) -> str:
    """cProfile's own time (tottime) summed by package: where the CPU goes, roughly. Waiting on
    a lock (another thread, i.e. the upload or the server) is shown apart, as it is no CPU."""
    by_package: dict[str, float] = {}
    for (filename, _line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        own = entry[2]
        if "site-packages/" in filename:
            package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif filename.startswith(str(ROOT)):
            package = "portal: " + filename[len(str(ROOT)) + 1 :].split("/", 1)[0]
        elif filename == "~":
            waits = ("acquire", "recv_into", "sendall", "poll", "select", "sleep")
            package = (
                "waiting (locks, sockets)" if any(w in function for w in waits) else "builtins"
            )
        else:
            package = "standard library"
        by_package[package] = by_package.get(package, 0.0) + own
    lines = ["Own time by package (cProfile, inflated for Python code):", ""]
    for package, seconds in sorted(by_package.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"  {package:32} {seconds:7.2f} s  {seconds / total:5.0%}")
    return "\n".join(lines) + "\n\n"


def breakdown(result: dict[str, Any]) -> list[tuple[str, float]]:
    """(step, seconds) rows from the timers, nested steps apart from their parents."""
    seconds: dict[str, float] = result["timers"]

    def get(name: str) -> float:
        return float(seconds.get(name, 0.0))

    spool_read = get("pieces put")
    encrypt = get("encrypt+read") - spool_read
    put_rest = get("put") - get("encrypt+read")
    download = get("pieces verify")
    decrypt = get("body+decrypt") - download
    verify_rest = get("verify") - get("get") - get("body+decrypt")
    upload_rest = (
        get("upload")
        - get("put")
        - get("put verified")
        - get("encrypt in memory")
        - get("verify")
        - get("new encryptor")
    )  # opening the spool file, comparing the hash
    batches_rest = (
        result["seconds"]
        - get("claim")
        - get("data key")
        - get("upload")
        - get("record")
        - get("settle")
    )  # publish_spooled's own bookkeeping and the loop
    return [
        ("claim a batch (SQL: lock, update, insert)", get("claim")),
        ("study data key (SQL, unwrap; once per study per batch)", get("data key")),
        ("new object key (random id and salt, HKDF)", get("new encryptor")),
        ("in memory: read the spool file and hash it", get("read+hash")),
        ("in memory: encrypt (AES-GCM)", get("encrypt in memory") - get("read+hash")),
        ("in memory: PUT to S3, checked by Content-MD5", get("put verified")),
        ("streamed: read the spool file (inside the upload)", spool_read),
        ("streamed: encrypt (AES-GCM, inside the upload)", encrypt),
        ("streamed: PUT to S3, boto3/s3transfer", put_rest),
        ("streamed, read back: GET until the headers", get("get")),
        ("streamed, read back: download the body", download),
        ("streamed, read back: decrypt", decrypt),
        ("streamed, read back: SHA-256 and the rest", verify_rest),
        ("the rest of the upload step (open the spool file, compare)", upload_rest),
        ("record a group of uploads (SQL transaction)", get("record") - get("unlink")),
        ("remove the spool files (on commit)", get("unlink")),
        ("settle the studies (SQL, per batch)", get("settle")),
        ("the rest (publish_spooled's own loop)", batches_rest),
    ]


@dataclass(frozen=True)
class CpuTimes:
    total: int
    idle: int

    def busy_since(self, earlier: CpuTimes) -> float:
        return 1 - (self.idle - earlier.idle) / max(self.total - earlier.total, 1)


def machine_cpu() -> CpuTimes:
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return CpuTimes(total=sum(values), idle=values[3] + values[4])  # idle + iowait


# --- The rounds -------------------------------------------------------------------------------


class Worker:
    """One `celery -A portal worker`, in a session of its own; stopped with its pool."""

    def __init__(self, environment: dict[str, str], config: Config, log: Path, name: str) -> None:
        command = [CELERY, "-A", "portal", "worker", "--loglevel", "info"]
        command += ["--hostname", f"{name}@%h", *config.worker_arguments]
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process of the worker's group so far."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # the process group
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.perf_counter() + timeout
        while b" ready." not in self.log.read_bytes():
            self.check()
            if time.perf_counter() > deadline:
                raise BenchError(f"the worker did not start:\n{tail(self.log)}")
            time.sleep(POLL_SECONDS)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"the worker exited with {self.process.returncode}:\n{tail(self.log)}")

    def stop(self) -> None:
        """A warm shutdown: SIGTERM to the main process only, which lets the task at work finish
        (a SIGTERM to the whole group would kill the pool processes in the middle of a task);
        then whatever is left of the group goes."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_SECONDS)
        stop_group(self.process, STOP_SECONDS)


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    databases: Databases
    study: Path
    warmup: Path
    total_instances: int
    study_bytes: int
    nodes: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    kombu_keys_before: set[bytes] = field(default_factory=kombu_keys)
    token: str = field(default_factory=lambda: secrets.token_hex(3))

    def prepare_round(self, label: str, extra_tasks: int) -> tuple[str, Path, dict[str, Any]]:
        """A new database copy, spool and node; both studies ingested with no worker running."""
        node = f"benchpub-{self.token}-{label}"
        self.nodes.append(node)
        spool = self.work / label / "spool"
        spool.mkdir(parents=True)
        self.databases.fresh()
        environment = portal_environment(self.databases, spool=spool, node=node)
        arguments = ["--child-ingest", str(self.study), str(self.warmup), str(extra_tasks)]
        ingest = run_child(arguments, environment, "the ingest child")
        waiting = self.databases.query(
            "SELECT count(*) FROM studies_instance WHERE state = 'received'"
        )[0]
        if waiting != self.total_instances:
            raise BenchError(f"{waiting} instances wait after ingest, not {self.total_instances}")
        return node, spool, ingest

    def publish_round(self, config: Config, run: int) -> Round:
        label = f"{config.key}-run{run}"
        node, spool, ingest = self.prepare_round(label, config.extra_tasks)
        environment = portal_environment(self.databases, spool=spool, node=node)
        worker = Worker(environment, config, self.work / label / "worker.log", node)
        started = time.perf_counter()
        # CPU time of the worker's processes and of the whole machine, from the first claim
        # seen to the last instance published: what publishing costs, and whether it waits.
        cpu_start: tuple[float, CpuTimes] | None = None
        try:
            deadline = started + PUBLISH_TIMEOUT_SECONDS
            while True:
                claimed, published = self.databases.query(
                    "SELECT (SELECT count(*) FROM sharing_storedobject),"
                    " (SELECT count(*) FROM studies_instance WHERE state = 'published')"
                )
                if cpu_start is None and claimed:
                    cpu_start = (worker.cpu_seconds(), machine_cpu())
                if published == self.total_instances:
                    break
                worker.check()
                if time.perf_counter() > deadline:
                    raise BenchError(f"{published} published after {PUBLISH_TIMEOUT_SECONDS} s")
                time.sleep(POLL_SECONDS)
            wall = time.perf_counter() - started
            worker_cpu, machine_end = worker.cpu_seconds(), machine_cpu()
            # The task that published the last instance settles its studies just after.
            settle_deadline = time.perf_counter() + SETTLE_SECONDS
            while (
                time.perf_counter() < settle_deadline
                and self.databases.query(
                    "SELECT count(*) FROM studies_study WHERE state <> 'available'"
                )[0]
            ):
                time.sleep(POLL_SECONDS)
        finally:
            worker.stop()
        assert cpu_start is not None
        machine_busy = machine_end.busy_since(cpu_start[1])
        self.check_round(label, spool)
        first, last, tasks = self.databases.query(
            "SELECT min(claimed_at), max(stored_at), count(DISTINCT claim_token)"
            " FROM sharing_storedobject"
        )
        return Round(
            config=config.key,
            run=run,
            instances=self.total_instances,
            ingest_instances=int(ingest["instances"]),
            ingest_seconds=float(ingest["seconds"]),
            publish_seconds=(last - first).total_seconds(),
            wall_seconds=wall,
            tasks=int(tasks),
            most_at_once=self.most_at_once(),
            megabytes=self.study_bytes / MB,
            worker_cpu_seconds=worker_cpu - cpu_start[0],
            machine_busy=machine_busy,
        )

    def together_round(self, run: int) -> Together:
        """Ingest while one worker (as started) publishes, as a node that receives and
        publishes does: does publishing keep up, or does a backlog grow behind ingest?"""
        label = f"together-run{run}"
        node = f"benchpub-{self.token}-{label}"
        self.nodes.append(node)
        spool = self.work / label / "spool"
        spool.mkdir(parents=True)
        self.databases.fresh()
        environment = portal_environment(self.databases, spool=spool, node=node)
        worker = Worker(environment, CONFIGS["default"], self.work / label / "worker.log", node)
        try:
            worker.wait_until_ready()
            ingest = run_child(
                ["--child-ingest", str(self.study), str(self.warmup), "0"],
                environment,
                "the ingest child",
            )
            deadline = time.perf_counter() + PUBLISH_TIMEOUT_SECONDS
            while (
                self.databases.query(
                    "SELECT count(*) FROM studies_instance WHERE state <> 'published'"
                )[0]
                or self.databases.query(
                    "SELECT count(*) FROM studies_study WHERE state <> 'available'"
                )[0]
            ):
                worker.check()
                if time.perf_counter() > deadline:
                    raise BenchError(f"round {label}: not published after the timeout")
                time.sleep(POLL_SECONDS)
        finally:
            worker.stop()
        # From the database's own clocks: the last instance committed by ingest, and what was
        # published after that moment.
        last_received, last_stored, behind = self.databases.query(
            "SELECT max(i.received_at), max(o.stored_at),"
            " count(*) FILTER (WHERE o.stored_at >"
            " (SELECT max(received_at) FROM studies_instance))"
            " FROM studies_instance i JOIN sharing_storedobject o ON o.instance_id = i.id"
        )
        self.check_round(label, spool)
        return Together(
            run=run,
            ingest_rate=ingest["instances"] / ingest["seconds"],
            behind_at_end=int(behind),
            drain_seconds=max(0.0, (last_stored - last_received).total_seconds()),
        )

    def most_at_once(self) -> int:
        """The most publish tasks at work at the same moment (claim to last object recorded)."""
        intervals = self.databases.column(
            "SELECT json_build_array(extract(epoch FROM min(claimed_at)),"
            " extract(epoch FROM max(stored_at))) FROM sharing_storedobject GROUP BY claim_token"
        )
        events = sorted(
            [(float(start), 1) for start, _ in intervals]
            + [(float(end), -1) for _, end in intervals]
        )
        busy = most = 0
        for _, change in events:
            busy += change
            most = max(most, busy)
        return most

    def check_round(self, label: str, spool: Path) -> None:
        expected = self.total_instances
        stored, available, studies = self.databases.query(
            "SELECT (SELECT count(*) FROM sharing_storedobject WHERE state = 'stored'),"
            " (SELECT count(*) FROM studies_study WHERE state = 'available'),"
            " (SELECT count(*) FROM studies_study)"
        )
        names = self.databases.column("SELECT name FROM sharing_storedobject")
        self.uploaded.extend(names)
        left = sum(1 for _ in (spool / "instances").glob("*/*.dcm"))
        client = s3_client()
        in_bucket = bucket_names(client)
        problems = []
        if stored != expected:
            problems.append(f"{stored} objects stored, not {expected}")
        if available != studies:
            detail = self.databases.column(
                "SELECT json_build_array(s.id, s.state, s.number_of_instances,"
                " s.number_of_published_instances, (SELECT count(*) FROM studies_instance i"
                " WHERE i.study_id = s.id AND i.state = 'published')) FROM studies_study s"
            )
            problems.append(
                f"{available} of {studies} studies available (id, state, instances, counted as"
                f" published, published: {detail})"
            )
        if left:
            problems.append(f"{left} files left in the spool")
        if in_bucket != set(names):
            problems.append(f"the bucket holds {len(in_bucket)} objects, the database {len(names)}")
        if problems:
            raise BenchError(f"round {label}: " + "; ".join(problems))
        delete_objects(client, names)  # the next round starts with an empty bucket
        self.uploaded = [name for name in self.uploaded if name not in set(names)]
        shutil.rmtree(self.work / label, ignore_errors=True)

    def profile_round(self) -> dict[str, Any]:
        node, spool, _ = self.prepare_round("profile", 0)
        environment = portal_environment(self.databases, spool=spool, node=node)
        result = run_child(
            ["--child-profile", str(self.args.cprofile_top)], environment, "the profile child"
        )
        if result["published"] != self.total_instances:
            raise BenchError(f"the profile round published {result['published']} instances")
        self.check_round("profile", spool)
        return result

    def cleanup(self) -> None:
        """Remove the objects this benchmark uploaded (the names its databases recorded), the
        Redis keys of its nodes, and its databases."""
        with contextlib.suppress(Exception):  # a round that failed before its check
            self.uploaded += self.databases.column("SELECT name FROM sharing_storedobject")
        with contextlib.suppress(Exception):
            delete_objects(s3_client(), sorted(set(self.uploaded)))
        for node in self.nodes:
            with contextlib.suppress(Exception):
                forget_node_keys(node)
        with contextlib.suppress(Exception):
            forget_keys(kombu_keys() - self.kombu_keys_before)
        self.databases.cleanup()


# --- Report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = ["-" * (widths[0] + 2), *("-" * (width + 1) + ":" for width in widths[1:])]
    return [line(headers), "|" + "|".join(rules) + "|", *(line(row) for row in rows)]


def report(
    rounds: list[Round],
    configs: list[Config],
    together: list[Together],
    profile: dict[str, Any] | None,
    machine: list[tuple[str, str]],
    busy: float,
    args: argparse.Namespace,
) -> str:
    cores = os.cpu_count() or 1
    lines = []
    study_mb = rounds[0].megabytes
    ingest_rates = [r.ingest_rate for r in rounds]
    ingest_rate = median(ingest_rates)
    lines.append(
        f"Publishing {rounds[0].instances} instances ({args.instances} CT {args.rows}x{args.rows}"
        f" + {args.warmup} warm-up, {study_mb:.0f} MB for the timed study): median of"
        f" {args.runs} rounds per row"
    )
    lines.append("")
    per_instance_mb = study_mb / args.instances
    rows = [
        [
            "ingest, study_ingest_instance in-process",
            f"{ingest_rate:.1f}",
            f"{ingest_rate * per_instance_mb:.0f}",
            "1.00",
            "",
            "",
            "",
            "",
            "",
        ]
    ]
    for config in configs:
        mine = [r for r in rounds if r.config == config.key]
        rate = median([r.publish_rate for r in mine])
        wall = median([r.instances / r.wall_seconds for r in mine])
        rows.append(
            [
                config.label.format(cores=cores),
                f"{rate:.1f}",
                f"{rate * per_instance_mb:.0f}",
                f"{rate / ingest_rate:.2f}",
                f"{wall:.1f}",
                f"{median([r.tasks for r in mine]):.0f}",
                str(max(r.most_at_once for r in mine)),
                f"{median([r.worker_cpu_seconds * 1000 / r.instances for r in mine]):.1f}",
                f"{median([r.machine_busy for r in mine]):.0%}",
            ]
        )
    headers = ["what", "inst/s", "MB/s", "vs ingest", "inst/s incl. worker start", "tasks"]
    headers += ["most at once", "worker CPU ms/inst", "CPUs busy"]
    lines += markdown_table(headers, rows)
    lines.append("")
    lines.append(
        f"Reference, ingest over the network (make bench-ingest, README): {INGEST_REFERENCE}"
    )
    lines.append("")
    lines.append("Every round (ingest inst/s; publish s, inst/s; wall s; tasks):")
    for r in rounds:
        lines.append(
            f"  {r.config:10} run {r.run}: ingest {r.ingest_rate:6.1f}/s;"
            f" publish {r.publish_seconds:6.2f} s = {r.publish_rate:6.1f}/s;"
            f" wall {r.wall_seconds:6.2f} s; tasks {r.tasks}; at once {r.most_at_once};"
            f" worker CPU {r.worker_cpu_seconds:5.2f} s; CPUs busy {r.machine_busy:.0%}"
        )
    if together:
        lines.append("")
        lines.append(
            "Ingest and publish at once (the worker as started, running before ingest begins):"
        )
        lines.append("")
        lines += markdown_table(
            ["run", "ingest inst/s meanwhile", "behind when ingest ended", "last one published"],
            [
                [
                    str(t.run),
                    f"{t.ingest_rate:.1f}",
                    f"{t.behind_at_end} of {rounds[0].instances}",
                    f"{t.drain_seconds:.2f} s after",
                ]
                for t in together
            ],
        )
    if profile is not None:
        count = profile["published"]
        lines.append("")
        how = "under cProfile: inflated timings" if profile["cprofile"] else "timers only"
        lines.append(
            f"Where the time goes: publish_spooled in-process ({how}), {count} instances in"
            f" {profile['batches']} batches, {profile['seconds']:.2f} s"
            f" = {count / profile['seconds']:.1f} inst/s; this process used"
            f" {profile['cpu_seconds'] * 1000 / count:.1f} ms of CPU per instance"
        )
        lines.append("")
        steps = [
            [step, f"{seconds * 1000 / count:.2f}", f"{seconds / profile['seconds']:.0%}"]
            for step, seconds in breakdown(profile)
        ]
        steps.append(["all of it", f"{profile['seconds'] * 1000 / count:.2f}", "100%"])
        lines += markdown_table(["step", "ms/instance", "share"], steps)
        sql = profile["sql"]
        commits = profile["timers"].get("commit", 0.0)
        lines.append("")
        lines.append(
            f"Database, inside the steps above: {sql['statements'] / count:.1f} SQL statements"
            f" taking {sql['seconds'] * 1000 / count:.2f} ms, and"
            f" {profile['calls'].get('commit', 0) / count:.1f} COMMITs taking"
            f" {commits * 1000 / count:.2f} ms, per instance"
            f" ({(sql['seconds'] + commits) / profile['seconds']:.0%} of the time)."
        )
        if profile["cprofile"]:
            lines.append("")
            lines.append(profile["cprofile"])
    lines.append("")
    lines.append("Machine:")
    for name, value in machine:
        lines.append(f"  {name:12} {value}")
    verdict = (
        "quiet" if busy < BUSY_WARNING else "NOT QUIET: the numbers are lower than they could be"
    )
    lines.append(f"  {'before':12} CPUs {busy:.0%} busy with other work ({verdict})")
    return "\n".join(lines)


def machine_info(databases: Databases, work: Path) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in ("Django", "celery", "boto3", "psycopg", "cryptography"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    with contextlib.suppress(Exception):
        weed = shutil.which("weed") or str(Path(PYTHON).parent / "weed")
        version = subprocess.run([weed, "version"], capture_output=True, text=True, check=False)
        words = version.stdout.split()
        versions.append(f"SeaweedFS {words[2] if len(words) > 2 else '?'}")
    return [
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("system", f"{platform.system()} {platform.release()}, spool in {work}"),
        ("Python", platform.python_version()),
        ("packages", ", ".join(versions)),
        ("PostgreSQL", databases.server_version()),
    ]


# --- Main -------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def preflight() -> None:
    import psycopg
    import redis

    missing = [
        name
        for name in ("DATABASE_URL", "REDIS_URL", "CACHE_URL", "S3_BUCKET", "PORTAL_KEYRING")
        if not os.environ.get(name)
    ]
    if missing:
        raise BenchError(
            f"{', '.join(missing)} not set. Run it under the stack script: .venv/bin/python "
            "scripts/stack.py run -- .venv/bin/python -m bench.publish (or make bench-publish)"
        )
    if os.environ["REDIS_URL"] == os.environ["CACHE_URL"]:
        raise BenchError("REDIS_URL and CACHE_URL must name different Redis databases")
    try:
        psycopg.connect(
            with_path(os.environ["DATABASE_URL"], "/postgres"), connect_timeout=3
        ).close()
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL: {str(exc).strip()}") from None
    try:
        redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=3).ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis: {exc}") from None
    if not Path(CELERY).exists():
        raise BenchError(f"{CELERY} is missing (make install)")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.publish",
        description="Publish rate (spool -> encrypted S3 objects) against the ingest rate.",
    )
    parser.add_argument("--instances", type=int, default=300, help="instances in the study")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each image")
    parser.add_argument("--warmup", type=int, default=5, help="instances of the warm-up study")
    parser.add_argument("--runs", type=int, default=3, help="rounds per row; the median is shown")
    parser.add_argument(
        "--configs",
        default="default,c1,two-tasks",
        help=f"worker configurations, comma-separated, from {', '.join(CONFIGS)}",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process timing")
    parser.add_argument(
        "--no-together", action="store_true", help="skip the rounds of ingest and publish at once"
    )
    parser.add_argument(
        "--cprofile-top",
        type=int,
        default=0,
        metavar="N",
        help="run the in-process round under cProfile too and print its top N functions",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rounds here")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1 or args.warmup < 0 or args.rows < 16:
        parser.error("--instances and --runs at least 1, --warmup at least 0, --rows at least 16")
    keys = [key.strip() for key in args.configs.split(",") if key.strip()]
    if not keys or any(key not in CONFIGS for key in keys):
        parser.error(f"--configs takes {', '.join(CONFIGS)}")
    args.config_list = [CONFIGS[key] for key in keys]
    return args


def benchmark(args: argparse.Namespace) -> int:
    busy = cpu_busy_fraction()
    databases = Databases(os.environ["DATABASE_URL"])
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as folder:
        work = Path(folder)
        say(f"generating a {args.instances}-instance CT study of {args.rows}x{args.rows}...")
        study, warmup = generate_studies(
            work / "data", instances=args.instances, rows=args.rows, warmup=args.warmup
        )
        bench = Bench(
            args=args,
            work=work,
            databases=databases,
            study=work / "data" / "study",
            warmup=work / "data" / "warmup",
            total_instances=len(study.paths) + len(warmup.paths),
            study_bytes=study.total_bytes,
        )
        if not warmup.paths:
            (work / "data" / "warmup").mkdir(parents=True, exist_ok=True)
        try:
            say(f"creating and migrating {databases.template}...")
            databases.create_template()
            environment = portal_environment(databases, spool=work / "unused", node="benchpub")
            environment["DATABASE_URL"] = databases.template_url
            manage(["migrate", "--no-input", "-v0"], environment)
            manage(["shell", "--no-startup", "-c", SETUP_CODE], environment)
            rounds: list[Round] = []
            for run in range(1, args.runs + 1):
                for config in args.config_list:
                    say(f"run {run}, {config.key}: ingest, then publish with one worker...")
                    result = bench.publish_round(config, run)
                    say(
                        f"  ingest {result.ingest_rate:.1f}/s, publish {result.publish_rate:.1f}/s"
                        f" ({result.publish_seconds:.2f} s, {result.tasks} tasks)"
                    )
                    rounds.append(result)
            together: list[Together] = []
            for run in range(1, 0 if args.no_together else args.runs + 1):
                say(f"run {run}: ingest while one worker publishes...")
                together.append(bench.together_round(run))
                say(
                    f"  ingest {together[-1].ingest_rate:.1f}/s;"
                    f" {together[-1].behind_at_end} behind when it ended"
                )
            profile = None
            if not args.no_profile:
                say("in-process round with timers...")
                profile = bench.profile_round()
            machine = machine_info(databases, work)
        finally:
            say("cleaning up...")
            bench.cleanup()
    print(report(rounds, args.config_list, together, profile, machine, busy, args))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rounds": [asdict(r) for r in rounds],
                    "together": [asdict(t) for t in together],
                    "profile": profile,
                    "machine": machine,
                    "busy_before": busy,
                },
                indent=2,
            )
        )
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child-ingest"]:
        print(json.dumps(child_ingest(Path(argv[1]), Path(argv[2]), int(argv[3]))))
        return 0
    if argv[:1] == ["--child-profile"]:
        print(json.dumps(child_profile(int(argv[1]))))
        return 0
    args = parse_arguments(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        preflight()
        return benchmark(args)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        say(f"interrupted ({str(exc) or 'SIGINT'}); everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
