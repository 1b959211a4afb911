"""Ingest benchmark: instances per second into the portal and into Orthanc, same run, same data.

One command (PostgreSQL and Redis are started by the stack script when they are not running):

    .venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.ingest

What happens, in order (bench/README.md explains how to read the result):

1. A synthetic CT study (the project's generator, `studies.synthetic`; no PHI) of 300
   instances of 512x512 is written to a temporary folder, and a small warm-up study of another
   synthetic patient beside it.
2. The portal is prepared once: a template database is created, migrated, and given a facility,
   the AE title storescu calls with, and an API token that may store.
3. For each run (3 by default), each way in, and each target, the target is started fresh
   and empty: Orthanc with new storage; the portal with a new copy of the template database,
   a new spool and new Redis databases, and its `dicom_listener` or gunicorn started anew.
   The warm-up study is sent, then the timed study, and the clock covers the timed study
   only: from starting storescu to its exit, or from the first STOW request to the last
   response. The target must then hold exactly the instances sent, or the run fails.
4. The medians are printed as a table, with the machine they ran on.

Everything started here listens on 127.0.0.1 (Orthanc binds every address, so it is configured
to refuse all but loopback; see bench/orthanc.py) and is stopped, and the databases dropped,
also on Ctrl-C or failure.

`--profile DIR` runs the portal's processes under cProfile (every thread of the listener, each
gunicorn worker) and prints where the time goes; profiled timings are not comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import importlib.metadata
import io
import json
import os
import platform
import pstats
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.orthanc import Orthanc

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOOPBACK = "127.0.0.1"

CALLING_AET = "BENCHSCU"  # storescu's -aet, registered as the facility's AE title
PORTAL_AET = "IMAGING_PORTAL"
ORTHANC_AET = "ORTHANC"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Redis databases of the benchmark's own, flushed before each portal run and at the end.
REDIS_BROKER_DB = 13
REDIS_CACHE_DB = 14
# The environment the portal gets is built here; none of these leak in from the caller's.
PORTAL_VARIABLE_PREFIXES = (
    "DJANGO_",
    "PORTAL_",
    "INGEST_",
    "DICOM_LISTENER_",
    "DATABASE_",
    "REDIS_",
    "CACHE_",
    "CELERY_",
    "S3_",
    "EMAIL_",
    "SMTP_",
)
# The processes under test and the client. Everything binds to 127.0.0.1.
LISTENER_ARGUMENTS = "manage.py dicom_listener --host 127.0.0.1 --port {port} --ae-title {aet}"
# Sync workers, as the README's production command; 2 x cores + 1 by default.
GUNICORN_ARGUMENTS = (
    "-m gunicorn portal.wsgi --bind 127.0.0.1:{port} --workers {workers} --worker-class sync"
    " --timeout 300 --graceful-timeout 10 --log-level warning --no-control-socket"
)
STORESCU_ARGUMENTS = (
    "storescu --required --aetitle {aet} --call {called} --timeout 30 --dimse-timeout 120"
)
START_SECONDS = 60
STOP_SECONDS = 15
SEND_TIMEOUT_SECONDS = 1800
MB = 1_000_000
# Above this CPU use by others before the start, the run is flagged as noisy.
BUSY_WARNING = 0.15

SETUP_CODE = """
from accounts.models import User
from audit.codes import PurposeOfUse
from facilities.models import AETitle, Facility
from facilities.services import api_token_create

admin = User.objects.create_superuser("bench-admin@example.invalid")
facility = Facility.objects.create(
    name="Benchmark Imaging (synthetic)",
    kind=Facility.Kind.ORIGINATING,
    default_issuer_of_patient_id="BENCH",
)
AETitle.objects.create(facility=facility, ae_title=CALLING_AET)
_, raw_token = api_token_create(
    facility=facility,
    name="Ingest benchmark",
    scopes=["store"],
    purpose_of_use=PurposeOfUse.TREATMENT,
    expires_in_days=1,
    actor=admin,
)
print("BENCH-TOKEN", raw_token)
"""

GUNICORN_PROFILE_HOOKS = """
import cProfile
import os

PROFILE_DIR = {profile_dir!r}


def post_fork(server, worker):
    worker.bench_profile = cProfile.Profile()
    worker.bench_profile.enable()


def worker_exit(server, worker):
    profile = getattr(worker, "bench_profile", None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(PROFILE_DIR, f"gunicorn-worker-{{os.getpid()}}.prof"))
