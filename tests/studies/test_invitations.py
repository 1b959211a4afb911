"""Patients join by invitation: identity checks, invitations, the link, sign-up, linking."""

from __future__ import annotations

import datetime
import secrets

import pytest
import time_machine
from allauth.account.signals import user_signed_up
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, Outcome
from audit.models import AuditEvent
from facilities.access import secret_digest
from studies import invitations
from studies.models import IdentityVerification, Patient, PatientInvitation, Study
from studies.patient_views import INVITATION_GUESS_LIMIT
from tests.factories import (
    PASSWORD,
    PatientFactory,
    PatientIdentifierFactory,
    StudyFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

INVITED = "jane.roe@example.org"


@pytest.fixture
def record(origin) -> Patient:
    """A patient of the origin without an account: the one the front desk invites."""
    patient = PatientFactory(name="ROE^JANE", birth_date=datetime.date(1981, 2, 3))
    PatientIdentifierFactory(patient=patient, facility=origin, issuer="RGH", value="RGH-7777")
    StudyFactory(source_facility=origin, patient=patient, description="CT HEAD")
    return patient


@pytest.fixture
def verify(origin, front_desk):
    def make(patient: Patient, *, facility=None, actor=None) -> IdentityVerification:
        return invitations.identity_verification_record(
            patient=patient,
            facility=facility or origin,
            method=IdentityVerification.Method.IN_PERSON,
            document_type=IdentityVerification.Document.DRIVERS_LICENSE,
            actor=actor or front_desk,
        )

    return make


@pytest.fixture
def invite(origin, front_desk, rf, verify, django_capture_on_commit_callbacks):
    """Check the record's identity and invite it; returns the invitation and the link's path."""

    def make(patient: Patient, email: str = INVITED, *, facility=None):
        verify(patient, facility=facility)
        with django_capture_on_commit_callbacks(execute=True):
            invitation, token = invitations.patient_invitation_create(
                patient=patient,
                facility=facility or origin,
                email=email,
                actor=front_desk,
                request=rf.post("/"),
            )
        return invitation, reverse("studies:patient-invitation", args=[token])

    return make


# --- Identity checks -------------------------------------------------------------------------


def test_it_records_an_identity_check_and_audits_it(record, origin, front_desk, verify):
    verification = verify(record)

    assert (verification.verified_by, verification.facility) == (front_desk, origin)
    event = AuditEvent.objects.get(action=Action.PATIENT_IDENTITY_VERIFIED)
    assert event.patient_id == record.pk
    assert event.detail["document_type"] == "drivers_license"


def test_a_clinician_may_not_check_identities(record, origin, verify, receiver):
    from facilities.models import Role
    from tests.factories import make_staff

    clinician_here = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    with pytest.raises(PermissionDenied):
        verify(record, actor=clinician_here)
    assert not IdentityVerification.objects.exists()


def test_a_patient_of_another_facility_cannot_be_checked_there(record, elsewhere, verify):
    from facilities.models import Role
    from tests.factories import make_staff

    desk_elsewhere = make_staff(elsewhere, Role.FRONT_DESK, email="desk@hilltop.example.org")
    with pytest.raises(PermissionDenied):
        verify(record, facility=elsewhere, actor=desk_elsewhere)


def test_a_photo_id_is_needed_at_the_desk(record, origin, front_desk):
    with pytest.raises(ValidationError):
        invitations.identity_verification_record(
            patient=record,
            facility=origin,
            method=IdentityVerification.Method.IN_PERSON,
            document_type=IdentityVerification.Document.NONE,
            actor=front_desk,
        )
    assert not IdentityVerification.objects.exists()


# --- Invitations -----------------------------------------------------------------------------


def test_it_invites_with_a_hashed_token_and_a_plain_email(record, invite):
    invitation, url = invite(record)

    token = url.rstrip("/").rsplit("/", 1)[-1]
    assert len(token) == 43  # 256 random bits
    assert invitation.token_hash == secret_digest(token)
    assert token not in str(PatientInvitation.objects.values_list().get())
    lifetime = invitation.expires_at - invitation.created_at
    assert abs(lifetime - invitations.PATIENT_INVITATION_LIFETIME) < datetime.timedelta(seconds=5)
    (message,) = mail.outbox
    assert message.to == [INVITED]
    assert message.subject.endswith(
        "You are invited to see your imaging records at Riverside General Hospital"
    )
    assert url in message.body
    # The link's random token may spell anything (even "roe"): look at the words around it.
    text, html = message.body.replace(url, ""), message.alternatives[0][0].replace(url, "")
    for phi in ("ROE", "Jane", "RGH-7777", "1981", "CT HEAD", "2.25."):
        assert phi.lower() not in message.subject.lower()
        assert phi.lower() not in text.lower()
        assert phi.lower() not in html.lower()
    assert AuditEvent.objects.filter(action=Action.PATIENT_INVITED, patient_id=record.pk).exists()


def test_it_needs_a_recent_identity_check(record, origin, front_desk, rf, verify):
    with time_machine.travel(timezone.now() - datetime.timedelta(days=2)):
        verify(record)
    with pytest.raises(ValidationError, match="identity"):
        invitations.patient_invitation_create(
            patient=record, facility=origin, email=INVITED, actor=front_desk, request=rf.post("/")
        )
    assert not PatientInvitation.objects.exists()
    assert not mail.outbox


def test_a_new_invitation_replaces_the_pending_one(record, invite, client):
    first, first_url = invite(record)
    _second, _ = invite(record)

    first.refresh_from_db()
    assert first.revoked_at is not None
    assert client.get(first_url).status_code == 404


def test_a_patient_with_an_account_is_not_invited(patient_record, origin, front_desk, rf, verify):
    verify(patient_record)
    with pytest.raises(ValidationError, match="already has an account"):
        invitations.patient_invitation_create(
            patient=patient_record,
            facility=origin,
            email=INVITED,
            actor=front_desk,
            request=rf.post("/"),
        )


# --- The link -----------------------------------------------------------------------------------


def test_the_link_opens_sign_up_for_the_invited_address(client, record, invite):
    invitation, url = invite(record)

    response = client.get(url)

    assert response.status_code == 302
    assert response.url == reverse("studies:patient-signup")
    assert client.session[invitations.PATIENT_INVITATION_SESSION_KEY] == invitation.pk
    assert client.session["account_verified_email"] == INVITED


def test_signing_up_through_the_link_links_the_account(client, record, invite):
    invitation, url = invite(record)
    client.get(url)

    response = client.post(
        reverse("studies:patient-signup"),
        {"email": INVITED, "password1": PASSWORD, "password2": PASSWORD},
        follow=True,
    )

    user = User.objects.get(email=INVITED)
    record.refresh_from_db()
    assert record.account == user
    assert response.redirect_chain[-1][0] == reverse("studies:mine")
    assert [s["description"] for s in response.context["studies"]] == ["CT HEAD"]
    invitation.refresh_from_db()
    assert (invitation.accepted_by, invitation.accepted_at is not None) == (user, True)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {Action.PATIENT_ACCOUNT_LINKED, Action.PATIENT_INVITATION_ACCEPTED} <= actions
    # The link does not open sign-up a second time.
    assert client.get(url).status_code == 302  # the person who accepted goes to their images


def test_sign_up_refuses_another_address(client, record, invite):
    _, url = invite(record)
    client.get(url)

    response = client.post(
        reverse("studies:patient-signup"),
        {"email": "someone.else@example.org", "password1": PASSWORD, "password2": PASSWORD},
    )

    assert response.status_code == 200
    assert "the invitation was sent to" in response.content.decode()
    assert not User.objects.filter(email="someone.else@example.org").exists()
    record.refresh_from_db()
    assert record.account is None


def test_sign_up_is_closed_without_an_invitation(client):
    response = client.get(reverse("studies:patient-signup"))

    assert response.status_code == 404
    assert "no longer valid" in response.content.decode()


def test_the_public_sign_up_stays_closed_with_a_patient_invitation(client, record, invite):
    _, url = invite(record)
    client.get(url)

    response = client.post(
        reverse("account_signup"),
        {"email": INVITED, "password1": PASSWORD, "password2": PASSWORD},
    )

    assert not User.objects.filter(email=INVITED).exists()
    assert response.status_code in (200, 302)


@pytest.mark.parametrize("state", ["unknown", "expired", "used", "revoked", "malformed"])
def test_a_link_that_is_not_pending_gets_a_plain_page(client, record, invite, state):
    _invitation, url = invite(record)
    if state == "unknown":
        url = reverse("studies:patient-invitation", args=[secrets.token_urlsafe(32)])
    elif state == "malformed":
        url = reverse("studies:patient-invitation", args=["not-a-token"])
    elif state == "expired":
        PatientInvitation.objects.update(expires_at=timezone.now() - datetime.timedelta(1))
    elif state == "used":
        PatientInvitation.objects.update(
            accepted_at=timezone.now(), accepted_by=UserFactory(email=INVITED)
        )
    elif state == "revoked":
        PatientInvitation.objects.update(revoked_at=timezone.now())

    response = client.get(url)

    assert response.status_code == (410 if state == "expired" else 404)
    assert "This invitation is no longer valid" in response.content.decode()
    assert invitations.PATIENT_INVITATION_SESSION_KEY not in client.session
    refusal = AuditEvent.objects.get(action=Action.PATIENT_INVITATION_REFUSED)
    assert refusal.outcome == Outcome.DENIED


def test_guessing_links_is_slowed_down(client, db):
    for _ in range(INVITATION_GUESS_LIMIT):
        client.get(reverse("studies:patient-invitation", args=[secrets.token_urlsafe(32)]))

    response = client.get(reverse("studies:patient-invitation", args=[secrets.token_urlsafe(32)]))

    assert response.status_code == 429


def test_an_existing_account_signs_in_then_confirms(client, record, invite):
    user = UserFactory(email=INVITED)
    _invitation, url = invite(record)

    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))

    client.force_login(user)
    assert client.get(url).status_code == 200
    response = client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("studies:mine")
    record.refresh_from_db()
    assert record.account == user


