"""Study downloads: a streamed zip of the files as received, with a DICOMDIR, that stops when
access ends and is refused whole when an object is missing."""

from __future__ import annotations

import bisect
import datetime
import hashlib
import io
import logging
import subprocess
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
import pytest
from django.conf import settings
from django.http import Http404, HttpResponse
from django.urls import reverse
from pydicom.fileset import FileSet

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from consent.models import ConsentGrant, Purpose
from consent.services import GrantRequest, grant_consent, withdraw_consent
from sharing.access import ReadAccess
from sharing.archive import (
    AccessEnded,
    ArchivedInstance,
    EntrySizeMismatch,
    ZipMember,
    ZipStream,
    build_dicomdir,
)
from sharing.crypto import DEFAULT_SEGMENT_SIZE, IntegrityError
from sharing.download_views import make_download_view
from sharing.models import StoredObject
from sharing.services import Reader, publish_spooled
from sharing.store import ObjectMissing, ObjectStore, StoreUnavailable
from studies.models import Instance, Patient, Series, Study
from tests.sharing.conftest import JANE, ingest_files

DCMDUMP, DCMFTEST = "/usr/bin/dcmdump", "/usr/bin/dcmftest"


# --- Fixtures -------------------------------------------------------------------------------------


def publish() -> None:
    while publish_spooled(settings.PORTAL_NODE).more:
        pass


def owned_by(study: Study, user) -> Study:
    Patient.objects.filter(pk=study.patient_id).update(account=user)
    study.refresh_from_db()
    return study


@pytest.fixture
def published(received_study, store, patient) -> Study:
    """Three CT images of the `patient` user, published to the encrypted store."""
    study = received_study(instances=3, rows=64)
    publish()
    return owned_by(study, patient)


@pytest.fixture
def two_series(synthetic_study, pacs, store, patient) -> Study:
    """One study of two series (2 and 3 images), published, the `patient` user's."""
    paths = synthetic_study(instances=5, rows=32, patient=JANE, seed=5)
    second_series = pydicom.uid.generate_uid()
    for path in paths[2:]:
        data_set = pydicom.dcmread(path)
        data_set.SeriesInstanceUID = second_series
        data_set.SeriesNumber = 2
        data_set.save_as(path, enforce_file_format=True)
    ingest_files(paths, pacs)
    publish()
    return owned_by(Study.objects.latest("pk"), patient)


@pytest.fixture
def large(received_study, store, patient) -> Study:
    """Two images of 1024 x 1024 (2 MiB each: three segments), published."""
    study = received_study(instances=2, rows=1024)
    publish()
    return owned_by(study, patient)


def study_url(study: Study) -> str:
    return reverse("downloads:study", kwargs={"study_id": study.public_id})


def series_url(study: Study, series: Series) -> str:
    return reverse(
        "downloads:series", kwargs={"study_id": study.public_id, "series_id": series.public_id}
    )


def body(response) -> bytes:
    assert response.streaming, "a download streams"
    return b"".join(response.streaming_content)


def drain(chunks: Iterator[bytes], *, into: bytearray) -> None:
    """Receive the rest of a stream, keeping what arrives before it fails."""
    for chunk in chunks:
        into += chunk


def unpack(data: bytes, folder: Path) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None  # every CRC-32 checks
    archive.extractall(folder)
    return archive


def grant_to(receiver, study: Study, by) -> object:
    return grant_consent(
        GrantRequest(
            patient=study.patient,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
            grantee_facility=receiver,
        ),
        by=by,
    )


# --- The whole study ------------------------------------------------------------------------------