"""


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or misbehaved; the message says what."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- What is measured ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Method:
    """A way in: DIMSE with storescu, or STOW-RS with `batch` instances per request."""

    key: str
    label: str
    batch: int = 0

    @property
    def is_dimse(self) -> bool:
        return self.batch == 0


@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    label: str
    product: str  # "portal" or "orthanc"
    fsync: bool = True


PORTAL = Target("portal", "portal", "portal")
PORTAL_NO_FSYNC = Target("portal-nofsync", "portal, INGEST_SPOOL_FSYNC=false", "portal", False)
ORTHANC = Target("orthanc", "Orthanc", "orthanc")


def methods_for(batches: Sequence[int], dimse: bool) -> list[Method]:
    methods = [Method("dimse", "DIMSE C-STORE, storescu, 1 association")] if dimse else []
    for batch in batches:
        noun = "instance" if batch == 1 else "instances"
        methods.append(Method(f"stow{batch}", f"STOW-RS, {batch} {noun}/request", batch))
    return methods


@dataclasses.dataclass(frozen=True)
class StudyFiles:
    paths: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


def generate_studies(
    folder: Path, *, instances: int, rows: int, warmup: int
) -> tuple[StudyFiles, StudyFiles]:
    """The timed study and a warm-up study of another synthetic patient (other UIDs)."""
    from studies.synthetic import SyntheticPatient, generate_study

    timed = generate_study(folder / "study", modality="CT", instances=instances, rows=rows)
    warm = (
        generate_study(
            folder / "warmup",
            modality="CT",
            instances=warmup,
            rows=rows,
            patient=SyntheticPatient(patient_id="SYN000002", name="SYNTHETIC^WARMUP"),
            seed=1,
        )
        if warmup
        else []
    )
    return StudyFiles(timed), StudyFiles(warm)


# --- Clients: the same for both targets ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DimseEndpoint:
    port: int
    called_aet: str


@dataclasses.dataclass(frozen=True)
class StowEndpoint:
    studies_url: str
    headers: dict[str, str]


def storescu_command(endpoint: DimseEndpoint, paths: Sequence[Path]) -> list[str]:
    # --required: propose only the presentation contexts the files need (their SOP class in
    # their own transfer syntax), as a modality does; both receivers then store the bytes as
    # sent, with no transcoding on either side.
    arguments = STORESCU_ARGUMENTS.format(aet=CALLING_AET, called=endpoint.called_aet)
    return [*arguments.split(), LOOPBACK, str(endpoint.port), *map(str, paths)]


def storescu_environment() -> dict[str, str]:
    # Nagle off for the client too (DCMTK reads TCP_NODELAY), the same towards both targets.
    return {**os.environ, "TCP_NODELAY": "1"}


def send_storescu(endpoint: DimseEndpoint, files: StudyFiles) -> float:
    """Send every file in one association; return the seconds from start to storescu's exit."""
    command = storescu_command(endpoint, files.paths)
    started = time.perf_counter()
    finished = subprocess.run(
        command,
        env=storescu_environment(),
        capture_output=True,
        text=True,
        timeout=SEND_TIMEOUT_SECONDS,
        check=False,
        start_new_session=True,
    )
    seconds = time.perf_counter() - started
    if finished.returncode != 0 or "Store Failed" in finished.stderr:
        raise BenchError(f"storescu exited with {finished.returncode}:\n{finished.stderr[-2000:]}")
    return seconds


