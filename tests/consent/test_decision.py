"""The access decision as a table: one row per case, each with the answer and the reason."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from consent.decision import Decision, FacilityActor, LinkActor, PatientActor, Reason, decide
from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from studies.models import Study
from tests.factories import FacilityFactory, PatientFactory, StudyFactory, UserFactory

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TREAT, RESEARCH = Purpose.TREATMENT, Purpose.RESEARCH


@pytest.fixture
def world(db):
    """An originating facility, a receiving one, a third one, a patient with a CT and an MR,
    and another patient's study."""
    origin, receiver, third = FacilityFactory(), FacilityFactory(), FacilityFactory()
    patient, other = PatientFactory(), PatientFactory()
    until = date(2027, 11, 23)
    common = {"source_facility": origin, "state": Study.State.AVAILABLE, "available_until": until}
    return {
        "origin": origin,
        "receiver": receiver,
        "third": third,
        "patient": patient,
        "ct": StudyFactory(patient=patient, modalities_in_study="CT",
                           study_date=date(2026, 3, 1), **common),
        "mr": StudyFactory(patient=patient, modalities_in_study="MR\\SR",
                           study_date=date(2025, 1, 10), **common),
        "others": StudyFactory(patient=other, **common),
        "staff": UserFactory(),
    }  # fmt: skip


def grant(world, **fields) -> ConsentGrant:
    studies = fields.pop("studies", [])
    withdrawn_at = fields.pop("withdrawn_at", None)
    values = {
        "patient": world["patient"],
        "grantee_facility": world["receiver"],
        "purpose": TREAT,
        "scope": ConsentGrant.Scope.ALL,
        "valid_from": NOW - 30 * DAY,
        "valid_until": NOW + 300 * DAY,
        "source": ConsentGrant.Source.PATIENT_ONLINE,
        "created_by": world["staff"],
        **fields,
    }
    made = ConsentGrant.objects.create(**values)
    made.studies.set(studies)
    if withdrawn_at is not None:
        ConsentWithdrawal.objects.create(
            grant=made, withdrawn_at=withdrawn_at, withdrawn_by=world["staff"]
        )
    return made


def receiver(world) -> FacilityActor:
    return FacilityActor(world["receiver"].pk)