def test_it_downloads_the_study_as_the_files_received_with_a_dicomdir(
    client, patient, published, tmp_path
) -> None:
    client.force_login(patient)
    response = client.get(study_url(published))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="study-2026-01-02.zip"'
    assert response["Cache-Control"] == "no-store"
    assert response["X-Accel-Buffering"] == "no"
    data = body(response)
    assert int(response["Content-Length"]) == len(data)

    archive = unpack(data, tmp_path)
    names = archive.namelist()
    assert names == ["DICOMDIR", "DICOM/S0001/IM000001", "DICOM/S0001/IM000002",
                     "DICOM/S0001/IM000003"]  # fmt: skip
    assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}

    # Every file is the instance exactly as received, and the DICOMDIR finds every one.
    instances = {i.sop_instance_uid: i for i in Instance.objects.filter(study=published)}
    file_set = FileSet(tmp_path / "DICOMDIR")
    assert len(file_set) == len(instances) == 3
    for found in file_set:
        instance = instances.pop(found.SOPInstanceUID)
        name = Path(found.path).relative_to(tmp_path).as_posix()
        assert found.ReferencedFileID == name.split("/")
        assert Path(found.path).read_bytes() == archive.read(name)
        assert hashlib.sha256(Path(found.path).read_bytes()).hexdigest() == instance.sha256
        assert found.SOPClassUID == instance.sop_class_uid
        assert found.TransferSyntaxUID == instance.transfer_syntax_uid
        assert found.load().SOPInstanceUID == instance.sop_instance_uid
    assert instances == {}
    assert file_set.find_values("PatientID") == ["MRN100"]
    assert [str(name) for name in file_set.find_values("PatientName")] == ["DOE^JANE"]
    assert file_set.find_values("StudyInstanceUID") == [published.study_instance_uid]


def test_dcmtk_reads_the_dicomdir_and_the_files(client, patient, published, tmp_path) -> None:
    client.force_login(patient)
    unpack(body(client.get(study_url(published))), tmp_path)
    files = sorted(str(path) for path in (tmp_path / "DICOM").rglob("IM*"))

    dumped = subprocess.run([DCMDUMP, str(tmp_path / "DICOMDIR")], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr
    assert "MediaStorageDirectoryStorage" in dumped.stdout
    for record_type in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        assert f"[{record_type}" in dumped.stdout
    assert "[DICOM\\S0001\\IM000003]" in dumped.stdout
    assert dumped.stderr == ""

    tested = subprocess.run([DCMFTEST, *files], capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.splitlines() == [f"yes: {name}" for name in files]
    one = subprocess.run([DCMDUMP, files[0]], capture_output=True, text=True, check=False)
    assert one.returncode == 0, one.stderr
    assert "(0008,0060) CS [CT]" in one.stdout


def test_the_download_is_audited_as_a_whole_and_per_image(client, patient, published) -> None:
    client.force_login(patient)
    response = client.get(study_url(published))
    body(response)
    downloaded = AuditEvent.objects.get(action=Action.STUDY_DOWNLOADED)
    assert downloaded.outcome == Outcome.ALLOWED
    assert (downloaded.actor_id, downloaded.purpose) == (str(patient.pk), "PATRQT")
    assert (downloaded.study_id, downloaded.patient_id) == (published.pk, published.patient_id)
    assert downloaded.detail == {"instances": 3, "bytes": int(response["Content-Length"])}
    reads = AuditEvent.objects.filter(action=Action.INSTANCE_READ, outcome=Outcome.ALLOWED)
    assert reads.count() == 3


def test_the_originating_facility_s_staff_may_download(client, front_desk, published) -> None:
    client.force_login(front_desk)
    response = client.get(study_url(published))
    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(body(response))).testzip() is None
    assert AuditEvent.objects.get(action=Action.STUDY_DOWNLOADED).purpose == "TREAT"


# --- One series -----------------------------------------------------------------------------------


def test_a_series_download_holds_that_series_only(client, patient, two_series, tmp_path) -> None:
    second = Series.objects.get(study=two_series, series_number=2)
    client.force_login(patient)
    response = client.get(series_url(two_series, second))
    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        'attachment; filename="study-2026-01-02-series-2.zip"'
    )
    archive = unpack(body(response), tmp_path)
    assert archive.namelist() == ["DICOMDIR", "DICOM/S0001/IM000001", "DICOM/S0001/IM000002",
                                  "DICOM/S0001/IM000003"]  # fmt: skip
    file_set = FileSet(tmp_path / "DICOMDIR")
    expected = set(
        Instance.objects.filter(series=second).values_list("sop_instance_uid", flat=True)
    )
    assert {found.SOPInstanceUID for found in file_set} == expected
    assert file_set.find_values("SeriesInstanceUID") == [second.series_instance_uid]
    event = AuditEvent.objects.get(action=Action.SERIES_DOWNLOADED)
    assert (event.target_id, event.outcome) == (str(second.pk), Outcome.ALLOWED)


