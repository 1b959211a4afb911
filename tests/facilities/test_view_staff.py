from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Role, StaffInvitation
from tests.factories import PASSWORD


@pytest.fixture
def url(origin):
    return reverse("facilities:staff", args=[origin.pk])


def test_it_lists_members_and_open_invitations(
    facility_admin_client, url, front_desk, origin, facility_admin, rf
):
    from facilities.services import staff_invitation_create

    request = rf.post("/")
    staff_invitation_create(
        facility=origin,
        email="invitee@example.org",
        role=Role.CLINICIAN,
        actor=facility_admin,
        request=request,
    )

    response = facility_admin_client.get(url)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Staff of Riverside General Hospital" in page
    assert "desk@riverside.example.org" in page
    assert "Front desk" in page
    assert "invitee@example.org" in page
    assert "Pending" in page
    assert "Withdraw invitation to invitee@example.org" in page
    assert '<label for="id_email">E-mail address' in page
    assert '<label for="id_role">Role' in page


def test_it_invites(facility_admin_client, url, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = facility_admin_client.post(
            url, {"email": "Newcomer@Example.org", "role": Role.CLINICIAN}
        )

    assert response.status_code == 302
    assert response.url == url
    invitation = StaffInvitation.objects.get()
    assert (invitation.email, invitation.role) == ("newcomer@example.org", Role.CLINICIAN)
    assert AuditEvent.objects.filter(action=Action.STAFF_INVITED).count() == 1
    assert len(mailoutbox) == 1
    assert "/facilities/invitations/" in mailoutbox[0].body
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any(
        "Invitation sent to newcomer@example.org as Clinician. The link expires on " in m
        for m in messages
    )


def test_it_redirects_anonymous_visitors_to_sign_in(client, url):
    for response in (client.get(url), client.post(url, {"email": "a@example.org"})):
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    assert not StaffInvitation.objects.exists()


def test_it_hides_the_facility_from_a_stranger(client, stranger, url):
    client.force_login(stranger)
    assert client.get(url).status_code == 404
    assert client.post(url, {"email": "a@example.org", "role": "clinician"}).status_code == 404
    assert not StaffInvitation.objects.exists()


@pytest.mark.parametrize("role", [Role.FRONT_DESK, Role.CLINICIAN])
def test_it_forbids_other_roles(client, origin, url, role):
    from tests.factories import make_staff

    user = make_staff(origin, role, email=f"{role}@riverside.example.org")
    client.force_login(user)
    assert client.get(url).status_code == 403
    assert client.post(url, {"email": "a@example.org", "role": "clinician"}).status_code == 403
    assert not StaffInvitation.objects.exists()


def test_it_refuses_other_methods(facility_admin_client, url):
    assert facility_admin_client.put(url).status_code == 405
    assert facility_admin_client.delete(url).status_code == 405


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"email": "not-an-address", "role": Role.CLINICIAN}, "Enter a valid email address."),
        ({"email": "", "role": Role.CLINICIAN}, "This field is required."),
        ({"email": "a@example.org", "role": "surgeon"}, "Select a valid choice."),
        ({"email": "desk@riverside.example.org", "role": Role.CLINICIAN}, "already on the staff"),
    ],
)
def test_it_shows_a_clear_error_and_changes_nothing(
    facility_admin_client,
    url,
    front_desk,
    mailoutbox,
    django_capture_on_commit_callbacks,
    data,
    error,
):
    audit_rows = AuditEvent.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = facility_admin_client.post(url, data)

    assert response.status_code == 400
    assert error in response.content.decode()
    assert 'class="errorlist' in response.content.decode()
    assert not StaffInvitation.objects.exists()
    assert AuditEvent.objects.count() == audit_rows
    assert mailoutbox == []


def test_it_refuses_a_second_invitation_to_a_pending_address(facility_admin_client, url):
    data = {"email": "twice@example.org", "role": Role.CLINICIAN}
    facility_admin_client.post(url, data)
    response = facility_admin_client.post(url, data)

    assert response.status_code == 400
    assert "already has a pending invitation" in response.content.decode()
    assert StaffInvitation.objects.count() == 1


def test_it_asks_for_the_password_again_before_inviting(client, facility_admin, url):
    client.force_login(facility_admin)

    response = client.post(url, {"email": "new@example.org", "role": Role.CLINICIAN})

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_reauthenticate"))
    assert not StaffInvitation.objects.exists()

    # Entering the password replays the suspended invitation.
    response = client.post(response.url, {"password": PASSWORD})
    assert response.status_code == 302
    assert response.url == url
    assert StaffInvitation.objects.get().email == "new@example.org"


def test_it_shows_form_errors_before_asking_for_the_password(client, facility_admin, url):
    client.force_login(facility_admin)
    response = client.post(url, {"email": "nope", "role": Role.CLINICIAN})
    assert response.status_code == 400


def test_it_says_404_to_a_stranger_whatever_the_method(client, stranger, origin, db):
    """A refused method must not confirm to an outsider that a facility id exists."""
    client.force_login(stranger)
    for name, args in (
        ("facilities:staff", [origin.pk]),
        ("facilities:invitation-revoke", [origin.pk, 1]),
        ("facilities:token-revoke", [origin.pk, 1]),
        ("facilities:tokens", [origin.pk]),
    ):
        assert client.put(reverse(name, args=args)).status_code == 404
        assert client.get(reverse(name, args=args)).status_code == 404
