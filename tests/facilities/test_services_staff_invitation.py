from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from facilities.models import Membership, Role, StaffInvitation
from facilities.services import (
    staff_invitation_accept,
    staff_invitation_create,
    staff_invitation_revoke,
)
from tests.factories import UserFactory


@pytest.fixture
def admin_request(rf, facility_admin):
    request = rf.post("/facilities/1/staff/", REMOTE_ADDR="203.0.113.9")
    request.user = facility_admin
    return request


@pytest.fixture
def invite(origin, facility_admin, admin_request):
    def make(email: str = "new.tech@riverside.example.org", role: str = Role.FRONT_DESK):
        return staff_invitation_create(
            facility=origin, email=email, role=role, actor=facility_admin, request=admin_request
        )

    return make


def test_it_stores_only_the_hash_of_the_token(invite):
    invitation, token = invite()

    assert len(token) >= 43  # 32 random bytes
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in invitation.token_hash
    assert not StaffInvitation.objects.filter(token_hash=token).exists()


def test_it_expires_after_the_configured_lifetime(invite, settings):
    settings.PORTAL_STAFF_INVITATION_LIFETIME = timedelta(days=3)
    with time_machine.travel("2030-01-10 12:00Z", tick=False):
        invitation, _ = invite()
    assert invitation.expires_at == datetime(2030, 1, 13, 12, 0, tzinfo=UTC)


def test_it_normalises_the_address(invite):
    invitation, _ = invite(email="  New.Tech@Riverside.Example.org ")
    assert invitation.email == "new.tech@riverside.example.org"


def test_it_audits_the_invitation(invite, origin, facility_admin):
    invitation, _ = invite(role=Role.CLINICIAN)

    event = AuditEvent.objects.get(action=Action.STAFF_INVITED)
    assert event.outcome == Outcome.ALLOWED
    assert event.facility_id == origin.pk
    assert event.actor_kind == ActorKind.USER
    assert event.actor_id == str(facility_admin.pk)
    assert event.target_kind == TargetKind.INVITATION
    assert event.target_id == str(invitation.pk)
    assert event.client_address == "203.0.113.9"
    assert event.detail == {"role": Role.CLINICIAN}