def test_the_whole_study_holds_both_series_in_order(client, patient, two_series, tmp_path) -> None:
    client.force_login(patient)
    archive = unpack(body(client.get(study_url(two_series))), tmp_path)
    assert [name for name in archive.namelist() if name != "DICOMDIR"] == [
        "DICOM/S0001/IM000001", "DICOM/S0001/IM000002",
        "DICOM/S0002/IM000001", "DICOM/S0002/IM000002", "DICOM/S0002/IM000003",
    ]  # fmt: skip
    file_set = FileSet(tmp_path / "DICOMDIR")
    assert len(file_set) == 5
    assert len(file_set.find_values("SeriesInstanceUID")) == 2


def test_a_series_of_another_study_is_404_and_audited(client, patient, two_series, published):
    client.force_login(patient)
    elsewhere = Series.objects.get(study=two_series, series_number=2)
    response = client.get(series_url(published, elsewhere))
    assert response.status_code == 404
    event = AuditEvent.objects.get(action=Action.STUDY_DOWNLOADED)
    assert (event.outcome, event.study_id) == (Outcome.DENIED, published.pk)
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


# --- Who may not ----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["other_patient", "stranger", "clinician"])
def test_anyone_else_gets_404_and_a_denied_audit_row(client, request, who, published) -> None:
    client.force_login(request.getfixturevalue(who))
    response = client.get(study_url(published))
    assert response.status_code == 404
    assert not response.streaming
    event = AuditEvent.objects.get(action=Action.STUDY_DOWNLOADED)
    assert (event.outcome, event.study_id) == (Outcome.DENIED, published.pk)
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


def test_anonymous_visitors_are_sent_to_sign_in(client, published) -> None:
    response = client.get(study_url(published))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.mark.parametrize(
    "path",
    [
        "/download/studies/00000000-0000-0000-0000-000000000000/",
        "/download/studies/not-a-uuid/",
        "/download/studies/00000000-0000-0000-0000-000000000000/series/nope/",
    ],
)
def test_unknown_or_malformed_ids_are_404(client, patient, path) -> None:
    client.force_login(patient)
    assert client.get(path).status_code == 404


