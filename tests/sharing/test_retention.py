"""How long studies stay, and how they end: retention dates, the crypto-shred, legal holds."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.conf import settings
from django.test import RequestFactory
from django.utils import timezone

from audit.codes import Action, ActorKind
from audit.models import AuditEvent
from sharing import services
from sharing.crypto import KeyringError
from sharing.keys import existing_study_data_key
from sharing.models import StoredObject, StudyKey
from sharing.services import (
    ObjectUnavailable,
    Reader,
    publish_spooled,
    read_instance,
    retention_sweep,
    study_set_legal_hold,
    study_shred,
)
from sharing.store import StoreUnavailable, get_object_store
from sharing.tasks import retention_sweep_task
from studies.models import Instance, Series, Study
from studies.services import Channel, IngestSource, retention_end
from tests.sharing.conftest import JANE, ingest_files

NODE = settings.PORTAL_NODE


@pytest.mark.parametrize(
    ("study_date", "months", "received_on", "expected"),
    [
        (date(2026, 3, 10), 12, date(2026, 3, 10), date(2027, 3, 10)),
        # Never less than the retention after it reached the portal: an old CD lasts a year.
        (date(2015, 6, 1), 12, date(2026, 11, 23), date(2027, 11, 23)),
        (None, 12, date(2026, 11, 23), date(2027, 11, 23)),
        (date(2026, 1, 31), 13, date(2026, 1, 31), date(2027, 2, 28)),  # month ends clamp
        (date(2024, 2, 29), 12, date(2024, 2, 29), date(2025, 2, 28)),
        (date(2026, 5, 1), 120, date(2026, 5, 1), date(2036, 5, 1)),
    ],
)
def test_retention_ends_months_after_the_study(study_date, months, received_on, expected):
    assert retention_end(study_date, months, received_on=received_on) == expected


def test_a_received_study_gets_its_facility_s_retention(received_study, origin) -> None:
    origin.retention_months = 84
    origin.save()
    study = received_study(instances=1)
    assert study.available_until >= timezone.localdate() + timedelta(days=84 * 30)


@pytest.fixture
def published_study(received_study, store) -> Study:
    study = received_study(instances=3)
    publish_spooled(NODE)
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE
    return study


def test_shredding_destroys_the_key_and_the_objects(published_study) -> None:
    store = get_object_store()
    names = list(StoredObject.objects.values_list("name", flat=True))
    instance = Instance.objects.filter(study=published_study).first()

    report = study_shred(published_study, reason="patient_request")

    assert (report.objects, report.objects_left) == (3, 0)
    assert not StudyKey.objects.filter(study=published_study).exists()
    assert not any(store.exists(name) for name in names)
    assert not Series.objects.filter(study=published_study).exists()
    published_study.refresh_from_db()
    assert published_study.state == Study.State.SHREDDED
    assert published_study.number_of_instances == 0
    event = AuditEvent.objects.get(action=Action.STUDY_SHREDDED)
    assert event.study_id == published_study.pk
    assert event.detail == {"reason": "patient_request", "objects": 3}
    with pytest.raises(ObjectUnavailable):
        read_instance(instance, Reader("system"))
    with pytest.raises(KeyringError):
        existing_study_data_key(published_study.pk)


def test_shredding_twice_is_harmless(published_study) -> None:
    study_shred(published_study, reason="retention")
    assert study_shred(published_study, reason="retention").objects == 0
    assert AuditEvent.objects.filter(action=Action.STUDY_SHREDDED).count() == 1


def test_a_shred_with_the_store_down_still_destroys_the_key(published_study, store, monkeypatch):
    monkeypatch.setattr(store, "delete", lambda name: (_ for _ in ()).throw(StoreUnavailable()))
    report = study_shred(published_study, reason="retention", store=store)
    assert report.objects_left == 3
    assert not StudyKey.objects.exists()
    monkeypatch.undo()
    monkeypatch.setattr(services, "ORPHAN_GRACE", timedelta(0))
    assert services.remove_orphan_objects(store=store) == 3


def test_a_study_still_in_the_spool_is_shredded_with_its_files(received_study, spool) -> None:
    study = received_study(instances=2)
    assert len(list(spool.instances_dir.glob("*/*"))) == 2
    study_shred(study, reason="patient_request")
    assert not list(spool.instances_dir.glob("*/*"))


def test_a_shredded_study_is_not_received_again(
    published_study, synthetic_study, origin, spool
) -> None:
    study_shred(published_study, reason="patient_request")
    resent = synthetic_study(instances=3, patient=JANE)
    later = IngestSource(origin, Channel.DIMSE, ActorKind.DICOM_NODE, "RIVERSIDE_PACS")
    with pytest.raises(AssertionError):
        ingest_files(resent[:1], later)
    assert not Instance.objects.filter(study=published_study).exists()
    assert AuditEvent.objects.filter(action=Action.INSTANCE_CONFLICT).count() == 1


def test_the_daily_sweep_shreds_what_is_past_retention_unless_held(
    published_study, received_study
) -> None:
    held = received_study(instances=1, seed=9)
    Study.objects.filter(pk__in=[published_study.pk, held.pk]).update(
        available_until=timezone.localdate() - timedelta(days=1)
    )
    Study.objects.filter(pk=held.pk).update(legal_hold=True)
    current = received_study(instances=1, seed=10)

    assert retention_sweep_task() == {"shredded": 1, "orphans": 0}

    states = dict(Study.objects.values_list("pk", "state"))
    assert states[published_study.pk] == Study.State.SHREDDED
    assert states[held.pk] != Study.State.SHREDDED
    assert states[current.pk] != Study.State.SHREDDED
    assert retention_sweep() == 0


def test_the_last_day_of_retention_is_still_available(published_study) -> None:
    assert retention_sweep(today=published_study.available_until) == 0
    assert retention_sweep(today=published_study.available_until + timedelta(days=1)) == 1


def test_a_legal_hold_is_audited_with_its_reason(published_study, facility_admin) -> None:
    request = RequestFactory().post("/")
    request.user = facility_admin
    study_set_legal_hold(published_study, held=True, reason="Litigation 2026-17", request=request)
    study_set_legal_hold(published_study, held=True, reason="again", request=request)
    published_study.refresh_from_db()
    assert published_study.legal_hold
    events = AuditEvent.objects.filter(action=Action.LEGAL_HOLD_CHANGED)
    assert [event.detail for event in events] == [{"held": True, "reason": "Litigation 2026-17"}]


def test_an_operator_shreds_a_study_for_a_deletion_request(published_study) -> None:
    from django.core.management import CommandError, call_command

    study_id = str(published_study.public_id)
    with pytest.raises(CommandError, match="--yes"):
        call_command("shred_study", study_id, reason="request 2026-114")
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(CommandError, match="No study"):
            call_command("shred_study", bad, reason="x", yes=True)
    Study.objects.filter(pk=published_study.pk).update(legal_hold=True)
    with pytest.raises(CommandError, match="legal hold"):
        call_command("shred_study", study_id, reason="x", yes=True)
    assert StudyKey.objects.filter(study=published_study).exists()
    Study.objects.filter(pk=published_study.pk).update(legal_hold=False)

    call_command("shred_study", study_id, reason="request 2026-114", yes=True)

    published_study.refresh_from_db()
    assert published_study.state == Study.State.SHREDDED
    event = AuditEvent.objects.get(action=Action.STUDY_SHREDDED)
    assert (event.actor_id, event.detail["reason"]) == ("shred_study", "request 2026-114")
