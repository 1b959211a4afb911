from __future__ import annotations

import secrets

import pytest
from allauth.account.models import EmailAddress
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, Outcome, TargetKind
from audit.models import AuditEvent
from facilities.models import Membership, Role, StaffInvitation
from facilities.selectors import INVITATION_SESSION_KEY
from facilities.services import staff_invitation_create
from facilities.views import INVITATION_GUESS_LIMIT
from tests.factories import PASSWORD, UserFactory, make_staff

NEWCOMER = "newcomer@example.org"


@pytest.fixture
def invite(origin, facility_admin, rf):
    """Invite an address to the origin; returns the invitation and the link's path."""

    def make(email: str = NEWCOMER, role: str = Role.CLINICIAN):
        invitation, token = staff_invitation_create(
            facility=origin, email=email, role=role, actor=facility_admin, request=rf.post("/")
        )
        return invitation, reverse("facilities:invitation-accept", args=[token])

    return make


def assert_sent_to_mfa_set_up(response) -> None:
    """The staff middleware sends new staff to TOTP set-up; allauth asks for the password once
    more before a second factor is added (signing in does not count as re-authenticating)."""
    visited = [url for url, _status in response.redirect_chain]
    assert reverse("mfa_activate_totp") in visited
    assert visited[-1].startswith(reverse("account_reauthenticate"))
    assert response.status_code == 200


def refusals():
    return AuditEvent.objects.filter(action=Action.STAFF_INVITATION_REFUSED)


# --- A newcomer signs up -------------------------------------------------------------------------


def test_it_sends_a_newcomer_to_sign_up(client, invite):
    invitation, url = invite()

    response = client.get(url)

    assert response.status_code == 302
    assert response.url == reverse("account_signup")
    assert client.session[INVITATION_SESSION_KEY] == invitation.pk
    assert client.session["account_verified_email"] == NEWCOMER


def test_it_signs_a_newcomer_up_end_to_end(client, invite, origin):
    invitation, url = invite(role=Role.FRONT_DESK)
    client.get(url)

    form = client.get(reverse("account_signup"))
    assert form.status_code == 200
    assert f'value="{NEWCOMER}"' in form.content.decode()

    response = client.post(
        reverse("account_signup"),
        {"email": NEWCOMER, "password1": PASSWORD, "password2": PASSWORD},
        follow=True,
    )

    user = User.objects.get(email=NEWCOMER)
    assert EmailAddress.objects.get(user=user).verified  # no confirmation mail needed
    membership = Membership.objects.get(user=user)
    assert (membership.facility, membership.role) == (origin, Role.FRONT_DESK)
    invitation.refresh_from_db()
    assert invitation.accepted_by == user
    assert INVITATION_SESSION_KEY not in client.session
    assert AuditEvent.objects.filter(action=Action.STAFF_JOINED, facility_id=origin.pk).exists()
    # Signed in, and new staff must set up two-factor authentication before anything else.
    assert response.wsgi_request.user == user
    assert_sent_to_mfa_set_up(response)
    page = response.content.decode()
    assert "Welcome to Riverside General Hospital. You joined as Front desk." in page
    assert "two-factor authentication" in page


def test_it_refuses_to_sign_up_a_different_address(client, invite):
    client.get(invite()[1])

    response = client.post(
        reverse("account_signup"),
        {"email": "someone.else@example.org", "password1": PASSWORD, "password2": PASSWORD},
    )

    assert response.status_code == 200
    assert "Please use the e-mail address the invitation was sent to." in response.content.decode()
    assert not User.objects.filter(email="someone.else@example.org").exists()
    assert not StaffInvitation.objects.filter(accepted_at__isnull=False).exists()