# (case, grants to make, actor, study, purpose, allowed, reason)
CASES = [
    ("patient reads own study", [], lambda w: PatientActor(w["patient"].pk), "ct", TREAT,
     True, Reason.OWN_STUDY),
    ("patient reads someone else's", [], lambda w: PatientActor(w["patient"].pk), "others",
     TREAT, False, Reason.NOT_YOURS),
    ("originating facility", [], lambda w: FacilityActor(w["origin"].pk), "ct", RESEARCH,
     True, Reason.ORIGINATING_FACILITY),
    ("no grant at all", [], receiver, "ct", TREAT, False, Reason.NO_GRANT),
    ("active grant", [{}], receiver, "ct", TREAT, True, Reason.GRANT),
    ("active grant, wrong purpose", [{}], receiver, "ct", Purpose.SECOND_OPINION,
     False, Reason.WRONG_PURPOSE),
    ("active grant, wrong facility", [{}], lambda w: FacilityActor(w["third"].pk), "ct", TREAT,
     False, Reason.NO_GRANT),
    ("active grant, another patient's study", [{}], receiver, "others", TREAT,
     False, Reason.NO_GRANT),
    ("expired", [{"valid_until": NOW - DAY}], receiver, "ct", TREAT, False, Reason.EXPIRED),
    ("ends exactly now", [{"valid_until": NOW}], receiver, "ct", TREAT, False, Reason.EXPIRED),
    ("not yet valid", [{"valid_from": NOW + DAY}], receiver, "ct", TREAT,
     False, Reason.NOT_YET_VALID),
    ("withdrawn", [{"withdrawn_at": NOW - DAY}], receiver, "ct", TREAT,
     False, Reason.WITHDRAWN),
    ("withdrawn at this very moment", [{"withdrawn_at": NOW}], receiver, "ct", TREAT,
     False, Reason.WITHDRAWN),
    ("withdrawal in the future does not end it yet", [{"withdrawn_at": NOW + DAY}], receiver,
     "ct", TREAT, True, Reason.GRANT),
    ("chosen study", [{"scope": "chosen", "studies": ["ct"]}], receiver, "ct", TREAT,
     True, Reason.GRANT),
    ("study not chosen", [{"scope": "chosen", "studies": ["ct"]}], receiver, "mr", TREAT,
     False, Reason.OUT_OF_SCOPE),
    ("modality rule matches one of several", [{"scope": "rules", "rule_modalities": "SR"}],
     receiver, "mr", TREAT, True, Reason.GRANT),
    ("modality rule does not match", [{"scope": "rules", "rule_modalities": "MR"}], receiver,
     "ct", TREAT, False, Reason.OUT_OF_SCOPE),
    ("date rule, inside", [{"scope": "rules", "rule_date_from": date(2026, 1, 1)}], receiver,
     "ct", TREAT, True, Reason.GRANT),
    ("date rule, before the range", [{"scope": "rules", "rule_date_from": date(2026, 1, 1)}],
     receiver, "mr", TREAT, False, Reason.OUT_OF_SCOPE),
    ("date rule, after the range", [{"scope": "rules", "rule_date_to": date(2025, 12, 31)}],
     receiver, "ct", TREAT, False, Reason.OUT_OF_SCOPE),
    ("withdrawn one beside an active one", [{"withdrawn_at": NOW - DAY}, {}], receiver, "ct",
     TREAT, True, Reason.GRANT),
    ("wrong purpose beside a withdrawn one: the withdrawal is the reason",
     [{"purpose": Purpose.EDUCATION, "deidentify": True}, {"withdrawn_at": NOW - DAY}],
     receiver, "ct", TREAT, False, Reason.WITHDRAWN),
    ("research grant", [{"purpose": RESEARCH, "deidentify": True}], receiver, "ct", RESEARCH,
     True, Reason.GRANT),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "grants", "actor", "study", "purpose", "allowed", "reason"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_the_decision(world, case, grants, actor, study, purpose, allowed, reason) -> None:
    for fields in grants:
        fields = dict(fields)
        fields["studies"] = [world[name] for name in fields.get("studies", [])]
        grant(world, **fields)
    decision = decide(actor(world), world[study], purpose, NOW)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert bool(decision) is allowed


def test_a_study_past_retention_is_denied_unless_held(world) -> None:
    grant(world)
    ct = world["ct"]
    ct.available_until = NOW.date() - DAY
    assert decide(receiver(world), ct, TREAT, NOW) == Decision(False, Reason.PAST_RETENTION)
    assert not decide(PatientActor(world["patient"].pk), ct, TREAT, NOW)
    ct.legal_hold = True
    assert decide(receiver(world), ct, TREAT, NOW).allowed
    ct.available_until = NOW.date()  # the last day still counts
    ct.legal_hold = False
    assert decide(receiver(world), ct, TREAT, NOW).allowed


@pytest.mark.parametrize("state", [Study.State.RECEIVING, Study.State.PUBLISHING])
def test_a_study_not_yet_available_is_not_shared(world, state) -> None:
    grant(world)
    world["ct"].state = state
    assert decide(receiver(world), world["ct"], TREAT, NOW).reason == Reason.NOT_AVAILABLE
    assert decide(PatientActor(world["patient"].pk), world["ct"], TREAT, NOW).allowed


def test_a_deleted_study_is_denied_to_everyone(world) -> None:
    grant(world)
    world["ct"].state = Study.State.SHREDDED
    for actor in (receiver(world), FacilityActor(world["origin"].pk),
                  PatientActor(world["patient"].pk)):  # fmt: skip
        assert decide(actor, world["ct"], TREAT, NOW) == Decision(False, Reason.STUDY_DELETED)


def test_an_unmatched_study_is_its_facility_s_alone(world) -> None:
    grant(world)
    world["ct"].patient = None
    assert decide(receiver(world), world["ct"], TREAT, NOW).reason == Reason.UNMATCHED
    assert decide(FacilityActor(world["origin"].pk), world["ct"], TREAT, NOW).allowed


def test_a_share_link_reads_its_own_studies_under_its_grant(world) -> None:
    made = grant(world, grantee_facility=None, grantee_email="dr@example.org")
    link = LinkActor(made.pk, frozenset({world["ct"].pk}))
    assert decide(link, world["ct"], TREAT, NOW) == Decision(True, Reason.GRANT, made.pk)
    assert decide(link, world["mr"], TREAT, NOW).reason == Reason.OUT_OF_SCOPE
    assert decide(link, world["ct"], Purpose.RESEARCH, NOW).reason == Reason.WRONG_PURPOSE
    ConsentWithdrawal.objects.create(grant=made, withdrawn_at=NOW, withdrawn_by=world["staff"])
    assert decide(link, world["ct"], TREAT, NOW).reason == Reason.WITHDRAWN


def test_it_asks_the_database_every_time(world, django_assert_num_queries) -> None:
    made = grant(world)
    assert decide(receiver(world), world["ct"], TREAT, NOW).allowed
    ConsentWithdrawal.objects.create(grant=made, withdrawn_at=NOW, withdrawn_by=world["staff"])
    with django_assert_num_queries(1):
        assert not decide(receiver(world), world["ct"], TREAT, NOW).allowed
