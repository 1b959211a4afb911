"""Every URL of the project has a declared access policy, and the policy holds.

A view of ours declares its policy with `accounts.policies.policy(...)`; views of libraries
are listed here by URL name. A new URL without either fails this test, and so does a URL
whose behaviour contradicts its policy (an anonymous visitor reaching a login-only page, a
patient reaching a staff page, a browser reaching a token-only API).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.urls import URLPattern, URLResolver, converters, get_resolver, reverse
from django.urls.exceptions import NoReverseMatch

from accounts.policies import LOGIN, PUBLIC, ROLE, TOKEN

ADMIN = "admin"  # Django's admin: platform admins only (is_staff), through allauth's sign-in

# Library views, by URL name. allauth's sign-in and recovery pages are public by nature;
# its account and MFA management pages need a signed-in person.
LIBRARY_POLICIES = {
    "account_login": PUBLIC,
    "account_logout": PUBLIC,
    "account_inactive": PUBLIC,
    "account_signup": PUBLIC,
    "account_email_verification_sent": PUBLIC,
    "account_confirm_email": PUBLIC,
    "account_confirm_login_code": PUBLIC,
    "account_reset_password": PUBLIC,
    "account_reset_password_done": PUBLIC,
    "account_reset_password_from_key": PUBLIC,
    "account_reset_password_from_key_done": PUBLIC,
    "mfa_authenticate": PUBLIC,  # the second step of signing in, before a session exists
    "account_reauthenticate": LOGIN,
    "account_email": LOGIN,
    "account_change_password": LOGIN,
    "account_set_password": LOGIN,
    "mfa_index": LOGIN,
    "mfa_reauthenticate": LOGIN,
    "mfa_activate_totp": LOGIN,
    "mfa_deactivate_totp": LOGIN,
    "mfa_view_recovery_codes": LOGIN,
    "mfa_generate_recovery_codes": LOGIN,
    "mfa_download_recovery_codes": LOGIN,
    "mfa_list_webauthn": LOGIN,
    "mfa_add_webauthn": LOGIN,
    "mfa_reauthenticate_webauthn": LOGIN,
    "mfa_remove_webauthn": LOGIN,
    "mfa_edit_webauthn": LOGIN,
}

SAMPLE_VALUES = {
    converters.IntConverter: 987654,
    converters.StringConverter: "no-such-thing",
    converters.SlugConverter: "no-such-thing",
    converters.UUIDConverter: uuid.UUID(int=0),
    converters.PathConverter: "no/such/thing",
}


@dataclass(frozen=True)
class Route:
    name: str
    namespace: str
    route: str
    pattern: URLPattern

    @property
    def policy(self) -> str | None:
        if self.namespace == "admin:":  # includes the admin's few unnamed redirect routes
            return ADMIN
        declared = getattr(self.pattern.callback, "access_policy", None)
        return declared or LIBRARY_POLICIES.get(self.name)

    def sample_url(self) -> str | None:
        """A URL for this route with made-up arguments, or None for regex routes."""
        route_converters = getattr(self.pattern.pattern, "converters", None)
        if route_converters is None:
            return None
        kwargs = {key: SAMPLE_VALUES[type(conv)] for key, conv in route_converters.items()}
        try:
            return reverse(self.name, kwargs=kwargs)
        except NoReverseMatch:
            return None


def all_routes() -> Iterator[Route]:
    def walk(patterns, prefix: str, namespace: str) -> Iterator[Route]:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                yield from walk(entry.url_patterns, prefix + str(entry.pattern), inner)
            else:
                name = f"{namespace}{entry.name}" if entry.name else ""
                yield Route(name, namespace, prefix + str(entry.pattern), entry)

    yield from walk(get_resolver().url_patterns, "", "")


ROUTES = list(all_routes())


def test_every_url_has_a_declared_policy():
    missing = [f"{r.route} ({r.name or 'unnamed'})" for r in ROUTES if not r.policy]
    assert missing == [], "URLs without a declared access policy: " + ", ".join(missing)


def test_the_library_table_names_only_urls_that_exist():
    names = {route.name for route in ROUTES}
    assert set(LIBRARY_POLICIES) <= names


def routes_with(*policies: str) -> list[Route]:
    return [r for r in ROUTES if r.name and r.policy in policies and r.sample_url() is not None]


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_with(LOGIN, ROLE), ids=lambda r: r.name)
def test_anonymous_visitors_are_sent_to_sign_in(client, route):
    response = client.get(route.sample_url())
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_with(ROLE), ids=lambda r: r.name)
def test_patients_do_not_reach_staff_pages(client, patient, route):
    client.force_login(patient)
    assert client.get(route.sample_url()).status_code in (403, 404)


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_with(TOKEN), ids=lambda r: r.name)
def test_token_urls_refuse_visitors_without_a_token(client, patient, route):
    assert client.get(route.sample_url()).status_code == 401
    client.force_login(patient)
    assert client.get(route.sample_url()).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_with(ADMIN), ids=lambda r: r.name)
def test_the_admin_is_for_platform_admins_only(client, patient, route):
    anonymous = client.get(route.sample_url())
    assert anonymous.status_code == 302
    client.force_login(patient)
    assert client.get(route.sample_url(), follow=True).status_code in (403, 404)


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_with(PUBLIC), ids=lambda r: r.name)
def test_public_urls_answer_anonymous_visitors_without_error(client, route):
    assert client.get(route.sample_url()).status_code < 500
