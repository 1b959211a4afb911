"""Senders nobody here wrote push studies into `manage.py dicom_listener`.

The listener runs as a real subprocess, pointed at the test database (pytest-django's
`test_<NAME>`) and this test's spool, and is stopped with a signal at the end, which also
checks that it shuts down cleanly. Then dcmtk's `storescu` and `dcmsend`, and Orthanc acting
as a facility's PACS, send to it. CI installs dcmtk and Orthanc from Debian; a test skips, with
the reason, only when the program is missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pydicom
import pytest
import requests
from django.conf import settings
from django.db import connection

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import AETitle
from studies.models import Instance, Study
from studies.synthetic import SyntheticPatient

pytestmark = pytest.mark.django_db(transaction=True)

LISTENER = "IMAGING_PORTAL"
CALLING = "RIVERSIDE_PACS"
ORTHANC_AET = "ORTHANC_PACS"
JANE = SyntheticPatient(patient_id="MRN100", name="DOE^JANE", birth_date="19800305", sex="F",
                        issuer="RGH")  # fmt: skip
ORTHANC = "/usr/sbin/Orthanc"


def program(name: str) -> str:
    found = shutil.which(name) or (name if Path(name).is_file() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (CI installs it: apt-get install dcmtk orthanc)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sop_instance_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}


def indexed_uids() -> set[str]:
    return set(Instance.objects.values_list("sop_instance_uid", flat=True))


@dataclass
class RunningListener:
    process: subprocess.Popen[str]
    port: int
    log: Path
    output: str | None = None

    def stop(self, signal_number: int = signal.SIGTERM) -> str:
        """Signal the listener, wait for it to end, and return what it printed."""
        if self.output is not None:
            return self.output
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None
        self.output = self.process.stdout.read()
        return self.output


def database_url() -> str:
    """The test database, as the subprocess's settings read it."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def listener(origin, unused_port, tmp_path) -> Iterator[RunningListener]:
    """`manage.py dicom_listener` in a subprocess that sees this test's database and spool."""
    if connection.vendor != "postgresql":
        pytest.fail(
            "The interop tests need PostgreSQL (the real stack), which a second process can "
            "share; run them with DATABASE_URL set.",
            pytrace=False,
        )
    AETitle.objects.create(facility=origin, ae_title=CALLING)
    log = tmp_path / "listener.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "INGEST_SPOOL_DIR": str(settings.INGEST_SPOOL_DIR),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "dicom_listener", "--port", str(unused_port),
             "--ae-title", LISTENER],
            cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True,
        )  # fmt: skip
    running = RunningListener(process, unused_port, log)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        first_line = process.stdout.readline() if ready else ""
        assert f"listening on 127.0.0.1:{unused_port}" in first_line, log.read_text()
        yield running
    finally:
        output = running.stop()
        assert process.returncode == 0, log.read_text()
        assert "DICOM listener stopped" in output


def test_it_answers_echoscu_and_stops_cleanly_on_sigint(listener):
    echo = subprocess.run(
        [program("echoscu"), "-aet", CALLING, "-aec", LISTENER, "127.0.0.1", str(listener.port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert echo.returncode == 0, echo.stderr

    output = listener.stop(signal.SIGINT)

    assert listener.process.returncode == 0
    assert "DICOM listener stopped" in output


def test_it_receives_a_study_folder_from_storescu(listener, origin, synthetic_study):
    paths = synthetic_study(instances=5, patient=JANE)

    sent = subprocess.run(
        [program("storescu"), "-aet", CALLING, "-aec", LISTENER, "+sd", "127.0.0.1",
         str(listener.port), str(paths[0].parent)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    assert indexed_uids() == sop_instance_uids(paths)
    study = Study.objects.get()
    assert (study.source_facility, study.number_of_instances) == (origin, 5)
    assert study.patient.name == "DOE^JANE"


def test_it_refuses_storescu_from_an_unregistered_ae_title(listener, synthetic_study):
    paths = synthetic_study(instances=1)

    sent = subprocess.run(
        [program("storescu"), "-aet", "NOT_REGISTERED", "-aec", LISTENER, "127.0.0.1",
         str(listener.port), str(paths[0])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert sent.returncode != 0
    assert "Calling AE Title Not Recognized" in sent.stderr
    assert not Instance.objects.exists()
    refused = AuditEvent.objects.get(action=Action.DICOM_ASSOCIATION_REFUSED)
    assert refused.actor_id == "NOT_REGISTERED"


def test_it_receives_a_compressed_study_from_dcmsend(listener, synthetic_study):
    paths = synthetic_study(instances=4, modality="MR", transfer_syntax="rle")

    sent = subprocess.run(
        [program("dcmsend"), "-aet", CALLING, "-aec", LISTENER, "--scan-directories", "-dn",
         "127.0.0.1", str(listener.port), str(paths[0].parent)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    assert indexed_uids() == sop_instance_uids(paths)
    assert set(Instance.objects.values_list("transfer_syntax_uid", flat=True)) == {
        pydicom.uid.RLELossless
    }


@pytest.fixture
def orthanc(listener, origin, tmp_path) -> Iterator[str]:
    """Orthanc as a facility's PACS, with the portal as one of its modalities; its REST base."""
    binary = program(ORTHANC)
    AETitle.objects.create(facility=origin, ae_title=ORTHANC_AET)
    http_port = free_port()
    config = {
        "Name": "portal-interop",
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        # Orthanc only calls out here; it has no bind address setting, so its own DICOM
        # server stays off rather than listening on every interface.
        "DicomServerEnabled": False,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"portal": [LISTENER, "127.0.0.1", listener.port]},
        "Plugins": [],
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = tmp_path / "orthanc.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [binary, str(config_path)], env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{base}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_it_receives_a_study_that_orthanc_sends_to_it_as_a_modality(
    orthanc, origin, synthetic_study
):
    paths = synthetic_study(instances=6, patient=JANE)
    orthanc_ids = []
    for path in paths:
        uploaded = requests.post(f"{orthanc}/instances", data=path.read_bytes(), timeout=30)
        assert uploaded.ok, uploaded.text
        orthanc_ids.append(uploaded.json()["ID"])

    sent = requests.post(
        f"{orthanc}/modalities/portal/store",
        json={"Resources": orthanc_ids, "Synchronous": True},
        timeout=120,
    )

    assert sent.ok, sent.text
    assert sent.json()["FailedInstancesCount"] == 0
    assert indexed_uids() == sop_instance_uids(paths)
    study = Study.objects.get()
    assert (study.source_facility, study.number_of_instances) == (origin, 6)
    stored = AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED)
    assert set(stored.values_list("actor_id", flat=True)) == {ORTHANC_AET}
