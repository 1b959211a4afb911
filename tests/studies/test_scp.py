"""The DIMSE receiver, in-process, driven by pynetdicom as a real SCU over loopback TCP.

The listener handles each association in threads of its own, so these tests commit for real
(`transaction=True`) and look at the database, the spool and the audit log afterwards.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from django.db.backends.signals import connection_created
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.status import code_to_category

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from facilities.models import AETitle
from studies.models import Instance, Study
from studies.scp import DicomListener
from studies.synthetic import SyntheticPatient

pytestmark = pytest.mark.django_db(transaction=True)

LISTENER = "IMAGING_PORTAL"
CALLING = "RIVERSIDE_PACS"
JANE = SyntheticPatient(patient_id="MRN100", name="DOE^JANE", birth_date="19800305", sex="F",
                        issuer="RGH")  # fmt: skip
# The retired Ultrasound Image Storage class: pynetdicom serves it with no service of its own.
RETIRED_ULTRASOUND = "1.2.840.10008.5.1.4.1.1.6"


@pytest.fixture(autouse=True)
def _send_files_as_they_are(monkeypatch):
    """The SCU sends each file's data set bytes unchanged, so what arrives can be compared
    byte for byte with what was sent."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def registered(origin) -> AETitle:
    return AETitle.objects.create(facility=origin, ae_title=CALLING)


@pytest.fixture
def start_listener(unused_port, registered) -> Iterator[Callable[..., int]]:
    """Start an in-process listener on `unused_port` (with options); returns the port."""
    started: list[DicomListener] = []

    def start(**options) -> int:
        listener = DicomListener(ae_title=LISTENER, **options)
        listener.start("127.0.0.1", unused_port)
        started.append(listener)
        return unused_port

    yield start
    for listener in started:
        listener.stop(grace_seconds=2)


@pytest.fixture
def port(start_listener) -> int:
    return start_listener()


def associate(port: int, *, calling: str = CALLING, called: str = LISTENER,
              sop_classes: tuple[str, ...] = (CTImageStorage,)) -> Association:  # fmt: skip
    scu = AE(ae_title=calling)
    scu.add_requested_context(Verification)
    for sop_class in sop_classes:
        scu.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return scu.associate("127.0.0.1", port, ae_title=called)


def store(port: int, paths: list[Path], **options) -> list[Dataset]:
    """C-STORE each file over one association; return the response statuses."""
    association = associate(port, **options)
    assert association.is_established
    try:
        return [association.send_c_store(path) for path in paths]
    finally:
        association.release()


def data_set_bytes(path: Path) -> bytes:
    """A Part 10 file's data set: everything after its file meta group."""
    content = path.read_bytes()
    assert content[128:132] == b"DICM"
    group_length = int.from_bytes(content[140:144], "little")
    return content[144 + group_length :]


def spooled(spool) -> list[Path]:
    return sorted(spool.instances_dir.glob("*/*.dcm")) if spool.instances_dir.exists() else []


def incoming(spool) -> list[Path]:
    return sorted(spool.incoming_dir.glob("*")) if spool.incoming_dir.exists() else []


def rewritten(path: Path, out: Path, change: Callable[[pydicom.Dataset], None]) -> Path:
    data_set = pydicom.dcmread(path)
    change(data_set)
    data_set.save_as(out, enforce_file_format=True)
    return out


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_it_answers_c_echo(port):
    association = associate(port)
    try:
        assert association.send_c_echo().Status == 0x0000
    finally:
        association.release()


def test_it_indexes_and_spools_a_study_as_a_part_10_file_of_what_was_sent(
    port, origin, spool, synthetic_study
):
    paths = synthetic_study(instances=3, patient=JANE)
    temp_files_before = set(Path(tempfile.gettempdir()).glob("tmp*.dcm"))

    statuses = store(port, paths)

    assert [status.Status for status in statuses] == [0x0000] * 3
    study = Study.objects.get()
    assert (study.source_facility, study.number_of_instances) == (origin, 3)
    assert study.patient.name == "DOE^JANE"
    for path in paths:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        instance = Instance.objects.get(sop_instance_uid=sent.SOPInstanceUID)
        assert instance.received_from == origin
        kept = spool.path_of(instance.spool_name)
        assert data_set_bytes(kept) == data_set_bytes(path)
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == instance.sha256
        received = pydicom.dcmread(kept, stop_before_pixels=True)
        assert received.SOPInstanceUID == sent.SOPInstanceUID
        assert received.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert received.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert received.file_meta.ImplementationClassUID
    assert len(spooled(spool)) == 3
    assert incoming(spool) == []
    # Received bytes go straight into the spool, never through the system temp directory.
    assert set(Path(tempfile.gettempdir()).glob("tmp*.dcm")) == temp_files_before
    events = AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED)
    assert events.count() == 1  # one per study per association
    for event in events:
        assert (event.actor_kind, event.actor_id) == (ActorKind.DICOM_NODE, CALLING)
        assert event.client_address == "127.0.0.1"
        assert event.facility_id == origin.pk
        assert event.detail["channel"] == "dimse"