def test_the_confirm_needs_csrf(record, invite):
    from django.test import Client

    user = UserFactory(email=INVITED)
    _, url = invite(record)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    assert client.post(url).status_code == 403
    record.refresh_from_db()
    assert record.account is None


def test_another_signed_in_account_is_refused(client, other_patient, record, invite):
    _, url = invite(record)
    client.force_login(other_patient)

    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    record.refresh_from_db()
    assert record.account is None


def test_a_staff_account_cannot_accept(record, invite, front_desk):
    invitation, _ = invite(record, email=front_desk.email)

    with pytest.raises(ValidationError):
        invitations.patient_invitation_accept(invitation=invitation, user=front_desk)
    record.refresh_from_db()
    assert record.account is None


# --- The receiver --------------------------------------------------------------------------------


@pytest.fixture
def signup_request(rf):
    request = rf.post("/studies/join/sign-up/")
    request.session = SessionStore()
    request._messages = FallbackStorage(request)
    return request


def test_the_receiver_keeps_the_account_unlinked_when_the_invitation_went_stale(
    signup_request, record, invite
):
    invitation, _ = invite(record)
    signup_request.session[invitations.PATIENT_INVITATION_SESSION_KEY] = invitation.pk
    PatientInvitation.objects.update(revoked_at=timezone.now())
    user = UserFactory(email=INVITED)

    user_signed_up.send(sender=User, request=signup_request, user=user)

    record.refresh_from_db()
    assert record.account is None
    assert invitations.PATIENT_INVITATION_SESSION_KEY not in signup_request.session


