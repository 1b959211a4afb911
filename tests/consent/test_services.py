"""Writing the ledger: grants, withdrawals and changes, their checks, audit and races."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
from django.db import close_old_connections, connections
from django.utils import timezone

from audit.codes import Action
from audit.models import AuditEvent
from consent.decision import FacilityActor, decide
from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from consent.services import (
    ConsentError,
    GrantRequest,
    change_consent,
    grant_consent,
    withdraw_consent,
)
from studies.models import Study
from tests.factories import PatientFactory, StudyFactory, UserFactory

ALL, CHOSEN, RULES = ConsentGrant.Scope.ALL, ConsentGrant.Scope.CHOSEN, ConsentGrant.Scope.RULES


@pytest.fixture
def patient(db):
    return PatientFactory()


@pytest.fixture
def ct(patient, origin) -> Study:
    return StudyFactory(patient=patient, source_facility=origin, modalities_in_study="CT",
                        study_date=date(2026, 6, 1), state=Study.State.AVAILABLE,
                        available_until=date(2027, 6, 1))  # fmt: skip


@pytest.fixture
def by(db):
    return UserFactory()


def ask(patient, receiver, **fields) -> GrantRequest:
    values = {"patient": patient, "purpose": Purpose.TREATMENT, "scope": ALL,
              "grantee_facility": receiver, **fields}  # fmt: skip
    return GrantRequest(**values)


def ledger() -> tuple[int, int]:
    return ConsentGrant.objects.count(), ConsentWithdrawal.objects.count()


def test_a_grant_lets_the_facility_in_and_is_audited(patient, ct, receiver, by) -> None:
    grant = grant_consent(ask(patient, receiver), by=by)
    assert decide(FacilityActor(receiver.pk), ct, Purpose.TREATMENT, timezone.now()).allowed
    event = AuditEvent.objects.get(action=Action.GRANT_CREATED)
    assert (event.patient_id, event.facility_id, event.purpose) == (
        patient.pk,
        receiver.pk,
        "TREAT",
    )
    assert event.target_id == str(grant.pk)


def test_the_default_period_is_12_months_after_the_latest_study(patient, ct, receiver, by):
    StudyFactory(patient=patient, study_date=date(2026, 9, 15), available_until=date(2027, 1, 1))
    grant = grant_consent(ask(patient, receiver), by=by)
    # In force through 15 September 2027, the latest study's date 12 months on.
    assert timezone.localtime(grant.valid_until).date() == date(2027, 9, 16)


def test_the_period_covers_the_studies_availability(patient, receiver, by) -> None:
    StudyFactory(patient=patient, study_date=date(2015, 1, 1), available_until=date(2027, 12, 1))
    grant = grant_consent(ask(patient, receiver), by=by)
    assert timezone.localtime(grant.valid_until).date() == date(2027, 12, 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"valid_until": date(2020, 1, 1)}, "in the future"),
        ({"valid_until": date(2027, 1, 1)}, "at least until 01 June 2027"),
        ({"purpose": "NOPE"}, "used for"),
        ({"scope": "some"}, "which studies"),
        ({"grantee_facility": None}, "one facility"),
        ({"grantee_email": "dr@example.org"}, "one facility"),
        ({"scope": CHOSEN}, "at least one study"),
        ({"scope": RULES, "rule_modalities": ["MR"]}, "No study matches"),
        ({"scope": RULES, "rule_date_from": date(2026, 2, 1), "rule_date_to": date(2026, 1, 1)},
         "ends before it starts"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_and_nothing_is_written(
    patient, ct, receiver, by, fields, message
) -> None:
    with pytest.raises(ConsentError, match=message):
        grant_consent(ask(patient, receiver, **fields), by=by)
    assert ledger() == (0, 0)
    assert not AuditEvent.objects.filter(action=Action.GRANT_CREATED).exists()


def test_another_patient_s_study_cannot_be_chosen(patient, ct, receiver, by) -> None:
    others = StudyFactory(patient=PatientFactory())
    with pytest.raises(ConsentError, match="your own studies"):
        grant_consent(ask(patient, receiver, scope=CHOSEN, studies=[ct, others]), by=by)
    assert ledger() == (0, 0)


@pytest.mark.parametrize("purpose", [Purpose.RESEARCH, Purpose.EDUCATION])
def test_research_and_education_are_always_de_identified(patient, ct, receiver, by, purpose):
    grant = grant_consent(ask(patient, receiver, purpose=purpose, deidentify=False), by=by)
    assert grant.deidentify


def test_withdrawal_ends_access_at_once_and_twice_is_harmless(patient, ct, receiver, by):
    grant = grant_consent(ask(patient, receiver), by=by)
    first = withdraw_consent(grant, by=by, reason="moved away")
    second = withdraw_consent(grant, by=by)
    assert first.pk == second.pk
    assert not decide(FacilityActor(receiver.pk), ct, Purpose.TREATMENT, timezone.now())
    assert AuditEvent.objects.filter(action=Action.GRANT_WITHDRAWN).count() == 1
    grant.refresh_from_db()
    assert grant.valid_until > timezone.now(), "the grant row itself is never edited"


def test_a_change_is_a_withdrawal_and_a_new_grant_pointing_at_it(patient, ct, receiver, by):
    old = grant_consent(ask(patient, receiver), by=by)
    new = change_consent(old, ask(patient, receiver, scope=CHOSEN, studies=[ct]), by=by)
    assert new.replaces == old
    assert ConsentWithdrawal.objects.get().grant == old
    with pytest.raises(ConsentError, match="already withdrawn"):
        change_consent(old, ask(patient, receiver), by=by)
    assert ledger() == (2, 1)


@pytest.mark.django_db(transaction=True)
def test_racing_withdrawals_and_a_change_leave_a_consistent_ledger(origin, receiver) -> None:
    patient, by = PatientFactory(), UserFactory()
    StudyFactory(patient=patient, source_facility=origin)
    grant = grant_consent(ask(patient, receiver), by=by)
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def run(action) -> None:
        close_old_connections()
        barrier.wait()
        try:
            action()
            outcomes.append("ok")
        except ConsentError:
            outcomes.append("refused")
        finally:
            connections.close_all()  # this thread's connection, or the test DB cannot go

    actions = [
        lambda: withdraw_consent(grant, by=by),
        lambda: withdraw_consent(grant, by=by),
        lambda: change_consent(grant, ask(patient, receiver, purpose=Purpose.SECOND_OPINION),
                               by=by),
    ]  # fmt: skip
    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert ConsentWithdrawal.objects.filter(grant=grant).count() == 1
    assert AuditEvent.objects.filter(action=Action.GRANT_WITHDRAWN).count() == 1
    replacements = ConsentGrant.objects.filter(replaces=grant).count()
    # The change either came first (and replaced the grant) or found it withdrawn.
    assert (replacements, sorted(outcomes)) in [(1, ["ok", "ok", "ok"]),
                                                 (0, ["ok", "ok", "refused"])]  # fmt: skip
    assert timezone.now() - ConsentWithdrawal.objects.get().withdrawn_at < timedelta(minutes=1)
