"""The reconciliation queue and its three decisions: attach, split, not this patient."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Role
from studies.models import Patient, Study
from tests.factories import (
    PatientFactory,
    PatientIdentifierFactory,
    SeriesFactory,
    StudyFactory,
    make_staff,
)


@pytest.fixture
def known(origin) -> Patient:
    patient = PatientFactory(name="DOE^JANE")
    PatientIdentifierFactory(patient=patient, facility=origin, issuer="RGH", value="MRN100")
    return patient


@pytest.fixture
def waiting(origin, known) -> Study:
    study = StudyFactory(
        source_facility=origin,
        patient=None,
        match=Study.Match.PENDING,
        match_reason="The name differs from the patient on record.",
        candidate_patient=known,
        patient_name="ROE^JANE",
        patient_id_value="MRN100",
    )
    SeriesFactory(study=study, description="AXIAL 5MM")
    return study


def url(name: str, study: Study | None = None) -> str:
    if study is None:
        return reverse(f"studies:{name}")
    return reverse(f"studies:{name}", kwargs={"study_id": study.public_id})


def decisions() -> list[str]:
    return list(
        AuditEvent.objects.filter(action__startswith="study.").values_list("action", flat=True)
    )


def test_it_lists_waiting_and_held_studies_of_the_users_facilities(
    client, front_desk, waiting, elsewhere
):
    held = StudyFactory(
        source_facility=waiting.source_facility, patient=None, match=Study.Match.HELD
    )
    StudyFactory(source_facility=elsewhere, patient=None, match=Study.Match.PENDING,
                 patient_name="OTHER^PERSON")  # fmt: skip
    StudyFactory(source_facility=waiting.source_facility)  # matched: not listed

    client.force_login(front_desk)
    response = client.get(url("reconciliation"))

    assert response.status_code == 200
    assert list(response.context["pending"]) == [waiting]
    assert list(response.context["held"]) == [held]
    assert b"ROE^JANE" in response.content
    assert b"OTHER^PERSON" not in response.content


def test_the_study_page_shows_both_sides_and_highlights_what_differs(client, front_desk, waiting):
    client.force_login(front_desk)
    response = client.get(url("reconciliation-study", waiting))
    assert response.status_code == 200
    assert response.context["differences"] == {"name"}
    assert b"ROE^JANE" in response.content
    assert b"DOE^JANE" in response.content
    assert b"AXIAL 5MM" in response.content
    assert b'class="differs"' in response.content


def test_it_attaches_a_study_to_the_suggested_patient(client, front_desk, waiting, known):
    client.force_login(front_desk)
    response = client.post(url("reconciliation-attach", waiting), {"patient": known.public_id})
    assert response.status_code == 302
    waiting.refresh_from_db()
    assert (waiting.patient, waiting.match, waiting.candidate_patient) == (
        known, Study.Match.MATCHED, None)  # fmt: skip
    event = AuditEvent.objects.get(action=Action.STUDY_ATTACHED)
    assert (event.study_id, event.patient_id, event.actor_id) == (
        waiting.pk, known.pk, str(front_desk.pk))  # fmt: skip


def test_it_finds_another_patient_by_name_or_identifier_and_attaches(
    client, front_desk, waiting, origin
):
    other = PatientFactory(name="ROE^JANE^Q")
    PatientIdentifierFactory(patient=other, facility=origin, issuer="RGH", value="MRN999")
    PatientFactory(name="ROE^JANE")  # of no facility of ours: never offered
    client.force_login(front_desk)

    by_name = client.get(url("reconciliation-study", waiting), {"q": "jane roe"})
    by_id = client.get(url("reconciliation-study", waiting), {"q": "MRN999"})

    assert by_name.context["results"] == [other]
    assert by_id.context["results"] == [other]
    client.post(url("reconciliation-attach", waiting), {"patient": other.public_id})
    waiting.refresh_from_db()
    assert waiting.patient == other


def test_it_splits_a_study_off_to_a_new_patient(client, front_desk, waiting, known):
    client.force_login(front_desk)
    client.post(url("reconciliation-split", waiting))
    waiting.refresh_from_db()
    assert waiting.match == Study.Match.MATCHED
    assert waiting.patient not in (None, known)
    assert waiting.patient.name == "ROE^JANE"
    assert not waiting.patient.identifiers.exists()
    assert decisions() == [Action.STUDY_SPLIT]


def test_not_this_patient_holds_the_study_unattached(client, front_desk, waiting, known):
    client.force_login(front_desk)
    client.post(url("reconciliation-hold", waiting))
    waiting.refresh_from_db()
    assert (waiting.match, waiting.patient, waiting.candidate_patient) == (
        Study.Match.HELD, None, None)  # fmt: skip
    event = AuditEvent.objects.get(action=Action.STUDY_HELD)
    assert event.patient_id == known.pk
    # Holding again changes nothing and records nothing more.
    client.post(url("reconciliation-hold", waiting))
    assert decisions() == [Action.STUDY_HELD]


def test_a_held_study_can_still_be_attached(client, front_desk, waiting, known):
    client.force_login(front_desk)
    client.post(url("reconciliation-hold", waiting))
    client.post(url("reconciliation-attach", waiting), {"patient": known.public_id})
    waiting.refresh_from_db()
    assert waiting.patient == known


def test_a_decided_study_is_no_longer_in_reach(client, front_desk, waiting, known):
    client.force_login(front_desk)
    client.post(url("reconciliation-attach", waiting), {"patient": known.public_id})
    assert client.get(url("reconciliation-study", waiting)).status_code == 404
    assert client.post(url("reconciliation-split", waiting)).status_code == 404
    assert decisions() == [Action.STUDY_ATTACHED]


@pytest.mark.parametrize("bad", ["", "not-a-uuid", str(uuid.uuid4())])
def test_attaching_to_an_unknown_or_foreign_patient_changes_nothing(
    client, front_desk, waiting, bad
):
    client.force_login(front_desk)
    response = client.post(url("reconciliation-attach", waiting), {"patient": bad}, follow=True)
    assert b"Choose a patient" in response.content
    waiting.refresh_from_db()
    assert waiting.match == Study.Match.PENDING
    assert waiting.patient is None
    assert decisions() == []


def test_attaching_to_a_patient_of_another_facility_changes_nothing(
    client, front_desk, waiting, elsewhere
):
    theirs = PatientFactory()
    PatientIdentifierFactory(patient=theirs, facility=elsewhere, issuer="HC", value="1")
    client.force_login(front_desk)
    client.post(url("reconciliation-attach", waiting), {"patient": theirs.public_id})
    waiting.refresh_from_db()
    assert waiting.patient is None
    assert decisions() == []


def test_anonymous_visitors_are_sent_to_sign_in(client, waiting):
    for target in (url("reconciliation"), url("reconciliation-study", waiting)):
        response = client.get(target)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    client.post(url("reconciliation-split", waiting))
    assert Study.objects.get().match == Study.Match.PENDING


def test_strangers_get_404_and_change_nothing(client, stranger, waiting):
    client.force_login(stranger)
    assert client.get(url("reconciliation-study", waiting)).status_code == 404
    assert client.post(url("reconciliation-split", waiting)).status_code == 404
    assert client.post(url("reconciliation-hold", waiting)).status_code == 404
    assert client.get(url("reconciliation")).context["pending"].count() == 0
    assert decisions() == []


def test_clinicians_and_patients_get_403(client, patient, origin, waiting):
    clinician_here = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    client.force_login(clinician_here)
    assert client.get(url("reconciliation")).status_code == 403
    assert client.get(url("reconciliation-study", waiting)).status_code == 403
    assert client.post(url("reconciliation-split", waiting)).status_code == 403
    client.force_login(patient)
    assert client.get(url("reconciliation")).status_code == 403
    assert client.get(url("reconciliation-study", waiting)).status_code == 404
    assert decisions() == []


def test_decisions_need_post(client, front_desk, waiting):
    client.force_login(front_desk)
    for name in ("reconciliation-attach", "reconciliation-split", "reconciliation-hold"):
        assert client.get(url(name, waiting)).status_code == 405
    assert client.post(url("reconciliation")).status_code == 405
    assert decisions() == []


def test_decisions_need_the_csrf_token(front_desk, waiting):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(front_desk)
    assert browser.post(url("reconciliation-split", waiting)).status_code == 403
    assert decisions() == []


def test_the_staff_home_says_how_many_studies_wait(client, front_desk, waiting, elsewhere):
    StudyFactory(source_facility=elsewhere, patient=None, match=Study.Match.PENDING)
    client.force_login(front_desk)
    response = client.get(reverse("portal:staff-home"))
    assert response.context["waiting"] == 1
    assert b"Studies to match" in response.content
