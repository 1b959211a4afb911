"""What every page tells the browser, and that real browsers' form posts still get through."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def test_pages_carry_the_security_headers(client):
    response = client.get(reverse("account_login"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    policy = response["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in policy


def test_a_browser_form_post_with_our_own_origin_passes_the_csrf_check(patient):
    """Browsers send Origin on POST; the referrer policy decides whether it is real or 'null'."""
    browser = Client(enforce_csrf_checks=True)
    browser.get(reverse("account_login"))
    token = browser.cookies["csrftoken"].value
    response = browser.post(
        reverse("account_login"),
        {"login": patient.email, "password": PASSWORD, "csrfmiddlewaretoken": token},
        HTTP_ORIGIN="http://testserver",
    )
    assert response.status_code == 302
    assert "_auth_user_id" in browser.session


def test_a_post_from_a_null_origin_is_refused_with_a_plain_page(patient):
    browser = Client(enforce_csrf_checks=True)
    browser.get(reverse("account_login"))
    response = browser.post(
        reverse("account_login"),
        {
            "login": patient.email,
            "password": PASSWORD,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"].value,
        },
        HTTP_ORIGIN="null",
    )
    assert response.status_code == 403
    assert b"Please try again" in response.content
    assert "_auth_user_id" not in browser.session
