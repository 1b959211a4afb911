"""Render benchmark: server time of the first frame of a 512x512 CT slice, from the encrypted
store, against Orthanc rendering the same instances.

One command (PostgreSQL used or started, SeaweedFS started fresh, by the stack script):

    .venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.render

What happens, in order (bench/README.md explains how to read the result):

1. A synthetic CT study (`studies.synthetic`, no PHI) of 512x512 slices is written to a
   temporary folder: `--warmup` slices for warming up, then `--requests` slices for each
   endpoint measured, so that no timed request ever asks for an instance that anything asked
   for before ("cold": nothing of it in any cache of either server).
2. A database of its own (`--database`, default `bench_render`) is created beside the one
   DATABASE_URL names (never touched), migrated, and the study ingested and published into
   the S3 store in a child process, the way every way in ends (`study_ingest_instance`, then
   `publish_spooled`). A patient account is linked to the study's patient record, and
   signed in (a session row, as after a real sign-in).
3. The same files are stored into a throwaway Orthanc (bench/orthanc.py, Debian's package, with
   its DICOMweb plugin), its storage cache switched off (`MaximumStorageCacheSize: 0`) so that
   it too reads each instance from disk.
4. `gunicorn portal.wsgi` (sync workers, as in production) serves the portal on loopback.
   After a warm-up of every endpoint, one client asks for the frames one at a time, the
   endpoints interleaved request by request (so a slow spell of the machine hits all alike):
   the portal's viewer frame as JPEG (its default) and as PNG, Orthanc's `/instances/{id}/preview`
   (PNG, and JPEG by `Accept`), Orthanc's `/instances/{id}/frames/0/rendered` and the DICOMweb
   plugin's `.../frames/1/rendered` when they answer. The time is the client's, from sending
   the request to the last byte of the picture, over loopback.
5. Then a child process asks for the same kind of frames through Django's test client (the
   full view with its middleware, no HTTP), with timers around each step of the read path
   (the read, the store's GETs, decryption, the audit row, parsing, decoding, the window,
   encoding) to say where the time goes.

Everything it starts listens on 127.0.0.1 only and is stopped at the end (process groups), the
database dropped, the objects it uploaded deleted and its two Redis databases flushed, also on
Ctrl-C or an error. Exit status 1 when the portal's JPEG p95 is over `--budget-ms`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib.metadata
import io
import json
import math
import os
import platform
import pstats
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench.ingest import (
    GUNICORN_ARGUMENTS,
    LOOPBACK,
    PORTAL_VARIABLE_PREFIXES,
    BenchError,
    background,
    cpu_busy_fraction,
    free_loopback_port,
    http_answers,
    say,
    with_path,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ROWS = 512
FACILITY_NAME = "Render benchmark (synthetic)"
PATIENT_EMAIL = "render-bench@example.invalid"
CALLING_AET = "BENCHSCU"
BUSY_WARNING = 0.15
CHILD_TIMEOUT_SECONDS = 1800
REQUEST_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    side: str  # portal | orthanc | inprocess


ENDPOINTS = [
    Endpoint("portal-jpeg", "portal, gunicorn: viewer frame (JPEG, the default)", "portal"),
    Endpoint("portal-png", "portal, gunicorn: viewer frame, `format=png`", "portal"),
    Endpoint("orthanc-preview", "Orthanc `/instances/{id}/preview` (PNG)", "orthanc"),
    Endpoint(
        "orthanc-preview-jpeg",
        "Orthanc `/instances/{id}/preview`, `Accept: image/jpeg`",
        "orthanc",
    ),
    Endpoint("orthanc-rendered", "Orthanc `/instances/{id}/frames/0/rendered`", "orthanc"),
    Endpoint("dicomweb-rendered", "Orthanc DICOMweb `.../frames/1/rendered`", "orthanc"),
    Endpoint(
        "portal-inprocess", "portal, Django test client in-process (JPEG, no HTTP)", "inprocess"
    ),
]


@dataclass
class Slice:
    path: Path
    sop_uid: str
    study_uid: str
    series_uid: str
    portal_url: str = ""
    orthanc_id: str = ""


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    content_type: str = ""
    urls: list[str] = field(default_factory=list)
    # The server's own time (gunicorn's access log), for the portal's rows.
    server_seconds: list[float] = field(default_factory=list)


# --- Statistics --------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


# --- The portal: database, set-up child, gunicorn ----------------------------------------------


class PortalSide:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        database_url = os.environ["DATABASE_URL"]
        if not urlsplit(database_url).scheme.startswith("postgres"):
            raise BenchError(f"DATABASE_URL must name PostgreSQL, not {database_url}")
        if urlsplit(database_url).path.lstrip("/") == args.database:
            raise BenchError(f"DATABASE_URL names {args.database}; the benchmark drops it")
        self.args = args
        self.work = work
        self.database = args.database
        self.admin_url = with_path(database_url, "/postgres")
        self.database_url = with_path(database_url, f"/{args.database}")
        redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        broker_db, cache_db = args.redis_dbs
        self.broker_url = with_path(redis_url, f"/{broker_db}")
        self.cache_url = with_path(redis_url, f"/{cache_db}")
        self.secret_key = secrets.token_urlsafe(50)
        self.created = False
        self.access_log = work / "gunicorn-access.log"

    def server_seconds(self) -> dict[str, float]:
        """The worker's time of each request, by path and query, from gunicorn's access log."""
        times = {}
        with contextlib.suppress(OSError):
            for line in self.access_log.read_text().splitlines():
                parts = line.split(" ")
                if len(parts) == 4 and parts[3].isdigit():
                    path, query = parts[0], parts[1]
                    times[path + ("?" + query if query else "")] = int(parts[3]) / 1e6
        return times

    def environment(self, *, with_redis: bool = True) -> dict[str, str]:
        """The stack's S3 store and keyring with this benchmark's database; nothing else of the
        caller's portal settings leaks in. Without Redis, tasks run in-process (set-up)."""
        kept = {"PORTAL_KEYRING"}
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(PORTAL_VARIABLE_PREFIXES)
            or name in kept
            or name.startswith("S3_")
        }
        var_dir = self.work / "portal-var"
        var_dir.mkdir(exist_ok=True)
        environment.update(
            {
                "DJANGO_SETTINGS_MODULE": "portal.settings",
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": self.secret_key,
                "DJANGO_ALLOWED_HOSTS": f"{LOOPBACK},localhost,testserver",
                "PORTAL_HTTPS": "false",
                "PORTAL_VAR_DIR": str(var_dir),
                "DATABASE_URL": self.database_url,
                "INGEST_SPOOL_DIR": str(self.work / "spool"),
            }
        )
        if with_redis:
            environment.update({"REDIS_URL": self.broker_url, "CACHE_URL": self.cache_url})
        return environment

    def _admin(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)

    def _drop(self) -> None:
        from psycopg import sql

        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database))
        )

    def _flush_redis(self) -> None:
        import redis

        for url in (self.broker_url, self.cache_url):
            client = redis.Redis.from_url(url, socket_timeout=5)
            try:
                client.flushdb()
            finally:
                client.close()

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def prepare(self, data: Path) -> dict[str, Any]:
        """Create and migrate the database, then ingest, publish and sign in (a child)."""
        from psycopg import sql

        self._drop()
        self.created = True
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self._flush_redis()
        environment = self.environment(with_redis=False)
        run_checked([PYTHON, "manage.py", "migrate", "--no-input", "-v0"], environment, "migrate")
        return run_child(["--child-setup", str(data)], environment, "the set-up child")

    def object_names(self) -> list[str]:
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as connection:
            rows = connection.execute("SELECT name FROM sharing_storedobject").fetchall()
        return [str(row[0]) for row in rows]

    @contextlib.contextmanager
    def gunicorn(self) -> Iterator[str]:
        port = free_loopback_port()
        command = [
            PYTHON,
            *GUNICORN_ARGUMENTS.format(port=port, workers=self.args.workers).split(),
            # The worker's own time per request (microseconds), beside the client's.
            "--access-logfile",
            str(self.access_log),
            "--access-logformat",
            "%(U)s %(q)s %(s)s %(D)s",
        ]
        with background(
            command,
            env=self.environment(),
            log=self.work / "gunicorn.log",
            ready=lambda: http_answers(f"http://{LOOPBACK}:{port}/healthz"),
            name="gunicorn portal.wsgi",
        ):
            yield f"http://{LOOPBACK}:{port}"

    def cleanup(self) -> None:
        if not self.created:
            return
        with contextlib.suppress(Exception):
            from bench.publish import delete_objects, s3_client

            delete_objects(s3_client(), self.object_names())
        try:
            self._drop()
        except Exception as exc:  # report and go on: the rest must be cleaned up too
            say(f"could not drop database {self.database}: {exc}")
        with contextlib.suppress(Exception):
            self._flush_redis()


