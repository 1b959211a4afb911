"""The audit log's hash chain: append, refuse changes, and detect every kind of tampering."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import RequestFactory, override_settings

from audit.chain import row_hash
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import GENESIS_HASH, AuditEvent
from audit.services import audit_chain_verify, audit_record, client_address

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _on_postgresql():
    # The trigger and the chain lock are PostgreSQL's here; CI runs on it (make test).
    assert connection.vendor == "postgresql", "audit tests run against PostgreSQL (make test)"


@contextmanager
def tampering():
    """What an intruder with table-owner rights could do: switch the guard off, edit rows."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only")
        try:
            yield cursor
        finally:
            cursor.execute(
                "ALTER TABLE audit_auditevent ENABLE TRIGGER audit_auditevent_append_only"
            )


def record_three():
    return [
        audit_record(action=Action.LOGIN, actor_kind=ActorKind.USER, actor_id=7),
        audit_record(action=Action.LOGIN_FAILED, outcome=Outcome.DENIED),
        audit_record(action=Action.STAFF_INVITED, facility_id=3, target_kind=TargetKind.INVITATION),
    ]


def test_it_links_each_row_to_the_one_before():
    first, second, third = record_three()
    assert [first.sequence, second.sequence, third.sequence] == [1, 2, 3]
    assert first.previous_hash == GENESIS_HASH
    assert second.previous_hash == first.row_hash
    assert third.previous_hash == second.row_hash
    assert first.dicom_event_id == "110114"
    report = audit_chain_verify()
    assert report.intact
    assert report.rows == 3
    assert report.head_hash == third.row_hash


def test_it_hashes_what_was_stored():
    event = audit_record(action=Action.LOGOUT, detail={"type": "totp", "count": 2, "ok": True})
    stored = AuditEvent.objects.values().get(sequence=event.sequence)
    assert row_hash(stored["previous_hash"], stored) == stored["row_hash"]


def test_it_refuses_update_at_the_database():
    record_three()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(sequence=2).update(outcome=Outcome.ALLOWED)
    assert AuditEvent.objects.get(sequence=2).outcome == Outcome.DENIED


def test_it_refuses_delete_at_the_database():
    record_three()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(sequence=1).delete()
    assert AuditEvent.objects.count() == 3


def test_it_detects_a_changed_row():
    record_three()
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET outcome = 'allowed' WHERE sequence = 2")
    report = audit_chain_verify()
    assert report.first_break is not None
    assert report.first_break.sequence == 2
    assert "changed" in report.first_break.reason


def test_it_detects_a_change_to_the_detail():
    audit_record(action=Action.LOGIN, detail={"type": "totp"})
    with tampering() as cursor:
        cursor.execute("""UPDATE audit_auditevent SET detail = '{"type": "webauthn"}'""")
    assert audit_chain_verify().first_break.sequence == 1


def test_it_detects_a_deleted_row():
    record_three()
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = 2")
    report = audit_chain_verify()
    assert report.first_break.sequence == 3
    assert "row 2 is missing" in report.first_break.reason


def test_a_removed_tail_is_visible_only_against_an_anchored_head():
    """Cutting the newest rows leaves a shorter chain that is still well linked: only a copy
    of the head kept elsewhere (anchored by compliance monitoring) reveals it."""
    record_three()
    head_before = audit_chain_verify().head_hash
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = 3")
    report = audit_chain_verify()
    assert report.intact
    assert report.head_hash != head_before


