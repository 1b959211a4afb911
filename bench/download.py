"""Download benchmark: a study's zip (DICOM files + DICOMDIR) through the real HTTP endpoint.

One command (PostgreSQL and Redis are used or started, SeaweedFS started fresh, by the stack
script):

    .venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.download

What it measures (bench/README.md explains how to read the result):

(a) Throughput: a 300-instance 512x512 CT study (the project's generator, `studies.synthetic`;
    no PHI), downloaded by its patient from `GET /download/studies/<id>/` on gunicorn (one sync
    worker, so "the web process" is one process), in MB/s (10^6 bytes) from sending the request
    to the last byte, with the time to the first byte; and the web process's peak RSS (VmHWM,
    reset before each download through /proc/<pid>/clear_refs) above its idle RSS. Every
    download is checked: a valid zip, every file byte-identical to what was ingested (SHA-256
    against the database), the DICOMDIR naming every file. With `--orthanc` (the default when
    Debian's Orthanc is installed) the same study is downloaded from a fresh Orthanc's
    `/studies/<id>/media` (its zip with a DICOMDIR), for reference.
(b) Memory for a study of 2 GiB (8 multi-frame instances of 256 MiB, own generator below): the
    same download, the worker's RSS sampled every 20 ms; it must stay flat, under 150 MB above
    idle.
(c) Revocation: a receiving facility's staff member downloads the CT study under a consent
    grant; when a set share of the zip has arrived, a child process withdraws the grant through
    `consent.services.withdraw_consent` and notes the moment it committed. The client, reading
    as fast as it can, counts the bytes that arrive after that moment (goal: at most one
    segment, 1 MiB), and checks that the download failed and what it got does not open as a zip.

The data is ingested and published in-process by a child process (tasks run eagerly there, no
Celery worker), into a database of its own (`bench_download`, `--database`), dropped at the end
with the objects it uploaded. The database DATABASE_URL names is not touched; REDIS_URL and
CACHE_URL are used as given (their databases are not flushed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from bench.ingest import (
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
MB = 1_000_000
MIB = 1024 * 1024
LOOPBACK = "127.0.0.1"
# One sync worker: the download is served by one known process whose memory is measured.
GUNICORN_ARGUMENTS = (
    "-m gunicorn portal.wsgi --bind 127.0.0.1:{port} --workers 1 --worker-class sync"
    " --timeout 900 --graceful-timeout 10 --log-level warning --no-control-socket"
)
CHUNK = 64 * 1024  # what the client reads at a time
SAMPLE_SECONDS = 0.02
RSS_GOAL_MB = 150
SEGMENT = MIB  # sharing.crypto.DEFAULT_SEGMENT_SIZE
BUSY_WARNING = 0.15
CHILD_TIMEOUT = 3600
RESULT_MARK = "BENCH-RESULT "
ORIGIN_NAME = "Download benchmark origin (synthetic)"
RECEIVER_NAME = "Download benchmark receiver (synthetic)"
PATIENT_EMAIL = "bench-patient@example.invalid"
CLINICIAN_EMAIL = "bench-clinician@example.invalid"


# --- Data ---------------------------------------------------------------------------------------


def generate_big_study(folder: Path, *, instances: int, frames: int, rows: int) -> list[Path]:
    """A study of large multi-frame instances (Multi-frame Grayscale Word Secondary Capture,
    16-bit noise), each `frames` x rows x rows x 2 bytes; the same synthetic patient as the CT
    study, so one patient record owns both. Written one instance at a time."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    study_uid = generate_uid(entropy_srcs=["bench-download", "big-study"])
    series_uid = generate_uid(entropy_srcs=["bench-download", "big-series"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(instances):
        data_set = Dataset()
        data_set.SpecificCharacterSet = "ISO_IR 100"
        data_set.SOPClassUID = sop_class
        data_set.SOPInstanceUID = generate_uid(entropy_srcs=["bench-download", str(index)])
        data_set.StudyDate = data_set.SeriesDate = "20260103"
        data_set.StudyTime = "101500"
        data_set.AccessionNumber = "BIG000001"
        data_set.Modality = "OT"
        data_set.ConversionType = "WSD"
        data_set.StudyDescription = "SYNTHETIC LARGE MULTI-FRAME STUDY"
        data_set.PatientName = "SYNTHETIC^PATIENT"
        data_set.PatientID = "SYN000001"
        data_set.IssuerOfPatientID = "SYNTHETIC"
        data_set.PatientBirthDate = "19700101"
        data_set.PatientSex = "O"
        data_set.StudyInstanceUID = study_uid
        data_set.SeriesInstanceUID = series_uid
        data_set.StudyID = "2"
        data_set.SeriesNumber = 1
        data_set.InstanceNumber = index + 1
        data_set.SamplesPerPixel = 1
        data_set.PhotometricInterpretation = "MONOCHROME2"
        data_set.NumberOfFrames = frames
        data_set.Rows = data_set.Columns = rows
        data_set.BitsAllocated = 16
        data_set.BitsStored = 12
        data_set.HighBit = 11
        data_set.PixelRepresentation = 0
        noise = np.random.default_rng(index).integers(0, 4096, (frames, rows, rows), np.uint16)
        data_set.PixelData = noise.tobytes()
        del noise
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = data_set.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        data_set.file_meta = meta
        path = folder / f"OT_{index + 1:05d}.dcm"
        data_set.save_as(path, enforce_file_format=True)
        paths.append(path)
        del data_set
    return paths


# --- The portal's own code, in child processes ---------------------------------------------------


def child_setup(ct_folder: Path, big_folder: Path) -> dict[str, Any]:
    """Facilities, a patient and a receiving clinician (MFA on), both studies ingested and
    published (tasks run eagerly: no REDIS_URL here), sessions for the two people."""
    import django

    django.setup()
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.conf import settings
    from django.test import Client

    from accounts.models import User
    from audit.codes import ActorKind
    from facilities.models import Facility, Membership, Role
    from sharing.services import publish_spooled
    from studies.models import Instance, Patient, Study
    from studies.services import Channel, IngestOutcome, IngestSource, study_ingest_instance
    from studies.spool import get_spool

    origin = Facility.objects.create(
        name=ORIGIN_NAME, kind=Facility.Kind.ORIGINATING, default_issuer_of_patient_id="BENCH"
    )
    receiver = Facility.objects.create(name=RECEIVER_NAME, kind=Facility.Kind.RECEIVING)
    patient_user = User.objects.create_user(PATIENT_EMAIL)
    clinician = User.objects.create_user(CLINICIAN_EMAIL)
    Membership.objects.create(user=clinician, facility=receiver, role=Role.CLINICIAN)
    TOTP.activate(clinician, generate_totp_secret())

    spool = get_spool()
    source = IngestSource(
        origin, Channel.DIMSE, ActorKind.DICOM_NODE, "BENCHSCU", address="127.0.0.1"
    )
    study_ids = {}
    for label, folder in (("ct", ct_folder), ("big", big_folder)):
        for path in sorted(folder.glob("*.dcm")):
            with path.open("rb") as file:
                incoming = spool.receive(file)
            result = study_ingest_instance(path=incoming, source=source, spool=spool)
            if result.outcome is not IngestOutcome.STORED:
                raise SystemExit(f"ingest of {path.name}: {result.outcome} {result.message}")
        study_ids[label] = Study.objects.latest("pk").pk
    while publish_spooled(settings.PORTAL_NODE).more:
        pass
    waiting = Instance.objects.exclude(state=Instance.State.PUBLISHED).count()
    studies = Study.objects.filter(pk__in=study_ids.values())
    if waiting or any(study.state != Study.State.AVAILABLE for study in studies):
        raise SystemExit(f"{waiting} instances not published; studies not all available")
    Patient.objects.filter(studies__in=studies).update(account=patient_user)

    cookies = {}
    for name, user in (("patient", patient_user), ("clinician", clinician)):
        client = Client()
        client.force_login(user)
        cookies[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "cookies": cookies,
        "studies": {
            label: {
                "public_id": str(study.public_id),
                "instances": study.number_of_instances,
                "bytes": study.size_bytes,
            }
            for label, study in ((k, Study.objects.get(pk=v)) for k, v in study_ids.items())
        },
    }


def child_revoke(study_public_id: str) -> None:
    """Grant the receiving facility the study, say so, wait for "go" on stdin, withdraw the
    grant and print the moment its transaction had committed (CLOCK_MONOTONIC, system-wide)."""
    import django

    django.setup()
    from django.db import transaction

    from accounts.models import User
    from consent.models import ConsentGrant, Purpose
    from consent.services import GrantRequest, grant_consent, withdraw_consent
    from facilities.models import Facility
    from studies.models import Study

    study = Study.objects.select_related("patient").get(public_id=study_public_id)
    patient_user = User.objects.get(email=PATIENT_EMAIL)
    grant = grant_consent(
        GrantRequest(
            patient=study.patient,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
            grantee_facility=Facility.objects.get(name=RECEIVER_NAME),
        ),
        by=patient_user,
    )
    print(RESULT_MARK + json.dumps({"grant": grant.pk}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    commits: list[float] = []
    with transaction.atomic():
        # Registered before the withdrawal's own on-commit work (e-mails, run eagerly here),
        # so it notes the moment of the COMMIT itself, not of returning after that work.
        transaction.on_commit(lambda: commits.append(time.monotonic()))
        withdrawal = withdraw_consent(grant, by=patient_user, reason="download benchmark")
    committed = commits[0]
    print(
        RESULT_MARK
        + json.dumps({"committed": committed, "withdrawn_at": withdrawal.withdrawn_at.isoformat()}),
        flush=True,
    )


# --- Databases and the portal's environment -----------------------------------------------------


class Database:
    """The benchmark's own database beside the one DATABASE_URL names, created and dropped."""

    def __init__(self, database_url: str, name: str) -> None:
        parts = urlsplit(database_url)
        if not parts.scheme.startswith("postgres"):
            raise BenchError(f"DATABASE_URL must name PostgreSQL, not {database_url}")
        if parts.path.lstrip("/") == name:
            raise BenchError(f"DATABASE_URL names {name}; the benchmark drops that database")
        self.name = name
        self.admin_url = with_path(database_url, "/postgres")
        self.url = with_path(database_url, f"/{name}")
        self.created = False

    def _admin(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)

    def create(self) -> None:
        from psycopg import sql

        self.drop()
        self.created = True
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def drop(self) -> None:
        from psycopg import sql

        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
        )

    def rows(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return [tuple(row) for row in connection.execute(statement, params).fetchall()]

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


@dataclass
class Portal:
    database: Database
    work: Path
    node: str = field(default_factory=lambda: f"benchdl-{secrets.token_hex(4)}")
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))

    def environment(self, *, eager_tasks: bool = False) -> dict[str, str]:
        """The stack's S3, keyring and Redis settings with this benchmark's database, spool and
        node; nothing else of the caller's portal settings leaks in."""
        kept = {"CACHE_URL", "PORTAL_KEYRING"} | (set() if eager_tasks else {"REDIS_URL"})
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
                "DJANGO_ALLOWED_HOSTS": LOOPBACK,
                "PORTAL_HTTPS": "false",
                "PORTAL_VAR_DIR": str(var_dir),
                "DATABASE_URL": self.database.url,
                "INGEST_SPOOL_DIR": str(self.work / "spool"),
                "PORTAL_NODE": self.node,
            }
        )
        return environment

    def manage(self, *arguments: str) -> None:
        finished = subprocess.run(
            [PYTHON, "manage.py", *arguments],
            cwd=ROOT,
            env=self.environment(eager_tasks=True),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if finished.returncode != 0:
            raise BenchError(f"manage.py {arguments[0]} failed:\n{finished.stderr[-3000:]}")

    def child(self, *arguments: str) -> dict[str, Any]:
        finished = subprocess.run(
            [PYTHON, "-m", "bench.download", *arguments],
            cwd=ROOT,
            env=self.environment(eager_tasks=True),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if finished.returncode != 0:
            raise BenchError(f"child {arguments[0]} failed:\n{finished.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
        return result

    @contextlib.contextmanager
    def server(self) -> Iterator[tuple[str, int]]:
        """gunicorn with one sync worker; yields the base URL and the worker's pid."""
        port = free_loopback_port()
        command = [PYTHON, *GUNICORN_ARGUMENTS.format(port=port).split()]
        with background(
            command,
            env=self.environment(),
            log=self.work / "gunicorn.log",
            ready=lambda: http_answers(f"http://{LOOPBACK}:{port}/healthz"),
            name="gunicorn portal.wsgi",
        ) as process:
            yield f"http://{LOOPBACK}:{port}", worker_pid(process.pid)


# --- Memory of a process --------------------------------------------------------------------------


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise BenchError("gunicorn started no worker")


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field_name}")


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux 4.0+), so that the peak read after
    a download is that download's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """VmRSS of a process every 20 ms, beside how many bytes the client had received."""

    def __init__(self, pid: int, progress: Callable[[], int]) -> None:
        self.pid, self.progress = pid, progress
        self.samples: list[tuple[int, int]] = []  # (bytes received, RSS KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, BenchError):
                self.samples.append((self.progress(), status_kib(self.pid, "VmRSS")))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at_fractions(self, total: int, fractions: tuple[float, ...]) -> list[float]:
        """RSS (MB) at the first sample past each fraction of the bytes."""
        values = []
        for fraction in fractions:
            after = [rss for got, rss in self.samples if got >= fraction * total]
            values.append(after[0] * 1024 / MB if after else float("nan"))
        return values


# --- The client -----------------------------------------------------------------------------------


@dataclass
class Download:
    status: int
    content_length: int
    received: int
    seconds: float
    first_byte_seconds: float
    error: str = ""
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, total)

    @property
    def rate(self) -> float:
        return self.received / MB / self.seconds