def multipart_bodies(paths: Sequence[Path], batch: int) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each STOW-RS request, built before the clock starts."""
    bodies = []
    for start in range(0, len(paths), batch):
        boundary = secrets.token_hex(16)
        parts = [
            b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n"
            % (boundary.encode(), path.read_bytes())
            for path in paths[start : start + batch]
        ]
        body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        bodies.append((content_type, body))
    return bodies


def stow_response_problem(status: int, content: bytes, expected: int) -> str | None:
    """Why a STOW-RS response does not say that all `expected` instances were stored."""
    if status != 200:
        return f"HTTP {status}: {content[:300]!r}"
    try:
        document = json.loads(content)
    except ValueError:
        return f"HTTP 200 but not JSON: {content[:300]!r}"
    if isinstance(document, list):  # some servers wrap the one response data set in an array
        document = document[0] if document else {}
    failed = (document.get("00081198") or {}).get("Value") or []
    stored = (document.get("00081199") or {}).get("Value") or []
    if failed or len(stored) != expected:
        return f"{len(stored)} stored and {len(failed)} failed of {expected}: {content[:300]!r}"
    return None


def _post(
    session: Any, endpoint: StowEndpoint, content_type: str, body: bytes
) -> tuple[int, bytes]:
    response = session.post(
        endpoint.studies_url,
        data=body,
        headers={
            **endpoint.headers,
            "Content-Type": content_type,
            "Accept": "application/dicom+json",
        },
        timeout=SEND_TIMEOUT_SECONDS,
    )
    return response.status_code, response.content


def _check_answers(answers: Sequence[tuple[int, bytes]], expected: Sequence[int]) -> None:
    for index, ((status, content), count) in enumerate(zip(answers, expected, strict=True)):
        problem = stow_response_problem(status, content, count)
        if problem:
            raise BenchError(f"STOW-RS request {index + 1} of {len(answers)}: {problem}")


def send_stow(
    endpoint: StowEndpoint, bodies: Sequence[tuple[str, bytes]], batch: int, total: int
) -> float:
    """POST every body in turn on one session; return the seconds from first to last answer."""
    import requests

    expected = [min(batch, total - start) for start in range(0, total, batch)]
    with requests.Session() as session:
        started = time.perf_counter()
        answers = [_post(session, endpoint, content_type, body) for content_type, body in bodies]
        seconds = time.perf_counter() - started
    _check_answers(answers, expected)
    return seconds


def warm_up_stow(endpoint: StowEndpoint, bodies: Sequence[tuple[str, bytes]]) -> None:
    """Send one instance per request: the first alone (it creates the study, patient and series
    rows), then all the others at once.

    Sent at once, they reach every gunicorn worker (a sync worker takes one request at a time),
    so that no worker loads the site's URLs and views lazily, on its first request, while the
    clock runs: a long-running server pays that once per worker, not per study.
    """
    import requests

    def post_alone(item: tuple[str, bytes]) -> tuple[int, bytes]:
        with requests.Session() as session:
            return _post(session, endpoint, *item)

    answers = [post_alone(bodies[0])]
    with ThreadPoolExecutor(max_workers=max(1, len(bodies) - 1)) as pool:
        answers += list(pool.map(post_alone, bodies[1:]))
    _check_answers(answers, [1] * len(answers))


# --- Processes ----------------------------------------------------------------------------------


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_group(process: subprocess.Popen[Any], grace_seconds: float = STOP_SECONDS) -> None:
    from bench.orthanc import stop_process_group

    stop_process_group(process, grace_seconds)


@contextmanager
def background(
    command: list[str], *, env: dict[str, str], log: Path, ready: Callable[[], bool], name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` in a session of its own, wait until `ready()`, yield, stop the group."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not become ready in {START_SECONDS} s:\n{tail(log)}")
            time.sleep(0.2)
        yield process
        if process.poll() is not None:
            raise BenchError(f"{name} died during the run ({process.returncode}):\n{tail(log)}")
    finally:
        stop_group(process)


def c_echo_answers(port: int, called_aet: str) -> bool:
    # C-ECHO only, never a bare TCP connect: pynetdicom counts a connection that closes without
    # associating as an active association until its ACSE timeout, and the listener's shutdown
    # then waits out its whole grace period.
    echoed = subprocess.run(
        ["echoscu", "--aetitle", CALLING_AET, "--call", called_aet, LOOPBACK, str(port)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return echoed.returncode == 0


def http_answers(url: str) -> bool:
    import requests

    try:
        requests.get(url, timeout=5)
    except requests.RequestException:
        return False
    return True  # any status: the server is up and a worker has loaded the site


# --- The portal ---------------------------------------------------------------------------------


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Portal:
    """The portal under test: its template database, its processes, and their clean-up."""

    def __init__(
        self,
        *,
        work: Path,
        database_url: str,
        redis_url: str,
        database: str,
        workers: int,
        profile_dir: Path | None,
    ) -> None:
        if not urlsplit(database_url).scheme.startswith("postgres"):
            raise BenchError(f"DATABASE_URL must name PostgreSQL, not {database_url}")
        self.work = work
        self.admin_url = with_path(database_url, "/postgres")
        self.database = database
        self.template = f"{database}_template"
        if urlsplit(database_url).path.lstrip("/") in (self.database, self.template):
            raise BenchError(f"DATABASE_URL names {database}; the benchmark drops that database")
        self.database_url = with_path(database_url, f"/{database}")
        self.template_url = with_path(database_url, f"/{self.template}")
        self.broker_url = with_path(redis_url, f"/{REDIS_BROKER_DB}")
        self.cache_url = with_path(redis_url, f"/{REDIS_CACHE_DB}")
        self.workers = workers
        self.profile_dir = profile_dir
        self.secret_key = secrets.token_urlsafe(50)
        self.token = ""
        self.created: list[str] = []
        self.runs = 0

    # Databases and Redis.

    def _admin(self, *statements: Any) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as connection:
            for statement in statements:
                connection.execute(statement)

    def _drop(self, name: str) -> None:
        from psycopg import sql

        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _flush_redis(self) -> None:
        import redis

        for url in (self.broker_url, self.cache_url):
            client = redis.Redis.from_url(url, socket_timeout=5)
            try:
                client.flushdb()
            finally:
                client.close()

    def environment(
        self,
        *,
        database_url: str,
        spool: Path | None = None,
        fsync: bool = True,
        listener_port: int = 0,
    ) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(PORTAL_VARIABLE_PREFIXES)
        }
        var_dir = self.work / "portal-var"
        var_dir.mkdir(exist_ok=True)
        environment = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": self.secret_key,
            "DJANGO_ALLOWED_HOSTS": LOOPBACK,
            "PORTAL_HTTPS": "false",
            "PORTAL_VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": self.broker_url,
            "CACHE_URL": self.cache_url,
            "INGEST_SPOOL_FSYNC": "true" if fsync else "false",
            "DICOM_LISTENER_HOST": LOOPBACK,
            "DICOM_LISTENER_AE_TITLE": PORTAL_AET,
        }
        if spool is not None:
            environment["INGEST_SPOOL_DIR"] = str(spool)
        if listener_port:
            environment["DICOM_LISTENER_PORT"] = str(listener_port)
        return environment

    def manage(self, *arguments: str, database_url: str) -> str:
        finished = subprocess.run(
            [PYTHON, "manage.py", *arguments],
            cwd=ROOT,
            env=self.environment(database_url=database_url),
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

    def prepare(self) -> None:
        """Create and migrate the template database; add the facility, AE title and token."""
        from psycopg import sql

        for name in (self.database, self.template):
            self._drop(name)
        self.created = [self.template, self.database]
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        started = time.perf_counter()
        self.manage("migrate", "--no-input", "-v0", database_url=self.template_url)
        code = f"CALLING_AET = {CALLING_AET!r}\n{SETUP_CODE}"
        output = self.manage("shell", "--no-startup", "-c", code, database_url=self.template_url)
        for line in output.splitlines():
            if line.startswith("BENCH-TOKEN "):
                self.token = line.split(" ", 1)[1].strip()
        if not self.token:
            raise BenchError(f"the set-up printed no token:\n{output[-1000:]}")
        say(
            f"portal template database migrated and set up in {time.perf_counter() - started:.1f} s"
        )

    def fresh_database(self) -> None:
        from psycopg import sql

        self._drop(self.database)
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(self.database), sql.Identifier(self.template)
            )
        )
        self._flush_redis()

    def count_instances(self) -> int:
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as connection:
            row = connection.execute("SELECT count(*) FROM studies_instance").fetchone()
        return int(row[0]) if row else 0

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self._drop(name)
            except Exception as exc:  # report and go on: the rest must be cleaned up too
                say(f"could not drop database {name}: {exc}")
        with contextlib.suppress(Exception):
            self._flush_redis()

    # One fresh portal per measurement.

    @contextmanager
    def fresh(
        self, target: Target, method: Method, label: str
    ) -> Iterator[tuple[DimseEndpoint | StowEndpoint, Callable[[], int]]]:
        """A new database copy, spool and server process; yield the endpoint and a counter."""
        self.runs += 1
        folder = self.work / f"portal-{self.runs}-{label}"
        spool = folder / "spool"
        folder.mkdir()
        self.fresh_database()
        profile = self.profile_dir / label if self.profile_dir else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        port = free_loopback_port()
        environment = self.environment(
            database_url=self.database_url, spool=spool, fsync=target.fsync, listener_port=port
        )

        def count() -> int:
            held = self.count_instances()
            spooled = sum(1 for _ in (spool / "instances").glob("*/*.dcm"))
            if spooled != held:
                raise BenchError(f"the portal indexed {held} instances but spooled {spooled}")
            return held

        try:
            if method.is_dimse:
                command = [PYTHON, *LISTENER_ARGUMENTS.format(port=port, aet=PORTAL_AET).split()]
                if profile:
                    command = [PYTHON, "-m", "bench.ingest", "--profiled-child", str(profile),
                               "--", *command[1:]]  # fmt: skip
                with background(
                    command,
                    env=environment,
                    log=folder / "dicom_listener.log",
                    ready=lambda: c_echo_answers(port, PORTAL_AET),
                    name="manage.py dicom_listener",
                ):
                    yield DimseEndpoint(port, PORTAL_AET), count
            else:
                command = [
                    PYTHON,
                    *GUNICORN_ARGUMENTS.format(port=port, workers=self.workers).split(),
                ]
                if profile:
                    hooks = folder / "gunicorn_profile.py"
                    hooks.write_text(GUNICORN_PROFILE_HOOKS.format(profile_dir=str(profile)))
                    command += ["--config", str(hooks)]
                with background(
                    command,
                    env=environment,
                    log=folder / "gunicorn.log",
                    ready=lambda: http_answers(f"http://{LOOPBACK}:{port}/healthz"),
                    name="gunicorn portal.wsgi",
                ):
                    url = f"http://{LOOPBACK}:{port}/dicomweb/studies"
                    yield StowEndpoint(url, {"Authorization": f"Bearer {self.token}"}), count
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# --- Orthanc ------------------------------------------------------------------------------------


class OrthancTarget:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.runs = 0
        self.system: dict[str, Any] = {}
        self.dicomweb_version = ""

    @contextmanager
    def fresh(self, label: str) -> Iterator[tuple[Orthanc, Callable[[], int]]]:
        from bench.orthanc import running_orthanc

        self.runs += 1
        folder = self.work / f"orthanc-{self.runs}-{label}"
        try:
            with running_orthanc(
                folder, aet=ORTHANC_AET, allowed_scus={CALLING_AET: LOOPBACK}
            ) as orthanc:
                if not self.system:
                    self.system = orthanc.system()
                    self.dicomweb_version = orthanc.plugin_version("dicom-web")
                yield orthanc, lambda: int(orthanc.statistics()["CountInstances"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# --- One measurement ----------------------------------------------------------------------------


class Bodies:
    """STOW-RS request bodies per (study, batch), built once, outside any timing."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], list[tuple[str, bytes]]] = {}

    def get(self, files: StudyFiles, batch: int) -> list[tuple[str, bytes]]:
        key = (id(files), batch)
        if key not in self.cache:
            self.cache[key] = multipart_bodies(files.paths, batch)
        return self.cache[key]


