"""Staff and admins reach no staff page until they use a second factor; patients may choose."""

from __future__ import annotations

import time

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Role
from tests.factories import PASSWORD, UserFactory, make_staff

pytestmark = pytest.mark.django_db


@pytest.fixture
def new_staff(origin):
    return make_staff(origin, Role.FRONT_DESK, email="new.desk@riverside.example.org", mfa=False)


@pytest.mark.parametrize("page", ["portal:home", "portal:staff-home", "portal:patient-home"])
def test_staff_without_mfa_are_sent_to_set_it_up(client, new_staff, page):
    client.force_login(new_staff)
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert response.url == reverse("mfa_activate_totp")


def test_platform_admins_without_mfa_do_not_reach_the_admin(client):
    admin = UserFactory(email="root@example.org", is_staff=True, is_superuser=True)
    client.force_login(admin)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert response.url == reverse("mfa_activate_totp")


def test_staff_can_still_sign_out_and_set_up_mfa(client, new_staff):
    sign_in(client, new_staff)
    assert client.get(reverse("mfa_activate_totp")).status_code == 200
    assert client.post(reverse("account_logout")).status_code == 302
    assert "_auth_user_id" not in client.session


def sign_in(client, user):
    """A real sign-in: setting up MFA asks for a recent one, which force_login does not give."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    # The first page a new staff member tries sends them to MFA set-up.
    assert client.get(response.url).url == reverse("mfa_activate_totp")
    # Adding a second factor asks for the password once more (allauth's re-authentication),
    # so that a borrowed session cannot enrol someone else's authenticator.
    assert client.get(reverse("mfa_activate_totp")).url.startswith(
        reverse("account_reauthenticate")
    )
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})


def test_setting_up_totp_opens_the_staff_pages_and_is_audited(
    client, new_staff, django_capture_on_commit_callbacks
):
    sign_in(client, new_staff)
    client.get(reverse("mfa_activate_totp"))
    secret = client.session[SECRET_SESSION_KEY]
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("mfa_activate_totp"), {"code": code})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=new_staff, type=Authenticator.Type.TOTP).exists()
    assert client.get(reverse("portal:staff-home")).status_code == 200
    added = AuditEvent.objects.filter(action=Action.MFA_ADDED, actor_id=str(new_staff.pk))
    assert {event.detail["type"] for event in added} >= {"totp"}


def test_a_wrong_setup_code_changes_nothing(client, new_staff):
    sign_in(client, new_staff)
    client.get(reverse("mfa_activate_totp"))
    response = client.post(reverse("mfa_activate_totp"), {"code": "12345x"})
    assert response.status_code == 200
    assert not Authenticator.objects.filter(user=new_staff).exists()
    assert client.get(reverse("portal:staff-home")).status_code == 302


def test_patients_may_go_without_mfa(client, patient):
    client.force_login(patient)
    assert client.get(reverse("portal:patient-home")).status_code == 200


def test_patients_do_not_reach_staff_pages(client, patient):
    client.force_login(patient)
    assert client.get(reverse("portal:staff-home")).status_code == 403


def test_staff_may_choose_a_security_key_instead(client, new_staff):
    """WebAuthn set-up is reachable before MFA, and its scripts come from our own origin,
    so the strict Content-Security-Policy does not break it."""
    sign_in(client, new_staff)
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    response = client.get(reverse("mfa_add_webauthn"))
    assert response.status_code == 200
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert b'<script src="/static/mfa/js/webauthn' in response.content
    assert b"<script>" not in response.content  # no inline script the policy would block