def run_checked(command: list[str], environment: dict[str, str], what: str) -> str:
    finished = subprocess.run(
        command,
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    if finished.returncode != 0:
        raise BenchError(
            f"{what} failed ({finished.returncode}):\n"
            f"{finished.stdout[-1500:]}{finished.stderr[-3000:]}"
        )
    return finished.stdout


def run_child(arguments: list[str], environment: dict[str, str], what: str) -> dict[str, Any]:
    output = run_checked([PYTHON, "-m", "bench.render", *arguments], environment, what)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def child_setup(data: Path) -> dict[str, Any]:
    """Ingest every file as one DIMSE transfer, publish it all, link and sign in a patient."""
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client
    from django.urls import reverse

    from accounts.models import User
    from audit.codes import ActorKind
    from facilities.models import Facility
    from sharing.services import publish_spooled
    from studies.models import Instance, Patient, Study
    from studies.services import Channel, IngestOutcome, IngestSource, study_ingest_instance
    from studies.spool import get_spool

    facility = Facility.objects.create(
        name=FACILITY_NAME, kind=Facility.Kind.ORIGINATING, default_issuer_of_patient_id="BENCH"
    )
    source = IngestSource(
        facility, Channel.DIMSE, ActorKind.DICOM_NODE, CALLING_AET, address=LOOPBACK
    )
    spool = get_spool()
    for path in sorted(data.glob("*.dcm")):
        with path.open("rb") as file:
            incoming = spool.receive(file)
        result = study_ingest_instance(path=incoming, source=source, spool=spool)
        if result.outcome is not IngestOutcome.STORED:
            raise SystemExit(f"ingest of {path.name}: {result.outcome} {result.message}")
    # Tasks ran in-process (no broker): each ingest published what waited. Anything left over
    # (a batch boundary) is published here.
    while publish_spooled(settings.PORTAL_NODE).published:
        pass
    waiting = Instance.objects.exclude(state=Instance.State.PUBLISHED).count()
    study = Study.objects.get()
    if waiting or study.state != Study.State.AVAILABLE or study.patient_id is None:
        raise SystemExit(f"not published: {waiting} waiting, study {study.state}")
    user = User.objects.create_user(PATIENT_EMAIL)
    Patient.objects.filter(pk=study.patient_id).update(account=user)
    client = Client()
    client.force_login(user)
    urls = {}
    for row in Instance.objects.filter(study=study).values(
        "sop_instance_uid", "public_id", "series__public_id"
    ):
        urls[row["sop_instance_uid"]] = reverse(
            "viewer:frame",
            kwargs={
                "study_id": study.public_id,
                "series_id": row["series__public_id"],
                "instance_id": row["public_id"],
                "frame": 1,
            },
        )
    return {
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "session": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "urls": urls,
    }


# --- In-process timing ----------------------------------------------------------------------------

STEPS = [
    ("middleware, session, view, access decision, look-ups", "rest"),
    ("read: object and key look-up, key unwrap", "lookup"),
    ("read: audit row (hash chain)", "audit"),
    ("read: S3 GETs (header, then body) until headers", "s3"),
    ("read: body transfer + AES-GCM decryption", "decrypt"),
    ("render: parse (dcmread)", "parse"),
    ("render: decode pixel data", "decode"),
    ("render: modality LUT + window (lookup table)", "window"),
    ("render: JPEG encode", "encode"),
]


class Timers:
    """Wall time inside wrapped functions, by label, reset per request."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        spent = self.seconds

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


def child_inprocess(spec_path: Path) -> dict[str, Any]:
    """GET each URL once with Django's test client, timing the steps of the read path."""
    import django

    django.setup()
    from django.db import connection
    from django.test import Client

    import sharing.frames
    import sharing.services
    import studies.rendering
    from accounts.models import User
    from sharing.store import ObjectStore

    spec = json.loads(spec_path.read_text())
    client = Client()
    client.force_login(User.objects.get(email=PATIENT_EMAIL))

    def get(url: str) -> tuple[int, str, int]:
        response = client.get(url)
        return response.status_code, response["Content-Type"], len(response.content)

    for url in spec["warmup"]:
        get(url)
    timers = Timers()
    timers.wrap(sharing.frames, "_plaintext", "plaintext")
    timers.wrap(sharing.frames, "_chunks", "chunks")
    timers.wrap(sharing.frames, "render_frame", "render")
    timers.wrap(sharing.services, "audit_record", "audit")
    timers.wrap(ObjectStore, "_s3_get", "s3")
    timers.wrap(studies.rendering, "_read", "parse")
    timers.wrap(studies.rendering, "pixel_array", "decode")
    timers.wrap(studies.rendering, "_to_image", "window")
    queries = [0]

    def count_queries(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[0] += 1
        return execute(sql, params, many, context)

    results: dict[str, Any] = {"seconds": [], "sizes": [], "steps": [], "queries": []}
    profiler = cProfile.Profile() if spec.get("profile") else None
    if profiler is not None:
        profiler.enable()
    with connection.execute_wrapper(count_queries):
        for url in spec["urls"]:
            timers.take()
            queries[0] = 0
            started = time.perf_counter()
            status, content_type, size = get(url)
            seconds = time.perf_counter() - started
            if status != 200 or content_type != "image/jpeg":
                raise SystemExit(f"in-process {url}: {status} {content_type}")
            spent = timers.take()
            plaintext, chunks, render = (
                spent.get(k, 0.0) for k in ("plaintext", "chunks", "render")
            )
            audit, s3 = spent.get("audit", 0.0), spent.get("s3", 0.0)
            parse, decode, window = (spent.get(k, 0.0) for k in ("parse", "decode", "window"))
            results["seconds"].append(seconds)
            results["sizes"].append(size)
            results["queries"].append(queries[0])
            results["steps"].append(
                {
                    "rest": seconds - plaintext - render,
                    "lookup": chunks - audit,
                    "audit": audit,
                    "s3": s3,
                    "decrypt": plaintext - chunks - s3,
                    "parse": parse,
                    "decode": decode,
                    "window": window,
                    "encode": render - parse - decode - window,
                }
            )
    if profiler is not None:
        profiler.disable()
        output = io.StringIO()
        stats = pstats.Stats(profiler, stream=output)
        stats.sort_stats("cumulative").print_stats(spec["profile"])
        stats.sort_stats("tottime").print_stats(spec["profile"])
        results["profile"] = output.getvalue()
    return results


# --- Orthanc -------------------------------------------------------------------------------------


def orthanc_store(orthanc: Any, slices: list[Slice]) -> None:
    for one in slices:
        request = urllib.request.Request(  # noqa: S310 (loopback, our own Orthanc)
            orthanc.url + "/instances",
            data=one.path.read_bytes(),
            method="POST",
            headers={"Content-Type": "application/dicom"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            answer = json.load(response)
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise BenchError(f"Orthanc refused {one.path.name}: {answer}")
        one.orthanc_id = str(answer["ID"])


# --- Measuring ------------------------------------------------------------------------------------


@dataclass
class Target:
    endpoint: Endpoint
    url_of: Callable[[Slice], str]
    headers: dict[str, str] = field(default_factory=dict)


def fetch(session: Any, target: Target, one: Slice) -> tuple[float, int, str, bytes]:
    started = time.perf_counter()
    response = session.get(
        target.url_of(one), headers=target.headers, timeout=REQUEST_TIMEOUT_SECONDS
    )
    content = response.content
    seconds = time.perf_counter() - started
    return seconds, response.status_code, response.headers.get("Content-Type", ""), content


def check_picture(target: Target, status: int, content_type: str, content: bytes) -> None:
    from PIL import Image

    if status != 200 or not content_type.startswith("image/"):
        raise BenchError(f"{target.endpoint.key}: {status} {content_type} {content[:200]!r}")
    with Image.open(io.BytesIO(content)) as image:
        if image.size != (ROWS, ROWS):
            raise BenchError(f"{target.endpoint.key}: a picture of {image.size}")


def answers(session: Any, target: Target, one: Slice) -> bool:
    """Whether an optional endpoint exists here (an older Orthanc or plugin may lack it)."""
    try:
        _, status, content_type, _ = fetch(session, target, one)
    except Exception:
        return False
    return status == 200 and content_type.startswith("image/")


def warm_up(session_factory: Callable[[], Any], targets: list[Target], slices: list[Slice]) -> None:
    """Every endpoint answers each warm-up slice, from two clients at once so that every
    gunicorn worker has loaded the site (a worker's first request imports the views)."""

    def run(part: list[Slice]) -> None:
        session = session_factory()
        for one in part:
            for target in targets:
                fetch(session, target, one)

    threads = [threading.Thread(target=run, args=(slices[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(
    session_factory: Callable[[], Any], targets: list[Target], parts: dict[str, list[Slice]]
) -> dict[str, Samples]:
    """One request at a time, endpoints interleaved, each rotating who goes first."""
    session = session_factory()
    samples = {target.endpoint.key: Samples() for target in targets}
    rounds = min(len(parts[target.endpoint.key]) for target in targets)
    for index in range(rounds):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            one = parts[target.endpoint.key][index]
            seconds, status, content_type, content = fetch(session, target, one)
            check_picture(target, status, content_type, content)
            sample = samples[target.endpoint.key]
            sample.seconds.append(seconds)
            sample.sizes.append(len(content))
            sample.content_type = content_type.split(";")[0]
            sample.urls.append(target.url_of(one))
    return samples


# --- Report ------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = ["-" * (widths[0] + 2), *("-" * (width + 1) + ":" for width in widths[1:])]
    return [line(headers), "|" + "|".join(rules) + "|", *(line(row) for row in rows)]


def report(
    samples: dict[str, Samples],
    missing: list[str],
    inprocess: dict[str, Any] | None,
    machine: list[tuple[str, str]],
    busy: float,
    args: argparse.Namespace,
) -> tuple[str, bool]:
    lines = [
        f"First frame of a {ROWS}x{ROWS} CT slice, 16-bit: one request at a time, each for a slice"
        f" no request asked for before; {args.requests} requests per row (ms, client-side, to the"
        " last byte, over loopback)",
        "",
    ]
    rows = []
    for endpoint in ENDPOINTS:
        sample = samples.get(endpoint.key)
        if sample is None or not sample.seconds:
            continue
        milliseconds = [s * 1000 for s in sample.seconds]
        server = [s * 1000 for s in sample.server_seconds]
        rows.append(
            [
                endpoint.label,
                sample.content_type.removeprefix("image/"),
                f"{statistics.median(milliseconds):.1f}",
                f"{percentile(milliseconds, 0.95):.1f}",
                f"{max(milliseconds):.1f}",
                f"{statistics.median(server):.1f}" if server else "",
                f"{percentile(server, 0.95):.1f}" if server else "",
                f"{statistics.median(sample.sizes) / 1000:.0f}",
            ]
        )
    headers = ["what", "format", "p50", "p95", "max", "worker p50", "worker p95", "kB"]
    lines += markdown_table(headers, rows)
    for key in missing:
        label = next(e.label for e in ENDPOINTS if e.key == key)
        lines.append(f"(not measured: {label} did not answer with a picture here)")
    portal = samples["portal-jpeg"].seconds
    p95 = percentile([s * 1000 for s in portal], 0.95)
    met = p95 < args.budget_ms
    lines.append("")
    lines.append(
        f"Goal: the portal's JPEG frame p95 under {args.budget_ms:.0f} ms:"
        f" {p95:.1f} ms, {'met' if met else 'NOT met'}."
    )
    if inprocess:
        count = len(inprocess["seconds"])
        lines.append("")
        lines.append(
            f"Where the time goes: the Django test client in-process, {count} requests (median"
            f" ms per request; {statistics.median(inprocess['queries']):.0f} SQL queries each):"
        )
        lines.append("")
        step_rows = []
        total = statistics.median(inprocess["seconds"]) * 1000
        for label, key in STEPS:
            value = statistics.median(step[key] for step in inprocess["steps"]) * 1000
            step_rows.append([label, f"{value:.2f}", f"{value / total:.0%}"])
        step_rows.append(["the whole request (median)", f"{total:.2f}", ""])
        lines += markdown_table(["step", "ms", "share"], step_rows)
    lines.append("")
    lines.append("Machine:")
    for name, value in machine:
        lines.append(f"  {name:12} {value}")
    verdict = (
        "quiet" if busy < BUSY_WARNING else "NOT QUIET: the numbers are worse than they could be"
    )
    lines.append(f"  {'before':12} CPUs {busy:.0%} busy with other work ({verdict})")
    return "\n".join(lines), met


def machine_info(
    portal: PortalSide, orthanc_system: dict[str, Any], dicomweb: str
) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in ("Django", "pydicom", "numpy", "pillow", "cryptography", "boto3", "gunicorn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    return [
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("packages", ", ".join(versions)),
        ("PostgreSQL", portal.server_version()),
        ("Orthanc", f"{orthanc_system.get('Version', '?')}, DICOMweb plugin {dicomweb}"),
        ("gunicorn", f"{portal.args.workers} sync workers"),
    ]


# --- Main --------------------------------------------------------------------------------------


def describe(paths: list[Path]) -> list[Slice]:
    from pydicom import dcmread

    slices = []
    for path in paths:
        header = dcmread(path, stop_before_pixels=True)
        uids = (header.SOPInstanceUID, header.StudyInstanceUID, header.SeriesInstanceUID)
        slices.append(Slice(path, *(str(uid) for uid in uids)))
    return slices


def benchmark(args: argparse.Namespace) -> int:
    import requests

    from bench.orthanc import running_orthanc
    from studies.synthetic import SyntheticPatient, generate_study

    busy = cpu_busy_fraction()
    timed_endpoints = [e for e in ENDPOINTS if e.key in args.endpoint_keys]
    per_endpoint = args.requests
    total = args.warmup + per_endpoint * len(timed_endpoints)
    with tempfile.TemporaryDirectory(prefix="bench-render-") as folder:
        work = Path(folder)
        portal = PortalSide(args, work)
        try:
            say(f"generating a {total}-slice CT study of {ROWS}x{ROWS}...")
            paths = generate_study(
                work / "data",
                instances=total,
                rows=ROWS,
                patient=SyntheticPatient(patient_id="SYN-RENDER", name="SYNTHETIC^RENDER"),
                study_date=date.today().strftime("%Y%m%d"),  # noqa: DTZ011 (a study date)
            )
            slices = describe(sorted(paths))
            say(f"creating {args.database}, ingesting and publishing {total} instances...")
            started = time.perf_counter()
            setup = portal.prepare(work / "data")
            say(f"  done in {time.perf_counter() - started:.0f} s")
            for one in slices:
                one.portal_url = setup["urls"][one.sop_uid]
            warmup, timed = slices[: args.warmup], slices[args.warmup :]
            parts = {
                endpoint.key: timed[i * per_endpoint : (i + 1) * per_endpoint]
                for i, endpoint in enumerate(timed_endpoints)
            }
            with running_orthanc(
                work / "orthanc", extra_config={"MaximumStorageCacheSize": 0}
            ) as orthanc:
                say("storing the same files into Orthanc...")
                orthanc_store(orthanc, slices)
                orthanc_system = orthanc.system()
                dicomweb_version = orthanc.plugin_version("dicom-web")
                with portal.gunicorn() as base_url:
                    cookie = {setup["cookie_name"]: setup["session"]}

                    def session_factory() -> Any:
                        session = requests.Session()
                        session.cookies.update(cookie)
                        return session

                    dicomweb = orthanc.dicomweb_url
                    every = {
                        "portal-jpeg": Target(ENDPOINTS[0], lambda s: base_url + s.portal_url),
                        "portal-png": Target(
                            ENDPOINTS[1], lambda s: base_url + s.portal_url + "?format=png"
                        ),
                        "orthanc-preview": Target(
                            ENDPOINTS[2],
                            lambda s: f"{orthanc.url}/instances/{s.orthanc_id}/preview",
                        ),
                        "orthanc-preview-jpeg": Target(
                            ENDPOINTS[3],
                            lambda s: f"{orthanc.url}/instances/{s.orthanc_id}/preview",
                            {"Accept": "image/jpeg"},
                        ),
                        "orthanc-rendered": Target(
                            ENDPOINTS[4],
                            lambda s: f"{orthanc.url}/instances/{s.orthanc_id}/frames/0/rendered",
                        ),
                        "dicomweb-rendered": Target(
                            ENDPOINTS[5],
                            lambda s: (
                                f"{dicomweb}studies/{s.study_uid}/series/{s.series_uid}"
                                f"/instances/{s.sop_uid}/frames/1/rendered"
                            ),
                        ),
                    }
                    probe = session_factory()
                    targets, missing = [], []
                    for endpoint in timed_endpoints:
                        target = every.get(endpoint.key)
                        if target is None:
                            continue
                        if answers(probe, target, warmup[0]):
                            targets.append(target)
                        else:
                            missing.append(endpoint.key)
                    if not any(t.endpoint.key == "portal-jpeg" for t in targets):
                        log = (work / "gunicorn.log").read_text()[-3000:]
                        raise BenchError(f"the portal's frame did not answer:\n{log}")
                    say(f"warming up {len(targets)} endpoints...")
                    warm_up(session_factory, targets, warmup)
                    say(f"measuring {per_endpoint} requests per endpoint, interleaved...")
                    samples = measure(session_factory, targets, parts)
            # gunicorn has stopped: its access log is complete.
            served = portal.server_seconds()
            for sample in samples.values():
                for url in sample.urls:
                    parts_of_url = urlsplit(url)
                    key = parts_of_url.path + (
                        "?" + parts_of_url.query if parts_of_url.query else ""
                    )
                    if key in served:
                        sample.server_seconds.append(served[key])
            inprocess = None
            if "portal-inprocess" in parts:
                say("in-process requests with timers...")
                spec = work / "inprocess.json"
                spec.write_text(
                    json.dumps(
                        {
                            "warmup": [s.portal_url for s in warmup],
                            "urls": [s.portal_url for s in parts["portal-inprocess"]],
                            "profile": args.profile,
                        }
                    )
                )
                inprocess = run_child(
                    ["--child-inprocess", str(spec)], portal.environment(), "the in-process child"
                )
                samples["portal-inprocess"] = Samples(
                    inprocess["seconds"], inprocess["sizes"], "image/jpeg"
                )
            machine = machine_info(portal, orthanc_system, dicomweb_version)
        finally:
            say("cleaning up...")
            portal.cleanup()
    text, met = report(samples, missing, inprocess, machine, busy, args)
    print(text)
    if inprocess and inprocess.get("profile"):
        print("\ncProfile of the in-process requests (timings inflated by the profiler):")
        print(inprocess["profile"])
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "samples": {k: vars(v) for k, v in samples.items()},
                    "inprocess": inprocess,
                    "machine": machine,
                    "busy_before": busy,
                },
                indent=2,
            )
        )
    return 0 if met else 1


class Interrupted(Exception):
    pass


def preflight() -> None:
    import psycopg

    from bench.orthanc import ORTHANC_BINARY

    missing = [
        name for name in ("DATABASE_URL", "S3_BUCKET", "PORTAL_KEYRING") if not os.environ.get(name)
    ]
    if missing:
        raise BenchError(
            f"{', '.join(missing)} not set. Run it under the stack script: .venv/bin/python "
            "scripts/stack.py run -- .venv/bin/python -m bench.render (or make bench-render)"
        )
    if not ORTHANC_BINARY.is_file():
        raise BenchError(f"{ORTHANC_BINARY} is missing: apt-get install orthanc orthanc-dicomweb")
    try:
        psycopg.connect(
            with_path(os.environ["DATABASE_URL"], "/postgres"), connect_timeout=3
        ).close()
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL: {str(exc).strip()}") from None


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.render",
        description="First-frame render time of the portal's viewer against Orthanc.",
    )
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=10, help="slices for the warm-up")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--database", default="bench_render", help="the database to create")
    parser.add_argument(
        "--redis-dbs",
        default="11,12",
        help="the two Redis databases (broker, cache) the portal uses; flushed before and after",
    )
    parser.add_argument(
        "--endpoints",
        default=",".join(e.key for e in ENDPOINTS),
        help=f"comma-separated, from {', '.join(e.key for e in ENDPOINTS)}",
    )
    parser.add_argument("--budget-ms", type=float, default=150.0, help="the p95 goal")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample here")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="run the in-process requests under cProfile and print the top N functions",
    )
    args = parser.parse_args(argv)
    if args.requests < 5 or args.warmup < 2 or args.workers < 1:
        parser.error("--requests at least 5, --warmup at least 2, --workers at least 1")
    try:
        broker, cache = (int(part) for part in args.redis_dbs.split(","))
    except ValueError:
        parser.error("--redis-dbs takes two numbers, e.g. 11,12")
    if broker == cache:
        parser.error("--redis-dbs needs two different databases")
    args.redis_dbs = (broker, cache)
    keys = [key.strip() for key in args.endpoints.split(",") if key.strip()]
    known = {e.key for e in ENDPOINTS}
    if "portal-jpeg" not in keys or any(key not in known for key in keys):
        parser.error(f"--endpoints must include portal-jpeg and name only {', '.join(known)}")
    args.endpoint_keys = keys
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child-setup"]:
        print(json.dumps(child_setup(Path(argv[1]))))
        return 0
    if argv[:1] == ["--child-inprocess"]:
        print(json.dumps(child_inprocess(Path(argv[1]))))
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