def test_it_sends_the_email_on_commit(invite, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _, _token = invite()
    assert mailoutbox == []  # nothing leaves before the transaction commits

    for callback in callbacks:
        callback()
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["new.tech@riverside.example.org"]


def test_it_writes_an_email_with_the_link_facility_role_and_expiry(
    invite, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = invite(role=Role.CLINICIAN)

    message = mailoutbox[0]
    link = f"http://testserver/facilities/invitations/{token}/"
    html = message.alternatives[0][0]
    assert "Riverside General Hospital" in message.subject
    assert "\n" not in message.subject
    for body in (message.body, html):
        assert link in body
        assert "Riverside General Hospital" in body
        assert "Clinician" in body
        assert str(invitation.expires_at.astimezone(timezone.get_current_timezone()).year) in body
        assert "expires" in body


def test_it_puts_nothing_clinical_in_the_email(
    invite, patient, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        invite()

    message = mailoutbox[0]
    text = " ".join([message.subject, message.body, message.alternatives[0][0]]).lower()
    # The link's random token could hold any letters, so words are matched whole.
    words = set(re.findall(r"[a-z]+", text))
    assert words.isdisjoint({"study", "studies", "mrn", "patient", "modality", "diagnosis"})
    assert patient.email not in text


def test_it_keeps_the_invitation_when_the_mail_server_fails(
    invite, django_capture_on_commit_callbacks, monkeypatch, caplog
):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("mail server down")

    monkeypatch.setattr("django.core.mail.EmailMultiAlternatives.send", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = invite()

    assert StaffInvitation.objects.filter(pk=invitation.pk).exists()
    assert f"invitation {invitation.pk}" in caplog.text
    assert token not in caplog.text


def test_it_refuses_someone_already_on_the_staff(origin, front_desk, invite, mailoutbox):
    with pytest.raises(ValidationError) as refusal:
        invite(email="DESK@riverside.example.org")

    assert "already on the staff" in str(refusal.value.message_dict["email"])
    assert not StaffInvitation.objects.exists()
    assert not AuditEvent.objects.filter(action=Action.STAFF_INVITED).exists()


def test_it_refuses_a_second_pending_invitation(invite):
    invite()
    with pytest.raises(ValidationError) as refusal:
        invite(email="new.tech@riverside.example.org", role=Role.CLINICIAN)

    assert "pending invitation" in str(refusal.value.message_dict["email"])
    assert StaffInvitation.objects.count() == 1


def test_it_invites_again_after_a_withdrawal_or_expiry(invite, facility_admin):
    first, _ = invite()
    staff_invitation_revoke(invitation=first, actor=facility_admin)
    second, _ = invite()
    StaffInvitation.objects.filter(pk=second.pk).update(expires_at=timezone.now())
    invite()

    assert StaffInvitation.objects.count() == 3


def test_it_allows_the_same_address_at_another_facility(invite, elsewhere, stranger, rf):
    invite()
    request = rf.post("/")
    request.user = stranger
    staff_invitation_create(
        facility=elsewhere,
        email="new.tech@riverside.example.org",
        role=Role.FRONT_DESK,
        actor=stranger,
        request=request,
    )
    assert StaffInvitation.objects.count() == 2


def test_it_refuses_an_unknown_role(invite):
    with pytest.raises(ValidationError):
        invite(role="surgeon")
    assert not StaffInvitation.objects.exists()


@pytest.mark.parametrize("actor_name", ["front_desk", "stranger", "clinician", "patient"])
def test_it_refuses_an_actor_who_is_not_a_facility_admin_there(
    request, origin, admin_request, actor_name
):
    actor = request.getfixturevalue(actor_name)
    with pytest.raises(PermissionDenied):
        staff_invitation_create(
            facility=origin,
            email="x@example.org",
            role=Role.FRONT_DESK,
            actor=actor,
            request=admin_request,
        )
    assert not StaffInvitation.objects.exists()
    assert not AuditEvent.objects.filter(action=Action.STAFF_INVITED).exists()


def test_it_needs_a_request_to_build_the_link(origin, facility_admin):
    with pytest.raises(ValueError, match="request"):
        staff_invitation_create(
            facility=origin, email="x@example.org", role=Role.FRONT_DESK, actor=facility_admin
        )


# --- revoke --------------------------------------------------------------------------------------


def test_it_revokes_and_audits(invite, facility_admin, origin):
    invitation, _ = invite()
    revoked = staff_invitation_revoke(invitation=invitation, actor=facility_admin)

    assert revoked.revoked_at is not None
    event = AuditEvent.objects.get(action=Action.STAFF_INVITATION_REVOKED)
    assert event.facility_id == origin.pk
    assert event.target_kind == TargetKind.INVITATION
    assert event.target_id == str(invitation.pk)
    assert event.actor_id == str(facility_admin.pk)


def test_it_revokes_twice_without_a_second_audit_row(invite, facility_admin):
    invitation, _ = invite()
    staff_invitation_revoke(invitation=invitation, actor=facility_admin)
    staff_invitation_revoke(invitation=invitation, actor=facility_admin)

    assert AuditEvent.objects.filter(action=Action.STAFF_INVITATION_REVOKED).count() == 1


def test_it_refuses_to_revoke_an_accepted_invitation(invite, facility_admin):
    invitation, _ = invite()
    user = UserFactory(email="new.tech@riverside.example.org")
    staff_invitation_accept(invitation=invitation, user=user)

    with pytest.raises(ValidationError, match="already accepted"):
        staff_invitation_revoke(invitation=invitation, actor=facility_admin)
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_it_refuses_a_revoke_by_someone_not_admin_there(invite, front_desk, stranger):
    invitation, _ = invite()
    for actor in (front_desk, stranger):
        with pytest.raises(PermissionDenied):
            staff_invitation_revoke(invitation=invitation, actor=actor)
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


# --- accept --------------------------------------------------------------------------------------


def test_it_accepts_makes_the_membership_and_audits(invite, origin):
    invitation, _ = invite(role=Role.CLINICIAN)
    user = UserFactory(email="new.tech@riverside.example.org")

    membership = staff_invitation_accept(invitation=invitation, user=user)

    assert (membership.user, membership.facility, membership.role) == (
        user,
        origin,
        Role.CLINICIAN,
    )
    invitation.refresh_from_db()
    assert invitation.accepted_by == user
    assert invitation.accepted_at is not None
    event = AuditEvent.objects.get(action=Action.STAFF_JOINED)
    assert event.facility_id == origin.pk
    assert event.actor_id == str(user.pk)
    assert event.target_kind == TargetKind.MEMBERSHIP
    assert event.target_id == str(membership.pk)
    assert event.detail == {"role": Role.CLINICIAN, "invitation_id": invitation.pk}


def test_it_accepts_twice_as_the_same_person_without_a_second_membership(invite):
    invitation, _ = invite()
    user = UserFactory(email="new.tech@riverside.example.org")

    first = staff_invitation_accept(invitation=invitation, user=user)
    second = staff_invitation_accept(invitation=invitation, user=user)

    assert first == second
    assert Membership.objects.filter(user=user).count() == 1
    assert AuditEvent.objects.filter(action=Action.STAFF_JOINED).count() == 1


def test_it_refuses_a_different_address(invite):
    invitation, _ = invite()
    other = UserFactory(email="someone.else@example.org")

    with pytest.raises(ValidationError, match="different e-mail"):
        staff_invitation_accept(invitation=invitation, user=other)
    assert not Membership.objects.filter(user=other).exists()


def test_it_refuses_an_invitation_used_by_someone_else(invite):
    invitation, _ = invite()
    user = UserFactory(email="new.tech@riverside.example.org")
    staff_invitation_accept(invitation=invitation, user=user)
    Membership.objects.filter(user=user).delete()
    other = UserFactory(email="other@example.org")

    with pytest.raises(ValidationError, match="no longer valid"):
        staff_invitation_accept(invitation=invitation, user=other)


@pytest.mark.parametrize("state", ["expired", "revoked"])
def test_it_refuses_an_invitation_that_is_not_pending(invite, state):
    invitation, _ = invite()
    if state == "expired":
        StaffInvitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())
    else:
        StaffInvitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())
    user = UserFactory(email="new.tech@riverside.example.org")

    with pytest.raises(ValidationError, match="no longer valid"):
        staff_invitation_accept(invitation=invitation, user=user)
    assert not Membership.objects.filter(user=user).exists()
    assert not AuditEvent.objects.filter(action=Action.STAFF_JOINED).exists()


def test_it_refuses_someone_already_on_the_staff_there(invite, origin):
    invitation, _ = invite()
    user = UserFactory(email="new.tech@riverside.example.org")
    Membership.objects.create(user=user, facility=origin, role=Role.FRONT_DESK)

    with pytest.raises(ValidationError, match="already on the staff"):
        staff_invitation_accept(invitation=invitation, user=user)
