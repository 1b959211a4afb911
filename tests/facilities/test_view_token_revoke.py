from __future__ import annotations

import pytest
from django.urls import reverse

from audit.codes import Action, PurposeOfUse
from audit.models import AuditEvent
from facilities.access import api_token_authenticate
from facilities.services import api_token_create


def make_token(facility, actor):
    return api_token_create(
        facility=facility,
        name="Radiology PACS",
        scopes=["search"],
        purpose_of_use=PurposeOfUse.TREATMENT,
        expires_in_days=30,
        actor=actor,
    )


@pytest.fixture
def issued(origin, facility_admin):
    return make_token(origin, facility_admin)


@pytest.fixture
def url(origin, issued):
    return reverse("facilities:token-revoke", args=[origin.pk, issued[0].pk])


def test_it_revokes(facility_admin_client, url, origin, issued):
    token, raw = issued

    response = facility_admin_client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("facilities:tokens", args=[origin.pk])
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert api_token_authenticate(raw) is None
    assert AuditEvent.objects.filter(action=Action.API_TOKEN_REVOKED).count() == 1
    listing = facility_admin_client.get(response.url).content.decode()
    assert "Revoked" in listing
    assert "Revoke Radiology PACS" not in listing


def test_it_redirects_anonymous_visitors_to_sign_in(client, url, issued):
    response = client.post(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    issued[0].refresh_from_db()
    assert issued[0].revoked_at is None


def test_it_hides_the_facility_from_a_stranger(client, stranger, url, issued, reauthenticate):
    client.force_login(stranger)
    reauthenticate(client, stranger)
    assert client.post(url).status_code == 404
    issued[0].refresh_from_db()
    assert issued[0].revoked_at is None


def test_it_hides_tokens_of_other_facilities(facility_admin_client, origin, elsewhere, stranger):
    foreign, _ = make_token(elsewhere, stranger)
    url = reverse("facilities:token-revoke", args=[origin.pk, foreign.pk])

    assert facility_admin_client.post(url).status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_it_forbids_other_roles(client, front_desk, url, issued, reauthenticate):
    client.force_login(front_desk)
    reauthenticate(client, front_desk)
    assert client.post(url).status_code == 403
    issued[0].refresh_from_db()
    assert issued[0].revoked_at is None


def test_it_refuses_other_methods(facility_admin_client, url, issued):
    assert facility_admin_client.get(url).status_code == 405
    issued[0].refresh_from_db()
    assert issued[0].revoked_at is None


def test_it_asks_for_the_password_again(client, facility_admin, url, issued):
    client.force_login(facility_admin)
    response = client.post(url)
    assert response.url.startswith(reverse("account_reauthenticate"))
    issued[0].refresh_from_db()
    assert issued[0].revoked_at is None


def test_it_revokes_an_already_revoked_token_without_a_second_row(facility_admin_client, url):
    facility_admin_client.post(url)
    facility_admin_client.post(url)
    assert AuditEvent.objects.filter(action=Action.API_TOKEN_REVOKED).count() == 1
