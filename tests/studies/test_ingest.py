"""study_ingest_instance: the one place every way in ends."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pydicom
import pytest
from django.db import connection

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from studies.models import Instance, Patient, PatientIdentifier, Series, Study
from studies.services import (
    Channel,
    IngestOutcome,
    IngestSource,
    instance_received,
    spool_sweep,
    study_ingest_instance,
)
from studies.synthetic import SyntheticPatient

JANE = SyntheticPatient(patient_id="MRN100", name="DOE^JANE", birth_date="19800305", sex="F",
                        issuer="RGH")  # fmt: skip


@pytest.fixture
def dimse(origin) -> IngestSource:
    return IngestSource(origin, Channel.DIMSE, ActorKind.DICOM_NODE, "RIVERSIDE_PACS",
                        address="127.0.0.1")  # fmt: skip


def ingest(path: Path, source: IngestSource, spool):
    with path.open("rb") as file:
        incoming = spool.receive(file)
    return study_ingest_instance(path=incoming, source=source, spool=spool)


def spooled(spool) -> list[Path]:
    return sorted(spool.instances_dir.glob("*/*.dcm")) if spool.instances_dir.exists() else []


def incoming(spool) -> list[Path]:
    return sorted(spool.incoming_dir.glob("*")) if spool.incoming_dir.exists() else []


def test_it_indexes_spools_and_matches_a_first_time_patient(
    dimse, spool, synthetic_study, django_capture_on_commit_callbacks
):
    paths = synthetic_study(instances=3, patient=JANE)
    received = []
    instance_received.connect(lambda **kw: received.append(kw["instance_id"]), weak=False,
                              dispatch_uid="t")  # fmt: skip
    try:
        with django_capture_on_commit_callbacks(execute=True):
            results = [ingest(p, dimse, spool) for p in paths]
    finally:
        instance_received.disconnect(dispatch_uid="t")

    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 3
    study = Study.objects.get()
    assert study.match == Study.Match.MATCHED
    assert study.patient.name == "DOE^JANE"
    assert study.patient.birth_date == date(1980, 3, 5)
    assert (study.number_of_series, study.number_of_instances) == (1, 3)
    assert study.size_bytes == sum(p.stat().st_size for p in paths)
    assert study.modalities == ["CT"]
    assert study.state == Study.State.RECEIVING
    assert study.source_facility == dimse.facility
    identifier = PatientIdentifier.objects.get()
    assert (identifier.issuer, identifier.value) == ("RGH", "MRN100")
    instances = list(Instance.objects.order_by("pk"))
    assert [i.state for i in instances] == [Instance.State.RECEIVED] * 3
    assert sorted(received) == sorted(i.pk for i in instances)
    for instance, path in zip(instances, paths, strict=True):
        assert spool.path_of(instance.spool_name).read_bytes() == path.read_bytes()
    assert incoming(spool) == []
    # One audit row for the study's transfer, naming its first instance.
    received_event = AuditEvent.objects.get(action=Action.IMAGES_RECEIVED)
    assert received_event.study_id == study.pk
    assert received_event.patient_id == study.patient_id
    assert received_event.detail == {"channel": "dimse", "first_instance": instances[0].pk}
    assert AuditEvent.objects.filter(action=Action.PATIENT_CREATED).count() == 1


def test_it_answers_an_identical_resend_as_a_duplicate_and_changes_nothing(
    dimse, spool, synthetic_study
):
    [path] = synthetic_study(instances=1, patient=JANE)
    ingest(path, dimse, spool)
    before = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))

    result = ingest(path, dimse, spool)

    assert result.outcome == IngestOutcome.DUPLICATE
    assert result.ok
    assert result.dimse_status == 0x0000
    after = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))
    assert after == before
    assert incoming(spool) == []


def test_it_refuses_the_same_instance_with_other_content_and_keeps_the_first(
    dimse, spool, synthetic_study, tmp_path
):
    [path] = synthetic_study(instances=1, patient=JANE)
    ingest(path, dimse, spool)
    held = Instance.objects.get()
    data_set = pydicom.dcmread(path)
    data_set.StudyDescription = "CHANGED"
    changed = tmp_path / "changed.dcm"
    data_set.save_as(changed)

    result = ingest(changed, dimse, spool)

    assert result.outcome == IngestOutcome.CONFLICT
    assert result.dimse_status == 0xB006
    assert result.stow_failure_reason == 0x0111
    assert Instance.objects.get().sha256 == held.sha256
    assert spool.path_of(held.spool_name).read_bytes() == path.read_bytes()
    assert len(spooled(spool)) == 1
    assert incoming(spool) == []
    event = AuditEvent.objects.get(action=Action.INSTANCE_CONFLICT)
    assert event.outcome == Outcome.DENIED


def test_it_refuses_bad_files_with_an_audit_row_and_writes_nothing(dimse, spool, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not an image" * 50)

    result = ingest(junk, dimse, spool)

    assert result.outcome == IngestOutcome.REFUSED
    assert result.dimse_status == 0xC000
    assert "not a DICOM" in result.message
    assert not Study.objects.exists()
    assert not Patient.objects.exists()
    assert spooled(spool) == []
    assert incoming(spool) == []
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "dimse", "reason": "NOT_DICOM"}
    assert event.client_address == "127.0.0.1"


def test_a_known_identifier_with_matching_demographics_joins_the_same_patient(
    dimse, spool, synthetic_study
):
    for seed in (1, 2):
        for path in synthetic_study(instances=1, patient=JANE, seed=seed):
            ingest(path, dimse, spool)
    patients = {s.patient_id for s in Study.objects.all()}
    assert len(patients) == 1
    assert Patient.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "birth_date", "why"),
    [
        ("ROE^JANE", "19800305", "name"),
        ("DOE^JANE", "19810305", "birth date"),
    ],
)
def test_a_disagreeing_study_waits_for_a_person(
    dimse, spool, synthetic_study, name, birth_date, why
):
    [first] = synthetic_study(instances=1, patient=JANE, seed=1)
    ingest(first, dimse, spool)
    known = Patient.objects.get()
    other = SyntheticPatient(patient_id="MRN100", name=name, birth_date=birth_date, issuer="RGH")
    [second] = synthetic_study(instances=1, patient=other, seed=2)

    result = ingest(second, dimse, spool)

    assert result.outcome == IngestOutcome.STORED
    waiting = Study.objects.get(match=Study.Match.PENDING)
    assert waiting.patient is None
    assert waiting.candidate_patient == known
    assert why in waiting.match_reason
    assert Patient.objects.count() == 1
    assert AuditEvent.objects.filter(
        action=Action.STUDY_QUEUED_FOR_RECONCILIATION, study_id=waiting.pk
    ).exists()


def test_case_and_middle_names_are_not_a_disagreement(dimse, spool, synthetic_study):
    ingest(synthetic_study(instances=1, patient=JANE, seed=1)[0], dimse, spool)
    variant = SyntheticPatient(patient_id="MRN100", name="Doe^Jane^Marie", birth_date="19800305",
                               issuer="RGH")  # fmt: skip
    ingest(synthetic_study(instances=1, patient=variant, seed=2)[0], dimse, spool)
    assert not Study.objects.exclude(match=Study.Match.MATCHED).exists()


def test_without_an_issuer_the_facility_default_is_assumed(dimse, spool, synthetic_study):
    dimse.facility.default_issuer_of_patient_id = "RGH-MRN"
    dimse.facility.save()
    no_issuer = SyntheticPatient(patient_id="MRN7", name="DOE^JOHN", issuer="")
    ingest(synthetic_study(instances=1, patient=no_issuer)[0], dimse, spool)
    assert PatientIdentifier.objects.get().issuer == "RGH-MRN"


def test_media_without_an_issuer_always_waits_for_a_person(
    origin, front_desk, spool, synthetic_study
):
    upload = IngestSource.for_user(facility=origin, channel=Channel.UPLOAD, user=front_desk)
    no_issuer = SyntheticPatient(patient_id="12345", name="DOE^JOHN", issuer="")

    ingest(synthetic_study(instances=1, patient=no_issuer)[0], upload, spool)

    study = Study.objects.get()
    assert study.match == Study.Match.PENDING
    assert study.patient is None
    assert not PatientIdentifier.objects.exists()


def test_an_instance_naming_another_patient_in_a_known_study_is_a_conflict(
    dimse, spool, synthetic_study, tmp_path
):
    first, second = synthetic_study(instances=2, patient=JANE)
    ingest(first, dimse, spool)
    data_set = pydicom.dcmread(second)
    data_set.PatientID = "SOMEONE-ELSE"
    moved = tmp_path / "moved.dcm"
    data_set.save_as(moved)

    result = ingest(moved, dimse, spool)

    assert result.outcome == IngestOutcome.CONFLICT
    assert Study.objects.get().number_of_instances == 1
    assert len(spooled(spool)) == 1


def test_a_database_failure_leaves_neither_row_nor_file(dimse, spool, synthetic_study, monkeypatch):
    [path] = synthetic_study(instances=1, patient=JANE)

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("studies.services.audit_record", broken)

    result = ingest(path, dimse, spool)

    assert result.outcome == IngestOutcome.FAILED
    assert result.dimse_status == 0xA700
    assert not Instance.objects.exists()
    assert not Study.objects.exists()
    assert spooled(spool) == []
    assert incoming(spool) == []


def test_a_failure_after_the_file_moved_removes_it_again(
    dimse, spool, synthetic_study, monkeypatch
):
    [path] = synthetic_study(instances=1, patient=JANE)

    def broken(*args, **kwargs):
        raise RuntimeError("commit failed")

    monkeypatch.setattr("studies.services.transaction.on_commit", broken)

    result = ingest(path, dimse, spool)

    assert result.outcome == IngestOutcome.FAILED
    assert not Instance.objects.exists()
    assert spooled(spool) == []
    assert incoming(spool) == []


def test_the_sweeper_removes_what_a_crash_left_and_nothing_else(dimse, spool, synthetic_study):
    [kept] = synthetic_study(instances=1, patient=JANE)
    ingest(kept, dimse, spool)
    indexed = spool.path_of(Instance.objects.get().spool_name)
    # A crash between the rename and the commit, and one in the middle of a transfer.
    orphan = spool.path_of(spool.new_spool_name())
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    unfinished = spool.new_incoming()

    young = spool_sweep(spool=spool, older_than_seconds=3600)
    assert (young.orphans_removed, young.stale_incoming_removed) == (0, 0)

    report = spool_sweep(spool=spool, older_than_seconds=-1)

    assert (report.orphans_removed, report.stale_incoming_removed) == (1, 1)
    assert indexed.exists()
    assert not orphan.exists()
    assert not unfinished.exists()


@pytest.mark.django_db(transaction=True)
def test_two_senders_racing_with_one_instance_store_it_once(origin, settings, synthetic_study):
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is proven on PostgreSQL")
    from studies.spool import get_spool

    spool = get_spool()
    source = IngestSource(origin, Channel.DIMSE, ActorKind.DICOM_NODE, "A")
    [path] = synthetic_study(instances=1, patient=JANE)
    incoming_files = [spool.receive(path.open("rb")) for _ in range(4)]
    results = []
    barrier = threading.Barrier(len(incoming_files))

    def send(file):
        barrier.wait()
        try:
            results.append(study_ingest_instance(path=file, source=source, spool=spool).outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(f,)) for f in incoming_files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == sorted([IngestOutcome.STORED] + [IngestOutcome.DUPLICATE] * 3)
    assert Instance.objects.count() == 1
    assert Series.objects.count() == 1
    assert Study.objects.get().number_of_instances == 1
    assert len(spooled(spool)) == 1
    assert incoming(spool) == []


def test_the_same_instance_with_other_file_meta_is_a_duplicate(
    dimse, spool, synthetic_study, tmp_path
):
    """Sent again another way (another sender's implementation name in the file meta)."""
    [path] = synthetic_study(instances=1, patient=JANE)
    ingest(path, dimse, spool)
    data_set = pydicom.dcmread(path)
    data_set.file_meta.ImplementationVersionName = "OTHER_SENDER_1"
    resent = tmp_path / "resent.dcm"
    data_set.save_as(resent)
    assert resent.read_bytes() != path.read_bytes()

    result = ingest(resent, dimse, spool)

    assert result.outcome == IngestOutcome.DUPLICATE
    assert Instance.objects.count() == 1


def test_later_instances_of_a_transfer_skip_the_lookups_but_not_the_checks(
    dimse, spool, synthetic_study, django_assert_max_num_queries, tmp_path
):
    first, second, third = synthetic_study(instances=3, patient=JANE)
    ingest(first, dimse, spool)
    with django_assert_max_num_queries(7):
        assert ingest(second, dimse, spool).outcome == IngestOutcome.STORED
    data_set = pydicom.dcmread(third)
    data_set.PatientID = "SOMEONE-ELSE"
    moved = tmp_path / "moved.dcm"
    data_set.save_as(moved)
    assert ingest(moved, dimse, spool).outcome == IngestOutcome.CONFLICT


def test_an_instance_of_another_study_than_expected_is_refused(dimse, spool, synthetic_study):
    [path] = synthetic_study(instances=1, patient=JANE)

    result = ingest_expecting(path, dimse, spool, study_instance_uid="1.2.3.4")

    assert result.outcome == IngestOutcome.REFUSED
    assert (result.dimse_status, result.stow_failure_reason) == (0xA900, 0xA900)
    assert result.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
    assert not Instance.objects.exists()
    assert spooled(spool) == []
    assert incoming(spool) == []
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "dimse", "reason": "STUDY_MISMATCH"}


def ingest_expecting(path: Path, source: IngestSource, spool, *, study_instance_uid: str):
    with path.open("rb") as file:
        received = spool.receive(file)
    return study_ingest_instance(
        path=received, source=source, spool=spool, expected_study_instance_uid=study_instance_uid
    )
