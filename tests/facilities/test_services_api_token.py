from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.exceptions import PermissionDenied, ValidationError

from audit.codes import Action, ActorKind, PurposeOfUse, TargetKind
from audit.models import AuditEvent
from facilities.models import APIToken
from facilities.services import api_token_create, api_token_revoke


@pytest.fixture
def create(origin, facility_admin):
    def make(**overrides):
        arguments = {
            "facility": origin,
            "name": "Radiology PACS",
            "scopes": ["search", "retrieve"],
            "purpose_of_use": PurposeOfUse.TREATMENT,
            "expires_in_days": 90,
            "actor": facility_admin,
        }
        arguments.update(overrides)
        return api_token_create(**arguments)

    return make


def test_it_makes_a_token_in_the_documented_shape(create):
    token, raw = create()

    match = re.fullmatch(r"icp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})", raw)
    assert match is not None
    assert token.public_id == match[1]


def test_it_keeps_only_the_hash_of_the_secret(create):
    token, raw = create()
    secret = raw.split("_", 2)[2]

    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token.secret_hash != secret
    stored = APIToken.objects.filter(pk=token.pk).values()[0]
    assert not any(secret in str(value) for value in stored.values())


def test_it_sets_scopes_purpose_and_expiry(create, facility_admin):
    with time_machine.travel("2030-03-01 08:00Z", tick=False):
        token, _ = create(
            scopes=["store"], purpose_of_use=PurposeOfUse.SECOND_OPINION, expires_in_days=30
        )

    token.refresh_from_db()
    assert token.scopes == ["store"]
    assert (token.can_search, token.can_retrieve, token.can_store) == (False, False, True)
    assert token.purpose_of_use == PurposeOfUse.SECOND_OPINION
    assert token.expires_at == datetime(2030, 3, 31, 8, 0, tzinfo=UTC)
    assert token.created_by == facility_admin
    assert token.name == "Radiology PACS"


def test_it_audits_without_the_secret(create, origin, facility_admin):
    token, raw = create()

    event = AuditEvent.objects.get(action=Action.API_TOKEN_CREATED)
    assert event.facility_id == origin.pk
    assert event.actor_kind == ActorKind.USER
    assert event.actor_id == str(facility_admin.pk)
    assert event.target_kind == TargetKind.API_TOKEN
    assert event.target_id == str(token.pk)
    assert event.detail == {
        "scopes": "search,retrieve",
        "purpose_of_use": "TREAT",
        "expires_in_days": 90,
    }
    assert raw.split("_", 2)[2] not in str(event.detail)


def test_it_makes_different_tokens_each_time(create):
    _, first = create()
    _, second = create()
    assert first != second


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["search", "delete"]}, "scopes"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": 366}, "expires_in_days"),
        ({"expires_in_days": True}, "expires_in_days"),
        ({"purpose_of_use": "SHOPPING"}, "purpose_of_use"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_it_refuses_bad_input_and_writes_nothing(create, overrides, field):
    with pytest.raises(ValidationError) as refusal:
        create(**overrides)

    assert field in refusal.value.message_dict
    assert not APIToken.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("days", [1, 365])
def test_it_accepts_the_limits_of_the_expiry(create, days):
    create(expires_in_days=days)


def test_it_refuses_store_for_a_receiving_facility(receiver):
    from tests.factories import make_staff

    admin = make_staff(receiver, "facility_admin", email="admin@lakeside.example.org")
    with pytest.raises(ValidationError, match="receiving facility"):
        api_token_create(
            facility=receiver,
            name="Viewer",
            scopes=["search", "store"],
            purpose_of_use=PurposeOfUse.TREATMENT,
            expires_in_days=30,
            actor=admin,
        )


@pytest.mark.parametrize("actor_name", ["front_desk", "stranger", "clinician"])
def test_it_refuses_an_actor_who_is_not_a_facility_admin_there(request, create, actor_name):
    with pytest.raises(PermissionDenied):
        create(actor=request.getfixturevalue(actor_name))
    assert not APIToken.objects.exists()


def test_it_revokes_and_audits(create, origin, facility_admin):
    token, _ = create()

    revoked = api_token_revoke(token=token, actor=facility_admin)

    assert revoked.revoked_at is not None
    event = AuditEvent.objects.get(action=Action.API_TOKEN_REVOKED)
    assert event.facility_id == origin.pk
    assert event.target_kind == TargetKind.API_TOKEN
    assert event.target_id == str(token.pk)
    assert event.actor_id == str(facility_admin.pk)


def test_it_revokes_twice_without_a_second_audit_row(create, facility_admin):
    token, _ = create()
    first = api_token_revoke(token=token, actor=facility_admin).revoked_at
    second = api_token_revoke(token=token, actor=facility_admin).revoked_at
    assert first == second
    assert AuditEvent.objects.filter(action=Action.API_TOKEN_REVOKED).count() == 1


@pytest.mark.parametrize("actor_name", ["front_desk", "stranger"])
def test_it_refuses_a_revoke_by_someone_not_admin_there(request, create, actor_name):
    token, _ = create()
    with pytest.raises(PermissionDenied):
        api_token_revoke(token=token, actor=request.getfixturevalue(actor_name))
    token.refresh_from_db()
    assert token.revoked_at is None