def test_it_refuses_an_unknown_calling_ae_title_and_audits_it(port, spool):
    association = associate(port, calling="STRANGER")

    assert association.is_rejected
    rejection = association.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    event = AuditEvent.objects.get(action=Action.DICOM_ASSOCIATION_REFUSED)
    assert event.outcome == Outcome.DENIED
    assert (event.actor_kind, event.actor_id) == (ActorKind.DICOM_NODE, "STRANGER")
    assert event.client_address == "127.0.0.1"
    assert event.detail["reason"] == "calling AE title not recognised"
    assert not Study.objects.exists()


def test_it_compares_ae_titles_without_surrounding_spaces(port, origin, synthetic_study):
    AETitle.objects.create(facility=origin, ae_title="  CT_SCANNER_2 ")
    [path] = synthetic_study(instances=1)

    [status] = store(port, [path], calling="CT_SCANNER_2")

    assert status.Status == 0x0000
    assert Instance.objects.get().received_from == origin


def test_it_refuses_an_association_for_another_called_ae_title(port):
    association = associate(port, called="SOMEONE_ELSE")

    assert association.is_rejected
    rejection = association.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 7)


def test_it_refuses_an_instance_without_patient_id_and_stores_nothing(
    port, spool, synthetic_study, tmp_path
):
    [path] = synthetic_study(instances=1)
    no_patient_id = rewritten(path, tmp_path / "no-id.dcm", lambda ds: delattr(ds, "PatientID"))

    [status] = store(port, [no_patient_id])

    assert status.Status == 0xA900
    assert status.ErrorComment == "PatientID is missing or empty."
    assert not Instance.objects.exists()
    assert not Study.objects.exists()
    assert (spooled(spool), incoming(spool)) == ([], [])
    refused = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert refused.detail == {"channel": "dimse", "reason": "MISSING_ATTRIBUTE"}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_it_answers_what_the_parser_refuses_with_its_status(port, spool, synthetic_study, tmp_path):
    [path] = synthetic_study(instances=1)
    bad_uid = rewritten(path, tmp_path / "bad-uid.dcm",
                        lambda ds: setattr(ds, "StudyInstanceUID", "1.2.03.4"))  # fmt: skip

    [status] = store(port, [bad_uid])

    assert status.Status == 0xC000
    assert code_to_category(status.Status) == "Failure"
    assert not Instance.objects.exists()
    assert (spooled(spool), incoming(spool)) == ([], [])


def test_it_answers_a_resend_with_success_and_changes_nothing(port, spool, synthetic_study):
    [path] = synthetic_study(instances=1, patient=JANE)
    store(port, [path])
    before = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))

    [status] = store(port, [path])

    assert status.Status == 0x0000
    after = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))
    assert after == before
    assert incoming(spool) == []


def test_it_warns_of_a_conflicting_instance_and_keeps_the_first(
    port, spool, synthetic_study, tmp_path
):
    [path] = synthetic_study(instances=1, patient=JANE)
    store(port, [path])
    held = Instance.objects.get()
    first_bytes = spool.path_of(held.spool_name).read_bytes()
    changed = rewritten(path, tmp_path / "changed.dcm",
                        lambda ds: setattr(ds, "StudyDescription", "CHANGED"))  # fmt: skip

    [status] = store(port, [changed])

    assert status.Status == 0xB006
    assert code_to_category(status.Status) == "Warning"
    assert Instance.objects.get().sha256 == held.sha256
    assert spool.path_of(held.spool_name).read_bytes() == first_bytes
    assert len(spooled(spool)) == 1
    assert incoming(spool) == []
    assert AuditEvent.objects.filter(action=Action.INSTANCE_CONFLICT).count() == 1