def test_sign_up_is_closed_without_an_invitation(client, db):
    response = client.get(reverse("account_signup"))

    assert response.status_code == 200
    assert "Sign Up Closed" in response.content.decode()
    client.post(
        reverse("account_signup"),
        {"email": "walk.in@example.org", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert not User.objects.filter(email="walk.in@example.org").exists()


def test_sign_up_closes_when_the_opened_invitation_is_withdrawn(client, invite):
    invitation, url = invite()
    client.get(url)
    StaffInvitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())

    assert "Sign Up Closed" in client.get(reverse("account_signup")).content.decode()


# --- Someone with an account signs in ------------------------------------------------------------


def test_it_sends_an_existing_account_to_sign_in(client, invite, patient):
    _, url = invite(email=patient.email)

    response = client.get(url)

    assert response.status_code == 302
    assert response.url == f"{reverse('account_login')}?next={url}"
    assert INVITATION_SESSION_KEY not in client.session


def test_an_existing_account_joins_after_signing_in(client, invite, patient, origin):
    _invitation, url = invite(email=patient.email, role=Role.CLINICIAN)
    login_url = client.get(url).url

    response = client.post(login_url, {"login": patient.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == url

    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Join Riverside General Hospital as Clinician" in confirm.content.decode()

    response = client.post(url, follow=True)

    assert Membership.objects.get(user=patient).facility == origin
    assert response.redirect_chain[0][0] == reverse("portal:staff-home")
    assert_sent_to_mfa_set_up(response)


def test_a_signed_in_invitee_with_mfa_lands_on_the_staff_home(client, invite, clinician, origin):
    _, url = invite(email=clinician.email, role=Role.CLINICIAN)
    client.force_login(clinician)

    response = client.post(url, follow=True)

    assert response.redirect_chain == [(reverse("portal:staff-home"), 302)]
    assert "You joined Riverside General Hospital as Clinician." in response.content.decode()
    assert Membership.objects.filter(user=clinician, facility=origin).exists()


def test_it_does_not_join_on_a_get(client, invite, patient):
    _, url = invite(email=patient.email)
    client.force_login(patient)
    client.get(url)
    assert not Membership.objects.filter(user=patient).exists()


def test_it_asks_someone_signed_in_as_another_address_to_sign_out(client, invite, patient):
    _, url = invite()
    client.force_login(patient)

    for response in (client.get(url), client.post(url)):
        assert response.status_code == 403
        page = response.content.decode()
        assert "This invitation is for a different account" in page
        assert "Sign out first" in page
        assert NEWCOMER not in page
    assert not Membership.objects.filter(user=patient).exists()


def test_the_acceptor_opening_the_link_again_goes_to_the_staff_home(client, invite, clinician):
    _, url = invite(email=clinician.email)
    client.force_login(clinician)
    client.post(url)

    response = client.get(url)

    assert response.status_code == 302
    assert response.url == reverse("portal:staff-home")
    assert not refusals().exists()


# --- Links that do not work ----------------------------------------------------------------------


def assert_refused(response, status):
    assert response.status_code == status
    page = response.content.decode()
    assert "This invitation is no longer valid" in page
    for detail in ("expired</", "withdrawn</", "revoked", "unknown"):
        assert detail not in page


@pytest.mark.parametrize("token", [secrets.token_urlsafe(32), "abc", "x" * 500, "a" * 42 + "!"])
def test_it_refuses_an_unknown_or_malformed_link(client, db, token):
    response = client.get(reverse("facilities:invitation-accept", args=[token]))

    assert_refused(response, 404)
    event = refusals().get()
    assert event.outcome == Outcome.DENIED
    assert event.detail == {"reason": "unknown"}
    assert event.facility_id is None
    assert token not in str(event.detail)


def test_it_refuses_an_expired_link_with_410(client, invite, origin):
    invitation, url = invite()
    StaffInvitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())

    assert_refused(client.get(url), 410)
    event = refusals().get()
    assert event.detail == {"reason": "expired"}
    assert event.facility_id == origin.pk
    assert (event.target_kind, event.target_id) == (TargetKind.INVITATION, str(invitation.pk))
    assert INVITATION_SESSION_KEY not in client.session


def test_it_refuses_a_withdrawn_link(client, invite):
    invitation, url = invite()
    StaffInvitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())

    assert_refused(client.get(url), 404)
    assert refusals().get().detail == {"reason": "revoked"}
    assert "Sign Up Closed" in client.get(reverse("account_signup")).content.decode()


def test_it_refuses_a_used_link_to_anyone_else(client, invite, patient):
    invitation, url = invite(email=patient.email)
    client.force_login(patient)
    client.post(url)
    client.logout()

    assert_refused(client.get(url), 404)
    assert refusals().get().detail == {"reason": "accepted"}
    other = UserFactory(email="other@example.org")
    client.force_login(other)
    assert_refused(client.post(url), 404)
    assert Membership.objects.filter(facility=invitation.facility, user=other).count() == 0


def test_it_slows_down_guessing_per_address(client, invite):
    _, good_url = invite()
    for _ in range(INVITATION_GUESS_LIMIT):
        guess = reverse("facilities:invitation-accept", args=[secrets.token_urlsafe(32)])
        assert client.get(guess).status_code == 404

    blocked = client.get(good_url)
    assert blocked.status_code == 429
    assert "Too many attempts" in blocked.content.decode()
    assert refusals().count() == INVITATION_GUESS_LIMIT  # the blocked requests are not looked up

    # Another address is not affected.
    assert client.get(good_url, REMOTE_ADDR="198.51.100.7").status_code == 302


def test_it_does_not_count_good_links_as_guesses(client, invite):
    _, url = invite()
    for _ in range(INVITATION_GUESS_LIMIT + 5):
        assert client.get(url).status_code == 302


def test_it_refuses_other_methods(client, invite):
    _, url = invite()
    assert client.put(url).status_code == 405
    assert client.delete(url).status_code == 405


def test_an_anonymous_post_is_treated_like_opening_the_link(client, invite):
    invitation, url = invite()
    response = client.post(url)
    assert response.url == reverse("account_signup")
    assert client.session[INVITATION_SESSION_KEY] == invitation.pk


def test_it_sends_staff_without_mfa_to_set_it_up_first(client, invite, origin):
    unprotected = make_staff(origin, Role.FRONT_DESK, email="nomfa@example.org", mfa=False)
    client.force_login(unprotected)
    response = client.get(reverse("facilities:staff", args=[origin.pk]))
    assert response.url == reverse("mfa_activate_totp")
