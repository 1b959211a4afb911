from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Role, StaffInvitation
from facilities.services import staff_invitation_accept, staff_invitation_create
from tests.factories import UserFactory


def invite(facility, actor, rf, email="invitee@example.org"):
    invitation, _ = staff_invitation_create(
        facility=facility, email=email, role=Role.CLINICIAN, actor=actor, request=rf.post("/")
    )
    return invitation


@pytest.fixture
def invitation(origin, facility_admin, rf):
    return invite(origin, facility_admin, rf)


@pytest.fixture
def url(origin, invitation):
    return reverse("facilities:invitation-revoke", args=[origin.pk, invitation.pk])


def test_it_withdraws_the_invitation(facility_admin_client, url, origin, invitation):
    response = facility_admin_client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("facilities:staff", args=[origin.pk])
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    assert AuditEvent.objects.filter(action=Action.STAFF_INVITATION_REVOKED).count() == 1
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert messages == [
        "The invitation to invitee@example.org was withdrawn. Its link no longer works."
    ]


def test_the_withdrawn_invitation_leaves_the_list(facility_admin_client, url, origin):
    facility_admin_client.post(url)
    page = facility_admin_client.get(reverse("facilities:staff", args=[origin.pk]))
    assert "Withdraw invitation to invitee@example.org" not in page.content.decode()
    assert "There are no open invitations." in page.content.decode()


def test_it_redirects_anonymous_visitors_to_sign_in(client, url, invitation):
    response = client.post(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_it_hides_the_facility_from_a_stranger(client, stranger, url, invitation):
    client.force_login(stranger)
    assert client.post(url).status_code == 404
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_it_hides_invitations_of_other_facilities(
    facility_admin_client, origin, elsewhere, stranger, rf
):
    foreign = invite(elsewhere, stranger, rf)
    url = reverse("facilities:invitation-revoke", args=[origin.pk, foreign.pk])

    assert facility_admin_client.post(url).status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_it_forbids_other_roles(client, front_desk, url, invitation):
    client.force_login(front_desk)
    assert client.post(url).status_code == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_it_refuses_other_methods(facility_admin_client, url, invitation):
    assert facility_admin_client.get(url).status_code == 405
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_it_explains_why_an_accepted_invitation_cannot_be_withdrawn(
    facility_admin_client, url, invitation
):
    staff_invitation_accept(invitation=invitation, user=UserFactory(email="invitee@example.org"))
    audit_rows = AuditEvent.objects.count()

    response = facility_admin_client.post(url, follow=True)

    assert "already accepted. Remove the staff member instead." in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.revoked_at is None
    assert AuditEvent.objects.count() == audit_rows


def test_it_withdraws_an_expired_invitation_to_tidy_the_list(
    facility_admin_client, url, invitation
):
    StaffInvitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())
    facility_admin_client.post(url)
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