def test_it_stores_a_retired_storage_class(port, synthetic_study, tmp_path):
    [path] = synthetic_study(instances=1, modality="US")

    def make_retired(data_set: pydicom.Dataset) -> None:
        data_set.SOPClassUID = RETIRED_ULTRASOUND
        data_set.file_meta.MediaStorageSOPClassUID = RETIRED_ULTRASOUND

    retired = rewritten(path, tmp_path / "retired-us.dcm", make_retired)

    [status] = store(port, [retired], sop_classes=(RETIRED_ULTRASOUND,))

    assert status.Status == 0x0000
    assert Instance.objects.get().sop_class_uid == RETIRED_ULTRASOUND


def test_it_refuses_associations_beyond_the_limit(start_listener):
    port = start_listener(max_associations=1)
    first = associate(port)
    assert first.is_established
    try:
        second = associate(port)
        assert second.is_rejected
        rejection = second.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
    finally:
        first.release()

    def admitted_again() -> bool:
        association = associate(port)
        established = association.is_established
        if established:
            association.release()
        return established

    assert wait_for(admitted_again)


@pytest.fixture
def listener_connections() -> Iterator[list]:
    """The database connections opened outside the test's own thread while it runs."""
    opened: list = []
    main = threading.main_thread()

    def record(sender, connection, **kwargs):
        if threading.current_thread() is not main:
            opened.append(connection)

    connection_created.connect(record, weak=False, dispatch_uid="test_scp")
    yield opened
    connection_created.disconnect(dispatch_uid="test_scp")


@pytest.mark.parametrize("ending", ["release", "abort"])
def test_it_closes_the_database_connection_when_the_association_ends(
    port, synthetic_study, listener_connections, ending
):
    [path] = synthetic_study(instances=1)
    association = associate(port)
    assert association.send_c_store(path).Status == 0x0000
    assert len(listener_connections) == 1

    getattr(association, ending)()

    assert wait_for(lambda: listener_connections[0].connection is None)


def test_it_closes_the_database_connection_of_a_refused_association(port, listener_connections):
    association = associate(port, calling="STRANGER")

    assert association.is_rejected
    assert len(listener_connections) == 1
    assert wait_for(lambda: listener_connections[0].connection is None)


def test_it_closes_the_database_connection_when_the_peer_vanishes(
    port, synthetic_study, listener_connections
):
    [path] = synthetic_study(instances=1)
    association = associate(port)
    assert association.send_c_store(path).Status == 0x0000

    # The sender's end goes away without A-RELEASE or A-ABORT (a crash, a cable pulled).
    association.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    association.dul.socket.socket.close()

    assert wait_for(lambda: listener_connections[0].connection is None)


def test_it_stores_from_concurrent_associations(port, origin, synthetic_study):
    studies = [synthetic_study(instances=3, seed=seed) for seed in (1, 2, 3)]
    statuses: list[int] = []

    def send(paths: list[Path]) -> None:
        statuses.extend(status.Status for status in store(port, paths))

    senders = [threading.Thread(target=send, args=(paths,)) for paths in studies]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)

    assert statuses == [0x0000] * 9
    assert Study.objects.filter(source_facility=origin).count() == 3
    assert Instance.objects.count() == 9


def test_it_answers_a_failure_to_store_with_out_of_resources(
    port, spool, synthetic_study, monkeypatch
):
    def broken(**kwargs):
        raise ConnectionError("the database went away")

    monkeypatch.setattr("studies.scp.study_ingest_instance", broken)
    [path] = synthetic_study(instances=1)

    [status] = store(port, [path])

    assert status.Status == 0xA700
    assert (spooled(spool), incoming(spool)) == ([], [])


def test_it_asks_callers_to_come_back_when_it_cannot_check_them(port, monkeypatch):
    def unreachable(calling_ae_title):
        raise ConnectionError("the database went away")

    monkeypatch.setattr("studies.scp.find_calling_facility", unreachable)

    association = associate(port)

    assert association.is_rejected
    rejection = association.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 1)
    assert not AuditEvent.objects.filter(action=Action.DICOM_ASSOCIATION_REFUSED).exists()
