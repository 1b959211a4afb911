"""People sign in through a real browser: what a test client cannot show (cookies, Origin
headers, the Content-Security-Policy) decides whether this works."""

from __future__ import annotations

import time

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from playwright.sync_api import expect

from audit.codes import Action
from audit.models import AuditEvent
from tests.factories import PASSWORD, enable_totp

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_patient_signs_in_and_out(live_server, page, shoot, patient):
    page.goto(live_server.url)
    shoot("landing")
    page.get_by_role("link", name="Sign in").first.click()
    page.get_by_label("Email").fill(patient.email)
    page.get_by_label("Password").fill(PASSWORD)
    shoot("sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="My images")).to_be_visible()
    shoot("patient-home")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert AuditEvent.objects.filter(action=Action.LOGIN, actor_id=str(patient.pk)).count() == 1
    assert AuditEvent.objects.filter(action=Action.LOGOUT, actor_id=str(patient.pk)).count() == 1


def test_staff_sign_in_with_an_authenticator_code(live_server, page, shoot, facility_admin):
    Authenticator.objects.filter(user=facility_admin).delete()
    secret = enable_totp(facility_admin)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(facility_admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("Code")).to_be_visible()
    shoot("authenticator-code")
    page.get_by_label("Code").fill(format_hotp_value(hotp_value(secret, int(time.time()) // 30)))
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_role("heading", name="Staff home")).to_be_visible()
    shoot("staff-home")
    page.get_by_role("link", name="Staff", exact=True).click()
    expect(page.get_by_role("heading", name="Staff of Riverside General Hospital")).to_be_visible()
    shoot("facility-staff")