# --- One person, one account ---------------------------------------------------------------------


def test_the_front_desk_links_an_existing_account(
    record, origin, front_desk, verify, other_patient
):
    verify(record)

    linked = invitations.patient_account_link(
        patient=record, facility=origin, email=other_patient.email.upper(), actor=front_desk
    )

    assert linked == record
    record.refresh_from_db()
    assert record.account == other_patient
    assert AuditEvent.objects.filter(action=Action.PATIENT_ACCOUNT_LINKED).exists()


def test_linking_needs_a_recent_identity_check(record, origin, front_desk, other_patient):
    with pytest.raises(ValidationError, match="identity"):
        invitations.patient_account_link(
            patient=record, facility=origin, email=other_patient.email, actor=front_desk
        )
    record.refresh_from_db()
    assert record.account is None


@pytest.mark.parametrize("who", ["unknown", "staff"])
def test_linking_refuses_unknown_and_staff_accounts(record, origin, front_desk, verify, who):
    verify(record)
    email = "nobody@example.org" if who == "unknown" else front_desk.email

    with pytest.raises(ValidationError):
        invitations.patient_account_link(
            patient=record, facility=origin, email=email, actor=front_desk
        )
    record.refresh_from_db()
    assert record.account is None


def test_a_second_facilitys_record_joins_the_account_the_patient_has(
    patient, patient_record, elsewhere, rf
):
    """Seen at Hilltop too: the desk there links the account, and the patient sees both."""
    from facilities.models import Role
    from tests.factories import make_staff

    hilltop_record = PatientFactory(name="DOE^PAT")
    PatientIdentifierFactory(patient=hilltop_record, facility=elsewhere, issuer="HC", value="H-1")
    hilltop_study = StudyFactory(source_facility=elsewhere, patient=hilltop_record)
    desk = make_staff(elsewhere, Role.FRONT_DESK, email="desk@hilltop.example.org")
    invitations.identity_verification_record(
        patient=hilltop_record,
        facility=elsewhere,
        method=IdentityVerification.Method.IN_PERSON,
        document_type=IdentityVerification.Document.PASSPORT,
        actor=desk,
    )

    linked = invitations.patient_account_link(
        patient=hilltop_record, facility=elsewhere, email=patient.email, actor=desk
    )

    assert linked == patient_record
    hilltop_study.refresh_from_db()
    assert hilltop_study.patient == patient_record
    assert set(patient_record.identifiers.values_list("value", flat=True)) == {"RGH-0042", "H-1"}
    assert Patient.objects.get(pk=hilltop_record.pk).account is None
    assert AuditEvent.objects.filter(action=Action.PATIENT_RECORDS_MERGED).exists()
    assert Study.objects.filter(patient=patient_record).count() == 1