def measure(
    endpoint: DimseEndpoint | StowEndpoint,
    count: Callable[[], int],
    method: Method,
    study: StudyFiles,
    warmup: StudyFiles,
    bodies: Bodies,
) -> float:
    """Send the warm-up study, then time the study; check that the target holds both."""
    if method.is_dimse:
        assert isinstance(endpoint, DimseEndpoint)
        if warmup.paths:
            send_storescu(endpoint, warmup)
        seconds = send_storescu(endpoint, study)
    else:
        assert isinstance(endpoint, StowEndpoint)
        if warmup.paths:
            warm_up_stow(endpoint, bodies.get(warmup, 1))
        seconds = send_stow(
            endpoint, bodies.get(study, method.batch), method.batch, len(study.paths)
        )
    held, expected = count(), len(warmup.paths) + len(study.paths)
    if held != expected:
        raise BenchError(f"the target holds {held} instances after the run, not {expected}")
    return seconds


def run_one(
    target: Target,
    method: Method,
    run: int,
    *,
    portal: Portal | None,
    orthanc: OrthancTarget | None,
    study: StudyFiles,
    warmup: StudyFiles,
    bodies: Bodies,
) -> float:
    label = f"{target.key}-{method.key}-run{run}"
    if target.product == "portal":
        assert portal is not None
        with portal.fresh(target, method, label) as (endpoint, count):
            return measure(endpoint, count, method, study, warmup, bodies)
    assert orthanc is not None
    with orthanc.fresh(label) as (server, count):
        endpoint: DimseEndpoint | StowEndpoint
        if method.is_dimse:
            endpoint = DimseEndpoint(server.dicom_port, server.aet)
        else:
            endpoint = StowEndpoint(server.dicomweb_url + "studies", {})
        return measure(endpoint, count, method, study, warmup, bodies)


