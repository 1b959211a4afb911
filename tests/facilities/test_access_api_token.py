from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from audit.codes import PurposeOfUse
from audit.models import AuditEvent
from facilities.access import api_token_authenticate
from facilities.models import APIToken
from facilities.services import api_token_create, api_token_revoke


@pytest.fixture
def issued(origin, facility_admin):
    """A fresh token of the origin, and its raw form."""
    return api_token_create(
        facility=origin,
        name="Radiology PACS",
        scopes=["search", "retrieve"],
        purpose_of_use=PurposeOfUse.TREATMENT,
        expires_in_days=30,
        actor=facility_admin,
    )


def test_it_authenticates_a_good_token(issued, origin):
    token, raw = issued

    found = api_token_authenticate(raw)

    assert found == token
    assert found.facility == origin


def test_it_does_not_audit(issued):
    _, raw = issued
    before = AuditEvent.objects.count()
    api_token_authenticate(raw)
    api_token_authenticate(raw[:-1] + "x")
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "icp_",
        "Bearer icp_0123456789ab_" + "a" * 43,
        "ICP_0123456789ab_" + "a" * 43,
        "xyz_0123456789ab_" + "a" * 43,
        "icp_0123456789AB_" + "a" * 43,  # public ids are lower-case hex
        "icp_0123456789a_" + "a" * 44,
        "icp_0123456789ab-" + "a" * 43,
        "icp_0123456789ab_" + "a" * 42,
        "icp_0123456789ab_" + "a" * 42 + "=",
        "icp_0123456789ab_" + "a" * 42 + "\n",
        "icp_0123456789ab_" + "a" * 42 + "é",
        "icp_0123456789ab_" + "a" * 10_000,
        "x" * 1_000_000,
    ],
)
def test_it_refuses_malformed_input_without_a_query(raw):
    # No `db` fixture: pytest-django fails the test if the database is touched at all.
    assert api_token_authenticate(raw) is None


def test_it_refuses_what_is_not_a_string():
    assert api_token_authenticate(None) is None  # type: ignore[arg-type]
    assert api_token_authenticate(b"icp_0123456789ab_" + b"a" * 43) is None  # type: ignore[arg-type]


def test_it_refuses_an_unknown_public_id(issued):
    token, raw = issued
    other_id = "0" * 12 if token.public_id != "0" * 12 else "1" * 12
    assert api_token_authenticate(raw.replace(token.public_id, other_id)) is None


def test_it_refuses_a_wrong_secret(issued):
    _token, raw = issued
    wrong = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert api_token_authenticate(wrong) is None


def test_it_refuses_another_tokens_secret_with_this_public_id(issued, origin, facility_admin):
    token, _raw = issued
    _, other_raw = api_token_create(
        facility=origin,
        name="Viewer",
        scopes=["search"],
        purpose_of_use=PurposeOfUse.TREATMENT,
        expires_in_days=30,
        actor=facility_admin,
    )
    spliced = f"icp_{token.public_id}_{other_raw.split('_', 2)[2]}"
    assert api_token_authenticate(spliced) is None


def test_it_refuses_an_expired_token(issued):
    token, raw = issued
    assert api_token_authenticate(raw, now=token.expires_at - timedelta(seconds=1)) == token
    assert api_token_authenticate(raw, now=token.expires_at) is None
    with time_machine.travel(token.expires_at + timedelta(days=1)):
        assert api_token_authenticate(raw) is None


def test_it_refuses_a_revoked_token(issued, facility_admin):
    token, raw = issued
    api_token_revoke(token=token, actor=facility_admin)
    assert api_token_authenticate(raw) is None


def test_it_records_the_first_use(issued):
    token, raw = issued
    assert token.last_used_at is None

    found = api_token_authenticate(raw)

    token.refresh_from_db()
    assert token.last_used_at is not None
    assert found.last_used_at == token.last_used_at


def test_it_writes_last_used_at_at_most_once_a_minute(issued, django_assert_num_queries):
    token, raw = issued
    start = timezone.now()
    api_token_authenticate(raw, now=start)

    with django_assert_num_queries(1):  # the lookup only, no write
        found = api_token_authenticate(raw, now=start + timedelta(seconds=59))
    assert found.last_used_at == start
    token.refresh_from_db()
    assert token.last_used_at == start

    api_token_authenticate(raw, now=start + timedelta(seconds=61))
    token.refresh_from_db()
    assert token.last_used_at == start + timedelta(seconds=61)


def test_it_does_not_move_last_used_at_back_after_a_concurrent_write(issued):
    """Another process wrote a newer time between our read and our write: ours is skipped."""
    token, raw = issued
    start = timezone.now()
    api_token_authenticate(raw, now=start)
    newer = start + timedelta(minutes=5)
    APIToken.objects.filter(pk=token.pk).update(last_used_at=newer)

    api_token_authenticate(raw, now=start + timedelta(minutes=2))

    token.refresh_from_db()
    assert token.last_used_at == newer
