"""The people and places every test can use (see CONVENTIONS.md)."""

from __future__ import annotations

import datetime
import os
import socket
from mailbox import Maildir
from pathlib import Path

import pytest
from django.core.cache import cache

from accounts.models import User
from facilities.models import Facility, Role
from portal.env import email_settings
from studies.models import Patient
from studies.spool import Spool, get_spool
from studies.synthetic import generate_study
from tests.factories import (
    FacilityFactory,
    PatientFactory,
    PatientIdentifierFactory,
    UserFactory,
    enable_totp,
    make_staff,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters live in the cache; each test starts with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _own_spool(settings, tmp_path_factory):
    """Each test receives DICOM into a spool of its own."""
    settings.INGEST_SPOOL_DIR = tmp_path_factory.mktemp("spool")


@pytest.fixture
def spool(settings) -> Spool:
    return get_spool()


@pytest.fixture
def synthetic_study(tmp_path_factory):
    """Write a synthetic study and return its file paths: `synthetic_study(modality="CT",
    instances=3, rows=64, patient=SyntheticPatient(...), seed=1)`."""

    def make(**options) -> list[Path]:
        options.setdefault("instances", 3)
        options.setdefault("rows", 64)
        return generate_study(tmp_path_factory.mktemp("study"), **options)

    return make


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
def patient_record(patient, origin) -> Patient:
    """The `patient` user's own record at `origin`, linked to their account."""
    record = PatientFactory(name="DOE^PAT", birth_date=datetime.date(1978, 4, 12), account=patient)
    PatientIdentifierFactory(patient=record, facility=origin, issuer="RGH", value="RGH-0042")
    return record


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
def platform_admin(db) -> User:
    """Runs the platform (Django admin, every facility's staff); MFA on, as it must be."""
    user = UserFactory(email="root@portal.example.org", is_staff=True, is_superuser=True)
    enable_totp(user)
    return user


@pytest.fixture
def stranger(elsewhere) -> User:
    """Staff of an unrelated facility: signed in, MFA on, and no business with ours."""
    return make_staff(elsewhere, Role.FACILITY_ADMIN, email="someone@hilltop.example.org")


# --- The real services `make test` runs against (scripts/stack.py) -------------------------------


class StackEnvironment:
    """The variables scripts/stack.py exports. A missing one fails the test, never skips it:
    a test that matters for production must not pass quietly without the real service."""

    def __getitem__(self, name: str) -> str:
        value = os.environ.get(name)
        if not value:
            pytest.fail(
                f"{name} is not set: this test needs the real stack. Run `make test`, or "
                "`make stack-up` then `source var/stack.env` before pytest.",
                pytrace=False,
            )
        return value


@pytest.fixture
def stack_env() -> StackEnvironment:
    return StackEnvironment()


@pytest.fixture
def mailbox(stack_env: StackEnvironment, settings) -> Maildir:
    """The SMTP sink's Maildir, emptied first; e-mail sent in the test goes out over SMTP.

    pytest-django puts the in-memory backend in place for every test; this puts back the
    backend that EMAIL_URL configures, so messages really cross the wire to the sink.
    """
    backend = email_settings(stack_env["EMAIL_URL"])["EMAIL_BACKEND"]
    if backend != "django.core.mail.backends.smtp.EmailBackend":
        pytest.fail(f"EMAIL_URL must name the SMTP sink, not {backend}", pytrace=False)
    settings.EMAIL_BACKEND = backend
    sink = Maildir(stack_env["SMTP_SINK_MAILDIR"], create=False)
    sink.clear()
    return sink


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