# --- Report -------------------------------------------------------------------------------------


def machine_info(
    portal: Portal | None, orthanc: OrthancTarget | None, workers: int, work: Path
) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024**2:.1f} GiB"
    rows = [
        ("cores", f"{os.cpu_count()} ({cpu}), memory {memory}"),
        ("system", f"{platform.system()} {platform.release()}, work folder on {filesystem(work)}"),
        ("Python", f"{platform.python_version()} ({PYTHON})"),
    ]
    versions = []
    for package in ("Django", "pydicom", "pynetdicom", "gunicorn", "psycopg"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    rows.append(("portal", ", ".join(versions) + f"; gunicorn --workers {workers} (sync)"))
    if portal is not None:
        import psycopg

        with contextlib.suppress(Exception), psycopg.connect(portal.admin_url) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            rows.append(("PostgreSQL", str(row[0]) if row else "?"))
    if orthanc is not None and orthanc.system:
        system = orthanc.system
        rows.append(
            (
                "Orthanc",
                f"{system.get('Version')} (from /system; SQLite index, database "
                f"v{system.get('DatabaseVersion')}), DICOMweb plugin {orthanc.dicomweb_version}",
            )
        )
    storescu = subprocess.run(
        ["storescu", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    rows.append(
        (
            "client",
            f"{storescu[0].strip('$ ') if storescu else 'storescu ?'}; "
            f"requests {importlib.metadata.version('requests')}",
        )
    )
    return rows


def cpu_busy_fraction(seconds: float = 2.0) -> float:
    """How busy all CPUs are over `seconds`, from /proc/stat (0 when it cannot be read)."""

    def snapshot() -> tuple[int, int]:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(values), values[3] + values[4]  # all, idle + iowait

    try:
        total_before, idle_before = snapshot()
        time.sleep(seconds)
        total_after, idle_after = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle_after - idle_before) / max(total_after - total_before, 1)


def filesystem(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fields[2]
    return f"{kind} ({best})"


def format_table(
    results: dict[tuple[str, str], list[float]],
    methods: Sequence[Method],
    targets: Sequence[Target],
    instances: int,
    total_bytes: int,
) -> str:
    def rate(target: Target, method: Method) -> tuple[float, float] | None:
        times = results.get((target.key, method.key))
        if not times:
            return None
        median = statistics.median(times)
        return instances / median, total_bytes / MB / median

    portals = [target for target in targets if target.product == "portal"]
    orthanc = next((target for target in targets if target.product == "orthanc"), None)
    header = [
        "way in",
        "portal inst/s",
        "Orthanc inst/s",
        "portal/Orthanc",
        "portal MB/s",
        "Orthanc MB/s",
    ]
    lines = [header]
    for portal in portals or [None]:
        for method in methods:
            ours = rate(portal, method) if portal else None
            theirs = rate(orthanc, method) if orthanc else None
            label = method.label if portal in (None, PORTAL) else f"{method.label} [{portal.label}]"
            lines.append(
                [
                    label,
                    f"{ours[0]:.1f}" if ours else "-",
                    f"{theirs[0]:.1f}" if theirs else "-",
                    f"{ours[0] / theirs[0]:.2f}" if ours and theirs else "-",
                    f"{ours[1]:.1f}" if ours else "-",
                    f"{theirs[1]:.1f}" if theirs else "-",
                ]
            )
    widths = [max(len(row[column]) for row in lines) for column in range(len(header))]
    out = []
    for index, row in enumerate(lines):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("| " + " | ".join(cells) + " |")
        if index == 0:
            out.append(
                "|"
                + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
                + "|"
            )
    return "\n".join(out)


def format_runs(results: dict[tuple[str, str], list[float]], instances: int) -> str:
    lines = []
    for (target, method), times in results.items():
        seconds = ", ".join(f"{value:.2f}" for value in times)
        rates = ", ".join(f"{instances / value:.0f}" for value in times)
        lines.append(f"  {target:15} {method:7} seconds: {seconds:24} inst/s: {rates}")
    return "\n".join(lines)


# --- Profiling ----------------------------------------------------------------------------------


def run_profiled_child(out_dir: Path, argv: list[str]) -> int:
    """Run a Python script (manage.py ...) with every thread under cProfile.

    pynetdicom serves each association in a thread of its own, which cProfile alone (main
    thread only) would miss. Each thread's profile is written when it ends; the main thread's
    when the process is stopped (SIGTERM becomes SystemExit here).
    """
    import runpy

    out_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled_bootstrap(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            original(thread)
        finally:
            profile.disable()
            profile.dump_stats(out_dir / f"thread-{pid}-{threading.get_ident()}-{id(thread)}.prof")

    threading.Thread._bootstrap_inner = profiled_bootstrap  # type: ignore[attr-defined]

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    main = cProfile.Profile()
    sys.argv = argv
    main.enable()
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit:
        pass
    finally:
        main.disable()
        main.dump_stats(out_dir / f"main-{pid}.prof")
    return 0


def summarise_profile(folder: Path, *, top: int = 30) -> str:
    """The portal's own functions by cumulative time, then everything by own time."""
    files = sorted(str(path) for path in folder.glob("*.prof"))
    if not files:
        return f"(no profile in {folder})"
    text = io.StringIO()
    stats = pstats.Stats(*files, stream=text)
    text.write(f"== {folder.name}: the portal's code by cumulative time (wall clock) ==\n")
    project_code = f"^{re.escape(str(ROOT))}/(?!\\.venv/)"
    stats.sort_stats("cumulative").print_stats(project_code, top)
    # The listener's reactor threads and gunicorn's idle workers mostly wait: sleep, lock
    # acquire and poll at the top of this list are idle time, not work.
    text.write(f"== {folder.name}: everything by own time (waiting included) ==\n")
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return text.getvalue()


# --- Main ---------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def preflight(
    targets: Sequence[Target], methods: Sequence[Method], database_url: str, redis_url: str
) -> None:
    missing = []
    if any(method.is_dimse for method in methods):
        missing += [tool for tool in ("storescu", "echoscu") if not shutil.which(tool)]
        if missing:
            missing = [f"{', '.join(missing)} (apt-get install dcmtk)"]
    if any(target.product == "orthanc" for target in targets):
        from bench.orthanc import ORTHANC_BINARY, OrthancError, find_dicomweb_plugin

        if not ORTHANC_BINARY.is_file():
            missing.append(f"{ORTHANC_BINARY} (apt-get install orthanc)")
        if any(not method.is_dimse for method in methods):
            try:
                find_dicomweb_plugin()
            except OrthancError as exc:
                missing.append(str(exc))
    if any(target.product == "portal" for target in targets):
        import psycopg
        import redis

        try:
            psycopg.connect(with_path(database_url, "/postgres"), connect_timeout=3).close()
        except psycopg.Error as exc:
            missing.append(f"PostgreSQL at {database_url} ({str(exc).strip()})")
        try:
            redis.Redis.from_url(redis_url, socket_timeout=3).ping()
        except redis.RedisError as exc:
            missing.append(f"Redis at {redis_url} ({exc})")
    if missing:
        raise BenchError(
            "missing: " + "; ".join(missing) + ". Run the benchmark under the stack script, which "
            "starts PostgreSQL and Redis when they are not running: "
            ".venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.ingest"
        )


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Ingest rate of the portal and of Orthanc, same machine, same run, same data.",
    )
    parser.add_argument("--instances", type=int, default=300, help="instances in the study")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each image")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="instances of the warm-up study sent before the clock starts",
    )
    parser.add_argument(
        "--stow-batches",
        default="1,10",
        help="instances per STOW-RS request, comma-separated (one row each)",
    )
    parser.add_argument("--no-dimse", action="store_true", help="skip the storescu rows")
    parser.add_argument(
        "--targets", default="portal,orthanc", help="portal, orthanc, or both (default)"
    )
    parser.add_argument(
        "--with-fsync-off",
        action="store_true",
        help="add portal rows with INGEST_SPOOL_FSYNC=false",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * cores + 1,
        help="gunicorn workers (default 2 x cores + 1)",
    )
    parser.add_argument(
        "--database",
        default="portal_bench",
        help="the database to create (and drop); a template beside it too",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile the portal's processes with cProfile into DIR",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1 or args.warmup < 0 or args.rows < 16:
        parser.error("--instances and --runs at least 1, --warmup at least 0, --rows at least 16")
    try:
        args.batches = [int(value) for value in args.stow_batches.split(",") if value.strip()]
    except ValueError:
        parser.error("--stow-batches is a comma-separated list of whole numbers")
    if any(batch < 1 for batch in args.batches):
        parser.error("--stow-batches must be at least 1")
    args.target_keys = {value.strip() for value in args.targets.split(",") if value.strip()}
    if not args.target_keys or not args.target_keys <= {"portal", "orthanc"}:
        parser.error("--targets is portal, orthanc or portal,orthanc")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--profiled-child"]:
        return run_profiled_child(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    args = parse_arguments(argv)
    methods = methods_for(args.batches, dimse=not args.no_dimse)
    targets: list[Target] = []
    if "portal" in args.target_keys:
        targets.append(PORTAL)
        if args.with_fsync_off:
            targets.append(PORTAL_NO_FSYNC)
    if "orthanc" in args.target_keys:
        targets.append(ORTHANC)
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        preflight(targets, methods, database_url, redis_url)
        return benchmark(args, methods, targets, database_url, redis_url)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        say(f"interrupted ({str(exc) or 'SIGINT'}); everything started was stopped")
        return 130


def benchmark(
    args: argparse.Namespace,
    methods: list[Method],
    targets: list[Target],
    database_url: str,
    redis_url: str,
) -> int:
    with ExitStack() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        profile_dir = args.profile.resolve() if args.profile else None
        started = time.perf_counter()
        study, warmup = generate_studies(
            work / "data", instances=args.instances, rows=args.rows, warmup=args.warmup
        )
        total_bytes = study.total_bytes
        say(
            f"generated {len(study.paths)} CT instances of {args.rows}x{args.rows} "
            f"({total_bytes / MB:.1f} MB) and a warm-up study of {len(warmup.paths)} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        portal = None
        if any(target.product == "portal" for target in targets):
            portal = Portal(
                work=work,
                database_url=database_url,
                redis_url=redis_url,
                database=args.database,
                workers=args.workers,
                profile_dir=profile_dir,
            )
            cleanup.callback(portal.cleanup)
            portal.prepare()
        orthanc = OrthancTarget(work) if any(t.product == "orthanc" for t in targets) else None
        if any(not method.is_dimse for method in methods) and args.warmup - 1 < args.workers:
            say(
                f"--warmup {args.warmup} sends {args.warmup - 1} requests at once, fewer than the "
                f"{args.workers} gunicorn workers: some may start cold (give --warmup "
                f"{args.workers + 1} or more)"
            )
        bodies = Bodies()
        busy = args.cpu_busy = cpu_busy_fraction()
        if busy > BUSY_WARNING:
            say(
                f"the CPUs are {busy:.0%} busy before the benchmark starts: something else is "
                "running, and the numbers will be low and noisy"
            )
        results: dict[tuple[str, str], list[float]] = {}
        # Runs are interleaved (run 1 of every cell, then run 2, ...) so that a slow spell of
        # the machine hits every cell alike rather than one.
        for run in range(1, args.runs + 1):
            for method in methods:
                for target in targets:
                    try:
                        seconds = run_one(
                            target,
                            method,
                            run,
                            portal=portal,
                            orthanc=orthanc,
                            study=study,
                            warmup=warmup,
                            bodies=bodies,
                        )
                    except BenchError as exc:
                        raise BenchError(
                            f"{target.label}, {method.label}, run {run}: {exc}"
                        ) from exc
                    results.setdefault((target.key, method.key), []).append(seconds)
                    say(
                        f"run {run}/{args.runs} {target.label:34} {method.label:40} "
                        f"{seconds:7.2f} s  {len(study.paths) / seconds:7.1f} inst/s"
                    )
        report(args, methods, targets, results, portal, orthanc, study, total_bytes, work)
    return 0


def report(
    args: argparse.Namespace,
    methods: list[Method],
    targets: list[Target],
    results: dict[tuple[str, str], list[float]],
    portal: Portal | None,
    orthanc: OrthancTarget | None,
    study: StudyFiles,
    total_bytes: int,
    work: Path,
) -> None:
    instances = len(study.paths)
    print()
    print(
        f"Ingest: {instances} CT instances of {args.rows}x{args.rows}, "
        f"{total_bytes / MB:.1f} MB (MB = 10^6 bytes), explicit VR little endian; "
        f"median of {args.runs} run(s); each target fresh and empty, warmed up with "
        f"{args.warmup} instances of another study; one client at a time."
    )
    if args.profile:
        print("PROFILED RUN: the portal ran under cProfile; its numbers are not comparable.")
    print()
    print(format_table(results, methods, targets, instances, total_bytes))
    print()
    print("Every run:")
    print(format_runs(results, instances))
    print()
    print("Machine:")
    for name, value in machine_info(portal, orthanc, args.workers, work):
        print(f"  {name:11} {value}")
    quiet = "quiet" if args.cpu_busy <= BUSY_WARNING else "NOT QUIET: numbers are noisy"
    print(f"  load        CPUs {args.cpu_busy:.0%} busy just before the first run ({quiet})")
    print(
        "  settings    portal: INGEST_SPOOL_FSYNC=true unless labelled, PostgreSQL as configured "
        "(fsync and synchronous_commit as the server has them);\n"
        "              Orthanc: defaults (no compression, SyncStorageArea, SQLite index), "
        "TCP_NODELAY=1"
    )
    if args.profile:
        summaries = [
            summarise_profile(folder)
            for folder in sorted(args.profile.iterdir())
            if folder.is_dir()
        ]
        text = "\n".join(summaries)
        (args.profile / "summary.txt").write_text(text)
        print()
        print(text)
        print(f"Profiles (.prof, open with pstats or snakeviz) and summary.txt in {args.profile}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "instances": instances,
                    "rows": args.rows,
                    "bytes": total_bytes,
                    "runs": args.runs,
                    "warmup": args.warmup,
                    "workers": args.workers,
                    "cpu_busy_before": round(args.cpu_busy, 3),
                    "seconds": {f"{t}/{m}": times for (t, m), times in results.items()},
                    "machine": dict(machine_info(portal, orthanc, args.workers, work)),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