def test_an_unknown_series_is_404(client, patient, published) -> None:
    client.force_login(patient)
    response = client.get(f"{study_url(published)}series/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404


def test_other_methods_are_refused(client, patient, published) -> None:
    client.force_login(patient)
    assert client.post(study_url(published)).status_code == 405
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


# --- What cannot be downloaded whole --------------------------------------------------------------


def test_a_study_still_being_stored_gets_a_plain_page(client, patient, received_study) -> None:
    study = owned_by(received_study(instances=2), patient)  # in the spool, not published
    client.force_login(patient)
    response = client.get(study_url(study))
    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert not response.streaming
    assert "still being stored" in response.content.decode()
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


@pytest.mark.parametrize("damage", ["deleted", "no_row"])
def test_a_missing_object_is_an_error_page_and_an_alert_never_a_zip(
    client, patient, published, store: ObjectStore, caplog, damage
) -> None:
    stored = StoredObject.objects.filter(instance__study=published).order_by("pk")[1]
    if damage == "deleted":
        store.delete(stored.name)
    else:
        StoredObject.objects.filter(pk=stored.pk).delete()
    client.force_login(patient)
    with caplog.at_level(logging.CRITICAL, logger="sharing.download_views"):
        response = client.get(study_url(published))
    assert response.status_code == 500
    assert not response.streaming
    assert response["Content-Type"].startswith("text/html")
    assert "cannot be read from storage" in response.content.decode()
    assert any(record.getMessage().startswith("ALERT: ") for record in caplog.records)
    assert "DOE" not in caplog.text  # no PHI in the logs
    assert "MRN100" not in caplog.text
    event = AuditEvent.objects.get(action=Action.DOWNLOAD_FAILED)
    assert (event.outcome, event.detail) == (Outcome.ERROR, {"missing": 1})
    # Nothing was read: no image left the store for a download that could not be whole.
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()
    assert not AuditEvent.objects.filter(action=Action.STUDY_DOWNLOADED).exists()


@pytest.mark.parametrize("damage", ["truncated", "deleted_meanwhile"])
def test_an_object_failing_mid_stream_breaks_the_download_off(
    client, patient, published, store: ObjectStore, caplog, damage
) -> None:
    """An object cut short (caught by decryption), or deleted after the check before the first
    byte: the response breaks off before the central directory, with an alert."""
    stored = StoredObject.objects.filter(instance__study=published).order_by("pk")[1]
    if damage == "truncated":
        with store.open(stored.name) as original:
            shorter = original.read()[:-1000]
        store.put(stored.name, io.BytesIO(shorter))
    client.force_login(patient)
    response = client.get(study_url(published))
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    received = bytearray(next(chunks))
    if damage == "deleted_meanwhile":
        store.delete(stored.name)
    expected = IntegrityError if damage == "truncated" else ObjectMissing
    with caplog.at_level(logging.CRITICAL), pytest.raises(expected):
        drain(chunks, into=received)
    assert len(received) < int(response["Content-Length"])
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))
    assert any(record.getMessage().startswith("ALERT: ") for record in caplog.records)
    failed = AuditEvent.objects.get(action=Action.DOWNLOAD_FAILED)
    assert failed.outcome == Outcome.ERROR
    assert failed.detail["stopped"] is True
    assert failed.detail["sent_bytes"] == len(received)


def test_a_store_that_does_not_answer_is_a_try_again_page(
    client, patient, published, monkeypatch
) -> None:
    def down(self, name):
        raise StoreUnavailable("ConnectTimeoutError")

    monkeypatch.setattr(ObjectStore, "exists", down)
    client.force_login(patient)
    response = client.get(study_url(published))
    assert response.status_code == 503
    assert "not answering" in response.content.decode()
    assert AuditEvent.objects.get(action=Action.DOWNLOAD_FAILED).outcome == Outcome.ERROR


# --- Access ending while the zip streams ----------------------------------------------------------


@pytest.mark.parametrize("withdraw_after", [100, DEFAULT_SEGMENT_SIZE + 100])
def test_withdrawing_consent_stops_a_running_download_within_a_segment(
    client, clinician, receiver, patient, large, withdraw_after
) -> None:
    """A receiving facility's staff download under a grant; the patient withdraws it part-way
    (after the DICOMDIR, or inside the first image): nothing more is sent, and what arrived is
    not a zip anything opens."""
    grant = grant_to(receiver, large, patient)
    client.force_login(clinician)
    response = client.get(study_url(large))
    assert response.status_code == 200
    announced = int(response["Content-Length"])
    chunks = iter(response.streaming_content)
    received = bytearray()
    while len(received) < withdraw_after:
        received += next(chunks)
    withdraw_consent(grant, by=patient, reason="changed my mind")
    before = len(received)
    with pytest.raises(AccessEnded):
        drain(chunks, into=received)
    assert len(received) - before <= DEFAULT_SEGMENT_SIZE
    assert len(received) < announced
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))
    stopped = AuditEvent.objects.filter(action=Action.STUDY_DOWNLOADED).order_by("pk")
    assert [event.outcome for event in stopped] == [Outcome.ALLOWED, Outcome.DENIED]
    assert stopped[1].detail["stopped"] is True
    assert stopped[1].detail["sent_bytes"] == len(received)


def test_a_study_shredded_mid_download_stops_it(client, patient, large) -> None:
    from sharing.services import study_shred

    client.force_login(patient)
    response = client.get(study_url(large))
    chunks = iter(response.streaming_content)
    received = bytearray(next(chunks))  # the DICOMDIR's local header
    study_shred(large, reason="test")
    with pytest.raises(AccessEnded):
        drain(chunks, into=received)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))


# --- The same views for another kind of reader (share links) -------------------------------------


