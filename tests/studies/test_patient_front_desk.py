"""The front desk's patient pages: find, check identity, invite, link an account."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.core import mail
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Role
from studies.models import IdentityVerification, Patient, PatientInvitation
from tests.factories import PatientFactory, PatientIdentifierFactory, make_staff

pytestmark = pytest.mark.django_db


@pytest.fixture
def record(origin) -> Patient:
    patient = PatientFactory(name="ROE^JANE", birth_date=datetime.date(1981, 2, 3))
    PatientIdentifierFactory(patient=patient, facility=origin, issuer="RGH", value="RGH-7777")
    return patient


def url(name: str, facility, patient=None) -> str:
    args = [facility.pk] + ([patient.public_id] if patient is not None else [])
    return reverse(f"studies:{name}", args=args)


@pytest.mark.parametrize("query", [{"q": "roe"}, {"q": "RGH-7777"}, {"birth_date": "1981-02-03"}])
def test_it_finds_a_patient_by_name_mrn_or_birth_date(client, front_desk, origin, record, query):
    PatientIdentifierFactory(
        facility=origin,
        patient=PatientFactory(name="ROE^JOHN", birth_date=datetime.date(1950, 1, 1)),
    )
    client.force_login(front_desk)

    response = client.get(url("front-desk-patients", origin), query)

    assert response.status_code == 200
    assert record in response.context["results"]
    if "birth_date" in query:
        assert len(response.context["results"]) == 1
    searched = AuditEvent.objects.get(action=Action.PATIENTS_SEARCHED)
    assert (searched.facility_id, searched.detail) == (
        origin.pk,
        {"results": len(response.context["results"])},
    )


def test_opening_a_patient_s_record_is_audited(client, front_desk, origin, record):
    client.force_login(front_desk)
    assert client.get(url("front-desk-patient", origin, record)).status_code == 200
    viewed = AuditEvent.objects.get(action=Action.PATIENT_RECORD_VIEWED)
    assert (viewed.patient_id, viewed.facility_id, viewed.actor_id) == (
        record.pk,
        origin.pk,
        str(front_desk.pk),
    )


def test_it_refuses_a_bad_birth_date(client, front_desk, origin):
    client.force_login(front_desk)

    assert client.get(url("front-desk-patients", origin), {"birth_date": "soon"}).status_code == 400


def test_the_whole_flow_checks_then_invites(
    client, front_desk, origin, record, django_capture_on_commit_callbacks
):
    client.force_login(front_desk)
    page = url("front-desk-patient", origin, record)
    assert client.get(page).status_code == 200

    response = client.post(
        url("front-desk-verify", origin, record),
        {"method": "in_person", "document_type": "passport"},
    )
    assert response.status_code == 302
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url("front-desk-invite", origin, record), {"invite-email": "jr@example.org"}
        )
    assert response.status_code == 302
    assert PatientInvitation.objects.get().email == "jr@example.org"
    assert len(mail.outbox) == 1


def test_inviting_without_a_check_is_refused_and_changes_nothing(
    client, front_desk, origin, record
):
    client.force_login(front_desk)

    response = client.post(
        url("front-desk-invite", origin, record), {"invite-email": "jr@example.org"}
    )

    assert response.status_code == 400
    assert "Check the patient" in response.content.decode()
    assert not PatientInvitation.objects.exists()
    assert not mail.outbox


def test_bad_verification_input_is_refused(client, front_desk, origin, record):
    client.force_login(front_desk)

    response = client.post(url("front-desk-verify", origin, record), {"method": "telepathy"})

    assert response.status_code == 400
    assert not IdentityVerification.objects.exists()


def test_linking_an_account_from_the_page(client, front_desk, origin, record, other_patient):
    client.force_login(front_desk)
    client.post(
        url("front-desk-verify", origin, record),
        {"method": "in_person", "document_type": "passport"},
    )

    response = client.post(
        url("front-desk-link", origin, record), {"link-email": other_patient.email}
    )

    assert response.status_code == 302
    record.refresh_from_db()
    assert record.account == other_patient


@pytest.mark.parametrize("who", ["stranger", "patient"])
def test_people_without_a_membership_get_404(client, origin, record, who, request):
    client.force_login(request.getfixturevalue(who))

    assert client.get(url("front-desk-patients", origin)).status_code == 404
    assert client.get(url("front-desk-patient", origin, record)).status_code == 404
    response = client.post(
        url("front-desk-verify", origin, record),
        {"method": "in_person", "document_type": "passport"},
    )
    assert response.status_code == 404
    assert not IdentityVerification.objects.exists()


def test_a_clinician_gets_403(client, origin, record):
    clinician_here = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    client.force_login(clinician_here)

    assert client.get(url("front-desk-patient", origin, record)).status_code == 403


def test_a_patient_of_another_facility_is_404(client, front_desk, origin):
    elsewhere_patient = PatientFactory()
    client.force_login(front_desk)

    assert client.get(url("front-desk-patient", origin, elsewhere_patient)).status_code == 404
    missing = reverse("studies:front-desk-patient", args=[origin.pk, uuid.uuid4()])
    assert client.get(missing).status_code == 404


def test_anonymous_visitors_sign_in_first(client, origin, record):
    response = client.get(url("front-desk-patient", origin, record))

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_changes_need_post(client, front_desk, origin, record):
    client.force_login(front_desk)

    assert client.get(url("front-desk-invite", origin, record)).status_code == 405
