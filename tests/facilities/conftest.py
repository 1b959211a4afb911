"""Helpers for the facilities tests: admins who just re-entered their password, and a second
admin so that removing one is not removing the last."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from allauth.account.internal.flows.login import (
    _AUTHENTICATION_METHODS_USER_SESSION_KEY,
    AUTHENTICATION_METHODS_SESSION_KEY,
)
from django.test import Client

from accounts.models import User
from audit.models import AuditEvent
from facilities.models import Facility, Role
from tests.factories import make_staff


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every fixture person gets a password; the production hasher takes ~0.3 s per person and
    is not what these tests are about."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def reauthenticate() -> Callable[[Client, User], None]:
    """Record, in the client's session, that its user re-entered a password just now (what
    allauth's re-authentication page records), so destructive views proceed."""

    def mark(client: Client, user: User) -> None:
        session = client.session
        session[AUTHENTICATION_METHODS_SESSION_KEY] = [
            {"method": "password", "at": time.time(), "reauthenticated": True}
        ]
        session[_AUTHENTICATION_METHODS_USER_SESSION_KEY] = str(user.pk)
        session.save()

    return mark


@pytest.fixture
def facility_admin_client(client: Client, facility_admin: User, reauthenticate) -> Client:
    """The origin's facility admin, signed in (with MFA) and freshly re-authenticated."""
    client.force_login(facility_admin)
    reauthenticate(client, facility_admin)
    return client


@pytest.fixture
def second_admin(origin: Facility) -> User:
    return make_staff(origin, Role.FACILITY_ADMIN, email="deputy@riverside.example.org")


@pytest.fixture
def audit_count() -> Callable[[], int]:
    return AuditEvent.objects.count
