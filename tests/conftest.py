"""The people and places every test can use (see CONVENTIONS.md)."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from accounts.models import User
from facilities.models import Facility, Role
from tests.factories import FacilityFactory, UserFactory, make_staff


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters live in the cache; each test starts with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def origin(db) -> Facility:
    return FacilityFactory(name="Riverside General Hospital", kind=Facility.Kind.ORIGINATING)


@pytest.fixture
def receiver(db) -> Facility:
    return FacilityFactory(name="Lakeside Imaging Center", kind=Facility.Kind.RECEIVING)


@pytest.fixture
def elsewhere(db) -> Facility:
    return FacilityFactory(name="Hilltop Clinic", kind=Facility.Kind.BOTH)


@pytest.fixture
def patient(db) -> User:
    return UserFactory(email="pat@example.org", first_name="Pat", last_name="Doe")


@pytest.fixture
def other_patient(db) -> User:
    return UserFactory(email="olive@example.org", first_name="Olive", last_name="Roe")


@pytest.fixture
def front_desk(origin) -> User:
    return make_staff(origin, Role.FRONT_DESK, email="desk@riverside.example.org")


@pytest.fixture
def facility_admin(origin) -> User:
    return make_staff(origin, Role.FACILITY_ADMIN, email="admin@riverside.example.org")


@pytest.fixture
def clinician(receiver) -> User:
    return make_staff(receiver, Role.CLINICIAN, email="doc@lakeside.example.org")


@pytest.fixture
def stranger(elsewhere) -> User:
    """Staff of an unrelated facility: signed in, MFA on, and no business with ours."""
    return make_staff(elsewhere, Role.FACILITY_ADMIN, email="someone@hilltop.example.org")