def test_it_detects_a_row_inserted_in_the_middle():
    _, second, third = record_three()
    forged = {
        "sequence": 3,
        "occurred_at": third.occurred_at,
        "action": Action.LOGIN,
        "dicom_event_id": "110114",
        "outcome": Outcome.ALLOWED,
        "actor_kind": ActorKind.USER,
        "actor_id": "99",
        "facility_id": None,
        "target_kind": "",
        "target_id": "",
        "patient_id": None,
        "study_id": None,
        "purpose": "",
        "client_address": None,
        "detail": {},
    }
    forged_hash = row_hash(second.row_hash, forged)
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET sequence = 4 WHERE sequence = 3")
        cursor.execute(
            """INSERT INTO audit_auditevent (sequence, occurred_at, action, dicom_event_id,
               outcome, actor_kind, actor_id, target_kind, target_id, purpose, detail,
               previous_hash, row_hash)
               VALUES (3, %s, 'user.login', '110114', 'allowed', 'user', '99', '', '', '', '{}',
                       %s, %s)""",
            [third.occurred_at, second.row_hash, forged_hash],
        )
    report = audit_chain_verify()
    # The forged row itself is well made; the real row after it no longer follows it.
    assert report.first_break.sequence == 4
    assert "does not follow" in report.first_break.reason


def test_it_detects_a_row_appended_with_a_made_up_link():
    record_three()
    with tampering() as cursor:
        cursor.execute(
            """INSERT INTO audit_auditevent (sequence, occurred_at, action, dicom_event_id,
               outcome, actor_kind, actor_id, target_kind, target_id, purpose, detail,
               previous_hash, row_hash)
               VALUES (4, now(), 'user.login', '', 'allowed', 'user', '1', '', '', '', '{}',
                       %s, %s)""",
            ["f" * 64, "e" * 64],
        )
    assert audit_chain_verify().first_break.sequence == 4


def test_it_detects_reordered_rows():
    record_three()
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET sequence = -1 WHERE sequence = 2")
        cursor.execute("UPDATE audit_auditevent SET sequence = 2 WHERE sequence = 3")
        cursor.execute("UPDATE audit_auditevent SET sequence = 3 WHERE sequence = -1")
    report = audit_chain_verify()
    assert report.first_break.sequence == 2


def test_the_command_exits_zero_on_an_intact_chain(capsys):
    record_three()
    call_command("audit_verify")
    assert "Audit log intact: 3 rows" in capsys.readouterr().out


def test_the_command_names_the_first_bad_row_and_raises_an_alert():
    record_three()
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET actor_id = '8' WHERE sequence = 1")
    with pytest.raises(CommandError, match="row 1") as failure:
        call_command("audit_verify")
    assert failure.value.returncode == 1
    alert = AuditEvent.objects.order_by("-sequence").first()
    assert alert.action == Action.AUDIT_CHAIN_BROKEN
    assert alert.detail == {"first_bad_sequence": 1, "rows_intact": 0}


def test_it_refuses_unknown_actions_and_non_plain_detail():
    with pytest.raises(ValueError, match="unknown audit action"):
        audit_record(action="study.peeked")
    with pytest.raises(ValueError, match="unknown audit outcome"):
        audit_record(action=Action.LOGIN, outcome="maybe")
    with pytest.raises(TypeError):
        audit_record(action=Action.LOGIN, detail={"patient": {"name": "Doe^Jane"}})
    assert AuditEvent.objects.count() == 0


def test_it_takes_the_actor_from_the_request(patient):
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9")
    request.user = patient
    event = audit_record(action=Action.LOGIN, request=request)
    assert (event.actor_kind, event.actor_id) == (ActorKind.USER, str(patient.pk))
    assert event.client_address == "203.0.113.9"


def test_it_believes_forwarded_addresses_only_behind_a_proxy():
    request = RequestFactory().get(
        "/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.7"
    )
    assert client_address(request) == "10.0.0.5"
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert client_address(request) == "203.0.113.7"
    assert client_address(RequestFactory().get("/", REMOTE_ADDR="garbage")) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_unbroken_chain():
    """Writers in separate connections (web and worker processes) must never fork the chain."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(15):
                with transaction.atomic():
                    audit_record(action=Action.LOGIN)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = audit_chain_verify()
    assert report.intact
    assert report.rows == 60