def test_a_view_for_another_resolver_passes_the_route_and_its_answer_through(rf, published) -> None:
    calls = []

    def resolve(request, study, /, **route):
        calls.append((study.pk, route))
        return HttpResponse("Access was withdrawn", status=410)

    view = make_download_view(resolve)
    response = view(rf.get("/"), study_id=str(published.public_id), link_id="abc")
    assert (response.status_code, response.content) == (410, b"Access was withdrawn")
    assert calls == [(published.pk, {"link_id": "abc"})]
    reads = (Action.STUDY_DOWNLOADED, Action.INSTANCE_READ)
    assert not AuditEvent.objects.filter(action__in=reads).exists()


@pytest.mark.parametrize("allows", [True, False])
def test_the_access_decision_has_the_last_word_whoever_resolved_it(rf, published, allows) -> None:
    """A resolver's ReadAccess is asked again before anything is planned or sent; its reader
    is who the audit log names."""
    reader = Reader(ActorKind.SHARE_LINK, "link-7", purpose="CLINTRCH")
    view = make_download_view(
        lambda request, study, /, **route: ReadAccess(reader, lambda s: allows)
    )
    request = rf.get("/")
    if allows:
        response = view(request, study_id=str(published.public_id))
        assert response.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(body(response))).testzip() is None
    else:
        with pytest.raises(Http404):
            view(request, study_id=str(published.public_id))
    event = AuditEvent.objects.get(action=Action.STUDY_DOWNLOADED)
    assert event.outcome == (Outcome.ALLOWED if allows else Outcome.DENIED)
    assert (event.actor_kind, event.actor_id, event.purpose) == ("share_link", "link-7", "CLINTRCH")
    reads = AuditEvent.objects.filter(action=Action.INSTANCE_READ)
    assert {read.actor_id for read in reads} == ({"link-7"} if allows else set())


# --- The ZIP writer on its own --------------------------------------------------------------------

ZEROS = bytes(DEFAULT_SEGMENT_SIZE)
MODIFIED = datetime.datetime(2026, 1, 2, 9, 30, 12, tzinfo=datetime.UTC)


def zeros_then(size: int, tail: bytes) -> Iterator[bytes]:
    """`size` bytes: zero segments, the same object each time, then `tail`."""
    left = size - len(tail)
    while left >= len(ZEROS):
        yield ZEROS
        left -= len(ZEROS)
    yield bytes(left) + tail


