from __future__ import annotations

import hashlib

import pytest
from django.urls import reverse

from audit.codes import Action, PurposeOfUse
from audit.models import AuditEvent
from facilities.models import APIToken
from tests.factories import PASSWORD

GOOD = {
    "name": "Radiology PACS",
    "scopes": ["search", "retrieve"],
    "purpose_of_use": PurposeOfUse.TREATMENT,
    "expires_in_days": "90",
}


@pytest.fixture
def url(origin):
    return reverse("facilities:tokens", args=[origin.pk])


def raw_token_in(response) -> str:
    page = response.content.decode()
    start = page.index('id="raw-token"')
    return page[page.index(">", start) + 1 : page.index("</p>", start)]


def test_it_lists_tokens_and_the_create_form(facility_admin_client, url):
    facility_admin_client.post(url, GOOD)
    response = facility_admin_client.get(url)

    assert response.status_code == 200
    page = response.content.decode()
    assert "API tokens of Riverside General Hospital" in page
    assert "Radiology PACS" in page
    assert "Treatment" in page
    assert "Never" in page  # not used yet
    assert "Active" in page
    assert "Revoke Radiology PACS" in page
    for field in ("name", "purpose_of_use", "expires_in_days"):
        assert f'<label for="id_{field}"' in page
    assert "<legend>What the token may do" in page


def test_it_shows_the_new_token_once(facility_admin_client, url, origin):
    response = facility_admin_client.post(url, GOOD)

    assert response.status_code == 201
    assert "It will not be shown again" in response.content.decode()
    raw = raw_token_in(response)
    assert raw.startswith("icp_")
    token = APIToken.objects.get()
    assert token.facility == origin
    assert token.scopes == ["search", "retrieve"]
    secret = raw.split("_", 2)[2]
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token.secret_hash != secret
    assert "no-store" in response["Cache-Control"]
    assert raw not in response.get("Location", "")

    again = facility_admin_client.get(url)
    assert raw not in again.content.decode()
    assert secret not in again.content.decode()
    assert token.public_id in again.content.decode()


def test_it_keeps_the_token_out_of_the_session_and_messages(facility_admin_client, url):
    response = facility_admin_client.post(url, GOOD)
    raw = raw_token_in(response)

    session = facility_admin_client.session
    assert not any(raw in str(value) for value in session.values())
    assert raw not in str(response.cookies)


def test_it_audits_the_creation(facility_admin_client, url, origin):
    facility_admin_client.post(url, GOOD)
    event = AuditEvent.objects.get(action=Action.API_TOKEN_CREATED)
    assert event.facility_id == origin.pk
    assert event.target_id == str(APIToken.objects.get().pk)


def test_it_redirects_anonymous_visitors_to_sign_in(client, url):
    for response in (client.get(url), client.post(url, GOOD)):
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    assert not APIToken.objects.exists()


def test_it_hides_the_facility_from_a_stranger(client, stranger, url, reauthenticate):
    client.force_login(stranger)
    reauthenticate(client, stranger)
    assert client.get(url).status_code == 404
    assert client.post(url, GOOD).status_code == 404
    assert not APIToken.objects.exists()


def test_it_forbids_other_roles(client, front_desk, url, reauthenticate):
    client.force_login(front_desk)
    reauthenticate(client, front_desk)
    assert client.get(url).status_code == 403
    assert client.post(url, GOOD).status_code == 403
    assert not APIToken.objects.exists()


def test_it_refuses_other_methods(facility_admin_client, url):
    assert facility_admin_client.put(url).status_code == 405
    assert facility_admin_client.delete(url).status_code == 405


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"scopes": []}, "Choose at least one thing the token may do."),
        ({"scopes": ["delete"]}, "Select a valid choice."),
        ({"expires_in_days": "0"}, "greater than or equal to 1"),
        ({"expires_in_days": "366"}, "less than or equal to 365"),
        ({"expires_in_days": "soon"}, "Enter a whole number."),
        ({"name": ""}, "This field is required."),
        ({"purpose_of_use": "SHOPPING"}, "Select a valid choice."),
    ],
)
def test_it_shows_a_clear_error_and_changes_nothing(facility_admin_client, url, change, error):
    audit_rows = AuditEvent.objects.count()
    data = {**GOOD, **change}
    if data["scopes"] == []:
        del data["scopes"]

    response = facility_admin_client.post(url, data)

    assert response.status_code == 400
    assert error in response.content.decode()
    assert "icp_" not in response.content.decode()
    assert not APIToken.objects.exists()
    assert AuditEvent.objects.count() == audit_rows


def test_it_asks_for_the_password_again_before_making_a_token(client, facility_admin, url):
    client.force_login(facility_admin)

    response = client.post(url, GOOD)

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_reauthenticate"))
    assert not APIToken.objects.exists()

    # The password replays the request, and the one-time page is the answer to it.
    response = client.post(response.url, {"password": PASSWORD})
    assert response.status_code == 201
    assert raw_token_in(response).startswith("icp_")
    assert APIToken.objects.count() == 1