def download(
    url: str,
    cookies: dict[str, str],
    *,
    into: Path | None = None,
    progress: list[int] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Download:
    """GET `url` and read it to its end (or failure) as fast as possible, `CHUNK` at a time."""
    import requests

    counter = progress if progress is not None else [0]
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    first_byte = 0.0
    error = ""
    output = into.open("wb") if into else None
    try:
        with requests.get(url, cookies=cookies, stream=True, timeout=120) as response:
            length = int(response.headers.get("Content-Length", "-1"))
            if response.status_code != 200:
                return Download(response.status_code, length, 0, time.monotonic() - started, 0.0)
            try:
                for chunk in response.iter_content(CHUNK):
                    now = time.monotonic()
                    if not first_byte:
                        first_byte = now - started
                    counter[0] += len(chunk)
                    arrivals.append((now, counter[0]))
                    if output:
                        output.write(chunk)
                    if on_bytes:
                        on_bytes(counter[0])
            except requests.RequestException as exc:  # the server broke the response off
                error = type(exc).__name__
                cause = exc.args[0] if exc.args else None
                if isinstance(cause, BaseException):
                    error += f" ({type(cause).__name__})"
    finally:
        if output:
            output.close()
    return Download(
        200, length, counter[0], time.monotonic() - started, first_byte, error, arrivals
    )


def check_zip(path: Path, database: Database, instances: int) -> None:
    """A valid zip: every CRC right, a DICOMDIR naming every file, every file byte-identical to
    the instance ingested (SHA-256 recorded at ingest)."""
    import pydicom

    expected = dict(database.rows("SELECT sop_instance_uid, sha256 FROM studies_instance"))
    with zipfile.ZipFile(path) as archive:
        directory = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
        images = [r for r in directory.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
        if len(images) != instances or len(archive.namelist()) != instances + 1:
            raise BenchError(f"the zip holds {len(archive.namelist())} files, not {instances} + 1")
        for record in images:
            name = "/".join(record.ReferencedFileID)
            digest = hashlib.sha256()
            with archive.open(name) as member:  # zipfile checks the CRC-32 at the end
                for block in iter(lambda member=member: member.read(MIB), b""):
                    digest.update(block)
            if digest.hexdigest() != expected[record.ReferencedSOPInstanceUIDInFile]:
                raise BenchError(f"{name} is not the instance received")


# --- The three measurements -----------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    download: Download
    idle_mb: float
    peak_mb: float
    rss_at: list[float]

    @property
    def above_idle(self) -> float:
        return self.peak_mb - self.idle_mb


def measured_download(
    label: str, url: str, cookies: dict[str, str], pid: int, folder: Path
) -> tuple[Measured, Path]:
    reset_peak(pid)
    idle = status_kib(pid, "VmRSS") * 1024 / MB
    progress = [0]
    target = folder / f"{label}.zip"
    with RssSampler(pid, lambda: progress[0]) as sampler:
        result = download(url, cookies, into=target, progress=progress)
    if result.status != 200 or result.error or result.received != result.content_length:
        raise BenchError(
            f"{label}: HTTP {result.status}, {result.received} of {result.content_length} bytes"
            f" {result.error}"
        )
    peak = status_kib(pid, "VmHWM") * 1024 / MB
    rss_at = sampler.at_fractions(result.received, (0.1, 0.5, 0.9))
    return Measured(label, result, idle, peak, rss_at), target


@dataclass
class Revocation:
    study: str
    fraction: float
    content_length: int
    received_at_commit: int
    received: int
    error: str
    opens_as_zip: bool
    server_sent: int | None
    server_stop_ms: float | None
    last_before_ms: float  # the last bytes before the commit arrived this long before it

    @property
    def after_commit(self) -> int:
        return self.received - self.received_at_commit


def revocation_round(
    portal: Portal, base: str, setup: dict[str, Any], label: str, fraction: float, folder: Path
) -> Revocation:
    study = setup["studies"][label]
    child = subprocess.Popen(
        [PYTHON, "-m", "bench.download", "--child-revoke", study["public_id"]],
        cwd=ROOT,
        env=portal.environment(eager_tasks=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdin, stdout = child.stdin, child.stdout
    if stdin is None or stdout is None:
        raise BenchError("the withdrawing child has no pipes")
    try:
        result_line(child, stdout)  # the grant is made
        trigger = int(fraction * study["bytes"])
        fired = threading.Event()

        def on_bytes(total: int) -> None:
            if total >= trigger and not fired.is_set():
                fired.set()
                stdin.write("go\n")
                stdin.flush()

        target = folder / "revoked.zip"
        cookies = {setup["cookie_name"]: setup["cookies"]["clinician"]}
        result = download(f"{base}/download/studies/{study['public_id']}/", cookies,
                          into=target, on_bytes=on_bytes)  # fmt: skip
        if result.status != 200:
            raise BenchError(f"the revocation download answered HTTP {result.status}")
        if not fired.is_set():
            raise BenchError("the download ended before the withdrawal was triggered")
        answer = result_line(child, stdout)
        committed = float(answer["committed"])
        before = [(moment, total) for moment, total in result.arrivals if moment <= committed]
        at_commit = before[-1][1] if before else 0
        last_before_ms = (committed - before[-1][0]) * 1000 if before else float("nan")
        try:
            zipfile.ZipFile(target).close()
            opens = True
        except zipfile.BadZipFile:
            opens = False
        sent, stop_ms = server_side_stop(portal.database, answer["withdrawn_at"])
        return Revocation(
            label,
            fraction,
            result.content_length,
            at_commit,
            result.received,
            result.error,
            opens,
            sent,
            stop_ms,
            last_before_ms,
        )
    finally:
        with contextlib.suppress(Exception):
            child.kill()
        child.wait(timeout=30)
        with contextlib.suppress(FileNotFoundError):
            (folder / "revoked.zip").unlink()


def result_line(child: subprocess.Popen[str], stdout: IO[str]) -> dict[str, Any]:
    """The child's next result; other lines (e-mails the console backend prints) are skipped."""
    for line in stdout:
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    stderr = child.stderr.read() if child.stderr else ""
    raise BenchError(f"the withdrawing child failed:\n{stderr[-3000:]}")


def server_side_stop(database: Database, withdrawn_at: str) -> tuple[int | None, float | None]:
    """What the portal says it sent (the download's 'stopped' audit row) and how long after the
    withdrawal's timestamp it stopped, from the audit log."""
    rows = database.rows(
        "SELECT detail, occurred_at - %s::timestamptz FROM audit_auditevent"
        " WHERE action = 'study.downloaded' AND outcome = 'denied' ORDER BY sequence DESC LIMIT 1",
        withdrawn_at,
    )
    if not rows:
        return None, None
    detail, delay = rows[0]
    if isinstance(detail, str):
        detail = json.loads(detail)
    return int(detail.get("sent_bytes", 0)), delay.total_seconds() * 1000


def orthanc_round(ct_folder: Path, work: Path, runs: int) -> list[Download]:
    """The same study from a fresh Orthanc's /studies/<id>/media (zip + DICOMDIR)."""
    import requests

    from bench.orthanc import running_orthanc

    results = []
    with running_orthanc(work / "orthanc", dicomweb=False) as orthanc:
        session = requests.Session()
        for path in sorted(ct_folder.glob("*.dcm")):
            answer = session.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60)
            answer.raise_for_status()
        (study_id,) = session.get(f"{orthanc.url}/studies", timeout=10).json()
        download(f"{orthanc.url}/studies/{study_id}/media", {})  # warm-up
        for _ in range(runs):
            result = download(f"{orthanc.url}/studies/{study_id}/media", {})
            if result.status != 200 or result.error:
                raise BenchError(f"Orthanc's media download: {result.status} {result.error}")
            results.append(result)
    return results


# --- Report ---------------------------------------------------------------------------------------


def mb(value: float) -> str:
    return f"{value:.1f}"


def report(
    args: argparse.Namespace,
    setup: dict[str, Any],
    ct_runs: list[Measured],
    big: Measured | None,
    revocations: list[Revocation],
    orthanc: list[Download],
    machine: list[tuple[str, str]],
    busy: float,
) -> str:
    ct = setup["studies"]["ct"]
    lines = [
        f"(a) Zip download of {ct['instances']} CT instances {args.rows}x{args.rows}"
        f" ({ct['bytes'] / MB:.0f} MB of DICOM), by the patient, through gunicorn (1 sync"
        f" worker); median of {len(ct_runs)} downloads, each checked (valid zip, files"
        " byte-identical, DICOMDIR complete)",
        "",
        "| what | s | MB/s of DICOM | first byte, ms | zip MB | web process idle, MB"
        " | peak, MB | peak above idle, MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    study_mb = ct["bytes"] / MB
    worst = max(ct_runs, key=lambda m: m.above_idle)  # the memory columns: the worst download
    seconds = median([m.download.seconds for m in ct_runs])
    lines.append(
        "| portal, /download/studies/&lt;id&gt;/ "
        f"| {seconds:.2f} | {study_mb / seconds:.1f}"
        f" | {median([m.download.first_byte_seconds * 1000 for m in ct_runs]):.0f}"
        f" | {ct_runs[0].download.received / MB:.1f}"
        f" | {mb(worst.idle_mb)} | {mb(worst.peak_mb)} | {mb(worst.above_idle)} |"
    )
    if orthanc:
        seconds = median([d.seconds for d in orthanc])
        lines.append(
            "| Orthanc, /studies/&lt;id&gt;/media (reference; its zip is deflated) "
            f"| {seconds:.2f} | {study_mb / seconds:.1f}"
            f" | {median([d.first_byte_seconds * 1000 for d in orthanc]):.0f}"
            f" | {orthanc[0].received / MB:.1f} | | | |"
        )
    lines.append("")
    lines.append(
        "Every download: "
        + "; ".join(
            f"{m.download.rate:.1f} MB/s, first byte {m.download.first_byte_seconds * 1000:.0f}"
            f" ms, peak +{m.above_idle:.1f} MB"
            for m in ct_runs
        )
    )
    if big is not None:
        b = setup["studies"]["big"]
        verdict = "met" if big.above_idle < RSS_GOAL_MB else "MISSED"
        lines += [
            "",
            f"(b) Memory, a {b['bytes'] / 2**30:.2f} GiB study ({b['instances']} multi-frame"
            f" instances of {b['bytes'] / b['instances'] / MIB:.0f} MiB), same endpoint:",
            "",
            "| study | zip MB | MB/s | idle, MB | RSS at 10% / 50% / 90%, MB | peak, MB"
            f" | peak above idle, MB | goal < {RSS_GOAL_MB} MB, flat |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for label, m in (("ct", ct_runs[-1]), ("big", big)):
            lines.append(
                f"| {study_label(setup, label)} | {m.download.received / MB:.0f}"
                f" | {m.download.rate:.0f}"
                f" | {mb(m.idle_mb)} | {' / '.join(mb(v) for v in m.rss_at)}"
                f" | {mb(m.peak_mb)} | {mb(m.above_idle)} | {verdict if m is big else ''} |"
            )
    if revocations:
        lines += [
            "",
            "(c) Revocation: a receiving facility's staff member downloads a zip under a"
            " grant; the grant is withdrawn (committed) when the given share has arrived",
            "",
            "| study | withdrawn at | bytes after the commit | segments (1 MiB)"
            " | last bytes before it, ms | client saw | opens as a zip | server sent (audit)"
            " | server stopped after, ms |",
            "|---|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for r in revocations:
            sent = f"{r.server_sent:,}" if r.server_sent is not None else "?"
            stop = f"{r.server_stop_ms:.0f}" if r.server_stop_ms is not None else "?"
            lines.append(
                f"| {study_label(setup, r.study)}"
                f" | {r.fraction:.0%} of {r.content_length / MB:.0f} MB | {r.after_commit:,}"
                f" | {r.after_commit / SEGMENT:.2f} | {r.last_before_ms:.1f}"
                f" | {r.error or 'a complete body (!)'}"
                f" | {'YES (!)' if r.opens_as_zip else 'no'} | {sent} | {stop} |"
            )
        worst = max(r.after_commit for r in revocations)
        verdict = "met" if worst <= SEGMENT else "MISSED"
        lines.append("")
        lines.append(
            f"Goal, at most one segment (1 MiB) after the commit: {verdict} (most: {worst:,} bytes)"
        )
    lines.append("")
    lines.append("Machine:")
    for name, value in machine:
        lines.append(f"  {name:12} {value}")
    quiet = (
        "quiet" if busy < BUSY_WARNING else "NOT QUIET: the numbers are lower than they could be"
    )
    lines.append(f"  {'before':12} CPUs {busy:.0%} busy with other work ({quiet})")
    return "\n".join(lines)


def study_label(setup: dict[str, Any], label: str) -> str:
    study = setup["studies"][label]
    size = study["bytes"] / study["instances"]
    each = f"{size / MIB:.0f} MiB" if size >= MIB else f"{size / MB:.2f} MB"
    return f"{'CT' if label == 'ct' else 'large'}, {study['instances']} x {each}"


def machine_info(database: Database) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in ("Django", "gunicorn", "pydicom", "boto3", "cryptography"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    return [
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("packages", ", ".join(versions)),
        ("PostgreSQL", database.server_version()),
    ]


# --- Main -----------------------------------------------------------------------------------------


def preflight() -> None:
    missing = [
        name
        for name in ("DATABASE_URL", "REDIS_URL", "CACHE_URL", "S3_BUCKET", "PORTAL_KEYRING")
        if not os.environ.get(name)
    ]
    if missing:
        raise BenchError(
            f"{', '.join(missing)} not set. Run it under the stack script: .venv/bin/python "
            "scripts/stack.py run -- .venv/bin/python -m bench.download (or make bench-download)"
        )
    if not Path("/proc/self/clear_refs").exists():
        raise BenchError("needs Linux /proc (clear_refs, VmHWM) to measure the web process")


def delete_uploaded(database: Database) -> None:
    """Remove the objects this benchmark's database names from the stack's bucket."""
    from bench.publish import delete_objects, s3_client

    names = [row[0] for row in database.rows("SELECT name FROM sharing_storedobject")]
    delete_objects(s3_client(), names)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.download",
        description="Zip download: throughput, the web process's memory, revocation.",
    )
    parser.add_argument("--instances", type=int, default=300, help="CT instances (a)")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of the CT")
    parser.add_argument("--runs", type=int, default=3, help="timed CT downloads; median shown")
    parser.add_argument("--big-gib", type=float, default=2.0, help="size of study (b); 0 skips")
    parser.add_argument("--big-instances", type=int, default=8, help="instances of study (b)")
    parser.add_argument(
        "--revoke-at",
        default="0.25,0.5,0.75",
        help="shares of the CT zip after which consent is withdrawn, one round each ('' skips)",
    )
    parser.add_argument(
        "--revoke-big-at",
        default="0.5",
        help="the same for the large study (b), inside its multi-segment instances",
    )
    parser.add_argument(
        "--orthanc",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also download the study from Orthanc's /media (auto: when installed)",
    )
    parser.add_argument("--database", default="bench_download", help="database to create, drop")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the zips in DIR")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1 or args.rows < 16 or args.big_instances < 1:
        parser.error("--instances, --runs and --big-instances at least 1, --rows at least 16")
    args.revoke_fractions = [float(v) for v in args.revoke_at.split(",") if v.strip()]
    args.revoke_big_fractions = [float(v) for v in args.revoke_big_at.split(",") if v.strip()]
    if any(not 0 < v < 1 for v in args.revoke_fractions + args.revoke_big_fractions):
        parser.error("--revoke-at and --revoke-big-at take fractions between 0 and 1")
    return args


def benchmark(args: argparse.Namespace) -> int:
    from bench.orthanc import ORTHANC_BINARY
    from studies.synthetic import generate_study

    busy = cpu_busy_fraction()
    database = Database(os.environ["DATABASE_URL"], args.database)
    use_orthanc = args.orthanc == "yes" or (args.orthanc == "auto" and ORTHANC_BINARY.exists())
    with tempfile.TemporaryDirectory(prefix="bench-download-") as folder:
        work = Path(folder)
        portal = Portal(database, work)
        ct_folder, big_folder = work / "data" / "ct", work / "data" / "big"
        say(f"generating a {args.instances}-instance CT study of {args.rows}x{args.rows}...")
        generate_study(ct_folder, modality="CT", instances=args.instances, rows=args.rows)
        big_folder.mkdir(parents=True)
        if args.big_gib > 0:
            frames = max(1, round(args.big_gib * 2**30 / args.big_instances / (512 * 512 * 2)))
            say(f"generating {args.big_instances} multi-frame instances of {frames} frames...")
            generate_big_study(big_folder, instances=args.big_instances, frames=frames, rows=512)
        zips = work / "zips"
        zips.mkdir()
        ct_runs: list[Measured] = []
        big: Measured | None = None
        revocations: list[Revocation] = []
        orthanc: list[Download] = []
        try:
            say(f"creating and migrating {database.name}...")
            database.create()
            portal.manage("migrate", "--no-input", "-v0")
            say("ingesting and publishing both studies (in-process, to the stack's S3)...")
            setup = portal.child("--child-setup", str(ct_folder), str(big_folder))
            shutil.rmtree(big_folder)  # 2 GiB of plaintext we no longer need
            patient = {setup["cookie_name"]: setup["cookies"]["patient"]}
            with portal.server() as (base, pid):
                ct_url = f"{base}/download/studies/{setup['studies']['ct']['public_id']}/"
                say("warm-up download...")
                measured_download("warmup", ct_url, patient, pid, zips)
                for run in range(1, args.runs + 1):
                    measured, path = measured_download(f"ct-{run}", ct_url, patient, pid, zips)
                    check_zip(path, database, setup["studies"]["ct"]["instances"])
                    say(
                        f"  CT run {run}: {measured.download.rate:.0f} MB/s,"
                        f" peak +{measured.above_idle:.1f} MB"
                    )
                    ct_runs.append(measured)
                if args.big_gib > 0:
                    say("downloading the large study...")
                    big_url = f"{base}/download/studies/{setup['studies']['big']['public_id']}/"
                    big, path = measured_download("big", big_url, patient, pid, zips)
                    check_zip(path, database, setup["studies"]["big"]["instances"])
                    say(f"  {big.download.rate:.0f} MB/s, peak +{big.above_idle:.1f} MB")
                    if not args.keep:
                        path.unlink()
                rounds = [("ct", fraction) for fraction in args.revoke_fractions]
                if args.big_gib > 0:
                    rounds += [("big", fraction) for fraction in args.revoke_big_fractions]
                for label, fraction in rounds:
                    say(f"revocation of the {label} download at {fraction:.0%}...")
                    revocations.append(revocation_round(portal, base, setup, label, fraction, zips))
            if use_orthanc:
                say("Orthanc /media for reference...")
                orthanc = orthanc_round(ct_folder, work, args.runs)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for path in zips.glob("*.zip"):
                    shutil.copy2(path, args.keep / path.name)
            machine = machine_info(database)
        finally:
            say("cleaning up...")
            with contextlib.suppress(Exception):
                delete_uploaded(database)
            with contextlib.suppress(Exception):
                from bench.publish import forget_node_keys

                forget_node_keys(portal.node)
            if database.created:
                database.drop()
    print(report(args, setup, ct_runs, big, revocations, orthanc, machine, busy))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child-setup"]:
        print(json.dumps(child_setup(Path(argv[1]), Path(argv[2]))))
        return 0
    if argv[:1] == ["--child-revoke"]:
        child_revoke(argv[1])
        return 0
    args = parse_arguments(argv)
    try:
        preflight()
        return benchmark(args)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