class SparseRecording(io.RawIOBase):
    """A seekable file of a stream's bytes that keeps the ZEROS chunks as their length only,
    so a 6 GiB archive can be read by zipfile without holding or writing it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.starts: list[int] = []
        self.pieces: list[bytes | int] = []
        position = 0
        for chunk in chunks:
            self.starts.append(position)
            self.pieces.append(len(chunk) if chunk is ZEROS else bytes(chunk))
            position += len(chunk)
        self.size = position
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self.size - self.position)
        out = bytearray()
        while len(out) < wanted:
            index = bisect.bisect_right(self.starts, self.position + len(out)) - 1
            piece = self.pieces[index]
            inside = self.position + len(out) - self.starts[index]
            length = piece if isinstance(piece, int) else len(piece)
            take = min(length - inside, wanted - len(out))
            out += bytes(take) if isinstance(piece, int) else piece[inside : inside + take]
        buffer[:wanted] = out
        self.position += wanted
        return wanted


def test_zip64_archives_larger_than_4_gib_read_back() -> None:
    big = (4 << 30) + 3  # past 4 GiB, so the sizes themselves need ZIP64
    members = [
        ZipMember("first", 5, lambda: [b"first"]),
        ZipMember("big", big, lambda: zeros_then(big, b"end")),
        ZipMember("after", 5, lambda: [b"after"]),  # its offset needs ZIP64
    ]
    stream = ZipStream(members, modified=MODIFIED)
    recording = SparseRecording(stream)
    assert recording.size == stream.content_length

    archive = zipfile.ZipFile(recording)
    infos = {info.filename: info for info in archive.infolist()}
    assert infos["big"].file_size == infos["big"].compress_size == big
    assert infos["after"].header_offset > 0xFFFFFFFF
    expected_crc = 0
    for chunk in zeros_then(big, b"end"):
        expected_crc = zlib.crc32(chunk, expected_crc)
    written_crc = infos["big"].CRC
    assert written_crc == expected_crc
    assert archive.read("after") == b"after"  # found through the ZIP64 offset, CRC checked
    assert archive.read("first") == b"first"
    with archive.open("big") as opened:
        assert opened.read(10) == bytes(10)
    assert infos["first"].date_time == (2026, 1, 2, 9, 30, 12)


def test_the_announced_length_is_the_length_sent() -> None:
    for sizes in ([], [0], [1, 0, 70_000], [3 * DEFAULT_SEGMENT_SIZE + 1]):
        members = [
            ZipMember(f"f{index}", size, lambda size=size: [b"x" * size])
            for index, size in enumerate(sizes)
        ]
        stream = ZipStream(members, modified=MODIFIED)
        data = b"".join(stream)
        assert len(data) == stream.content_length
        archive = zipfile.ZipFile(io.BytesIO(data))
        assert [info.file_size for info in archive.infolist()] == sizes
        assert archive.testzip() is None


@pytest.mark.parametrize("given", [b"shor", b"longer"])
def test_a_source_of_another_size_stops_the_archive(given: bytes) -> None:
    stream = ZipStream([ZipMember("f", 5, lambda: [given])], modified=MODIFIED)
    received = bytearray()
    with pytest.raises(EntrySizeMismatch):
        drain(iter(stream), into=received)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))


@pytest.mark.parametrize("name", ["/abs", "a/../b", "", "dir/", "naïve"])
def test_member_names_are_relative_ascii_paths(name: str) -> None:
    with pytest.raises(ValueError, match="relative ASCII"):
        ZipMember(name, 0, lambda: [])


def test_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        ZipStream([ZipMember("a", 0, list), ZipMember("a", 0, list)], modified=MODIFIED)


# --- The DICOMDIR on its own ----------------------------------------------------------------------


def test_the_dicomdir_keeps_non_ascii_names_and_fills_missing_numbers(tmp_path) -> None:
    study = Study(pk=1, patient_name="MÜLLER^JOSÉ", patient_id_value="ÄB-1",
                  study_instance_uid="1.2.3", study_date=datetime.date(2025, 3, 4),
                  study_time=datetime.time(8, 5, 6, 120000), accession_number="A1",
                  study_id="", description="Thorax")  # fmt: skip
    series = Series(
        pk=7, study=study, series_instance_uid="1.2.3.4", modality="", series_number=None
    )
    instances = [
        Instance(pk=pk, study=study, series=series, sop_instance_uid=f"1.2.3.4.{pk}",
                 sop_class_uid=pydicom.uid.CTImageStorage, instance_number=None,
                 transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian, size_bytes=1)
        for pk in (1, 2)
    ]  # fmt: skip
    archived = [
        ArchivedInstance(instance, ("DICOM", "S0001", f"IM{index:06d}"))
        for index, instance in enumerate(instances, start=1)
    ]
    (tmp_path / "DICOMDIR").write_bytes(build_dicomdir(study, [series], archived))
    directory = pydicom.dcmread(tmp_path / "DICOMDIR")
    assert directory.SpecificCharacterSet == "ISO_IR 192"
    records = {record.DirectoryRecordType: record for record in directory.DirectoryRecordSequence}
    assert str(records["PATIENT"].PatientName) == "MÜLLER^JOSÉ"
    assert records["PATIENT"].PatientID == "ÄB-1"
    assert records["STUDY"].StudyTime == "080506.120000"
    assert (records["SERIES"].SeriesNumber, records["SERIES"].Modality) == (1, "OT")
    numbers = [r.InstanceNumber for r in directory.DirectoryRecordSequence if "InstanceNumber" in r]
    assert numbers == [1, 2]
    dumped = subprocess.run([DCMDUMP, str(tmp_path / "DICOMDIR")], capture_output=True,
                            check=False)  # fmt: skip
    assert dumped.returncode == 0
