"""Signing in: passwords, verified e-mail, rate limits, TOTP, and the audit rows they leave."""

from __future__ import annotations

import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.urls import reverse

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory, enable_totp

pytestmark = pytest.mark.django_db
LOGIN = reverse("account_login")


def totp_code(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def sign_in(client, email: str, password: str = PASSWORD, **extra):
    return client.post(
        LOGIN, {"login": email, "password": password}, REMOTE_ADDR="198.51.100.4", **extra
    )


def test_it_signs_a_patient_in_and_audits_it(client, patient):
    response = sign_in(client, patient.email)
    assert response.status_code == 302
    assert response.url == reverse("portal:home")
    assert client.get(reverse("portal:patient-home")).status_code == 200
    event = AuditEvent.objects.get(action=Action.LOGIN)
    assert (event.actor_kind, event.actor_id) == (ActorKind.USER, str(patient.pk))
    assert event.client_address == "198.51.100.4"
    assert event.dicom_event_id == "110114"


def test_it_refuses_a_wrong_password_with_a_clear_message_and_audits_it(client, patient):
    response = sign_in(client, patient.email, "not the password")
    assert response.status_code == 200
    assert b"not correct" in response.content
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.get(action=Action.LOGIN_FAILED)
    assert event.outcome == Outcome.DENIED
    assert (event.target_kind, event.target_id) == (TargetKind.USER, str(patient.pk))
    assert event.detail == {"known_account": True}


def test_it_audits_attempts_on_unknown_addresses_without_writing_the_address_down(client):
    sign_in(client, "nobody@example.org", "whatever-it-is")
    event = AuditEvent.objects.get(action=Action.LOGIN_FAILED)
    assert event.detail == {"known_account": False}
    assert event.target_id == ""
    assert "nobody" not in str(AuditEvent.objects.values().get())


def test_it_rate_limits_repeated_failures_for_one_account(client, patient):
    for _ in range(5):
        sign_in(client, patient.email, "wrong password")
    response = sign_in(client, patient.email)  # even the right password must now wait
    assert response.status_code == 200
    assert b"Too many failed login attempts" in response.content
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action=Action.LOGIN).count() == 0


def test_it_holds_back_an_unverified_address(client):
    user = UserFactory(email="new@example.org")
    EmailAddress.objects.filter(user=user).update(verified=False)
    response = sign_in(client, user.email)
    assert response.status_code == 302
    assert response.url == reverse("account_email_verification_sent")
    assert "_auth_user_id" not in client.session


def test_staff_with_totp_must_give_a_code(client, front_desk):
    secret = enable_totp_again(front_desk)
    response = sign_in(client, front_desk.email)
    assert response.url == reverse("mfa_authenticate")
    assert "_auth_user_id" not in client.session

    wrong = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert wrong.status_code == 200
    assert b"Incorrect code" in wrong.content
    assert "_auth_user_id" not in client.session
    failed = AuditEvent.objects.get(action=Action.LOGIN_FAILED)
    assert failed.detail == {"known_account": True, "step": "mfa", "type": "totp"}

    right = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert right.status_code == 302
    assert client.get(reverse("portal:staff-home")).status_code == 200
    assert AuditEvent.objects.filter(action=Action.LOGIN, actor_id=str(front_desk.pk)).count() == 1


def enable_totp_again(user) -> str:
    """The fixture's staff have an authenticator already; give them one whose secret we know."""
    from allauth.mfa.models import Authenticator

    Authenticator.objects.filter(user=user).delete()
    return enable_totp(user)


def test_it_shows_a_plain_page_for_a_missing_mfa_step(client):
    response = client.get(reverse("mfa_authenticate"))
    assert response.status_code == 302
    assert response.url.startswith(LOGIN)


def test_the_sign_in_page_offers_no_public_sign_up(client):
    response = client.get(LOGIN)
    assert response.status_code == 200
    assert reverse("account_signup").encode() not in response.content
    assert b"invited by their hospital" in response.content
