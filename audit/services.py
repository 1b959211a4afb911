"""The only writer of the audit log."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.chain import HASHED_FIELDS, row_hash
from audit.codes import DICOM_EVENT_ID, Action, ActorKind, Outcome
from audit.models import GENESIS_HASH, AuditEvent

# Any constant will do: it names the one lock that serialises appends on PostgreSQL.
_CHAIN_LOCK_KEY = 0x4155444954  # "AUDIT"

DetailValue = str | int | bool | None


def client_address(request: HttpRequest) -> str | None:
    """The caller's address: the socket peer, or the proxy's last X-Forwarded-For hop
    when the portal is configured to sit behind one."""
    address = request.META.get("REMOTE_ADDR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            address = forwarded.split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def audit_record(
    *,
    action: str,
    outcome: str = Outcome.ALLOWED,
    request: HttpRequest | None = None,
    address: str | None = None,
    actor_kind: str | None = None,
    actor_id: str | int = "",
    facility_id: int | None = None,
    target_kind: str = "",
    target_id: str | int = "",
    patient_id: int | None = None,
    study_id: int | None = None,
    purpose: str = "",
    detail: Mapping[str, DetailValue] | None = None,
) -> AuditEvent:
    """Append one event to the audit log and return it.

        The actor defaults to the request's signed-in user (or `anonymous`); services acting for
        API tokens, share links or DICOM nodes say so with `actor_kind`/`actor_id`, and callers that
    are not HTTP (a DICOM association) give the peer's `address`. `detail` holds
        plain values only and must never carry PHI (names, MRNs, UIDs): ids point at the rows
        that hold those. The append takes the chain lock until the surrounding transaction ends,
        so the chain has one order even with many web and worker processes.
    """
    if action not in Action.values:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    detail = dict(detail or {})
    for key, value in detail.items():
        if not isinstance(key, str) or not isinstance(value, DetailValue):
            raise TypeError("audit detail holds plain values only")

    if actor_kind is None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            actor_kind, actor_id = ActorKind.USER, user.pk
        else:
            actor_kind = ActorKind.ANONYMOUS if request is not None else ActorKind.SYSTEM

    fields = {
        "occurred_at": timezone.now(),
        "action": action,
        "dicom_event_id": DICOM_EVENT_ID.get(action, ""),
        "outcome": outcome,
        "actor_kind": actor_kind,
        "actor_id": str(actor_id),
        "facility_id": facility_id,
        "target_kind": target_kind,
        "target_id": str(target_id),
        "patient_id": patient_id,
        "study_id": study_id,
        "purpose": purpose,
        "client_address": address
        if address is not None
        else (client_address(request) if request is not None else None),
        "detail": detail,
    }
    # Inside a caller's transaction no savepoint is needed: if the append fails, the caller's
    # change must not commit without its audit row either. That also spares two round trips
    # on every audited ingest.
    with transaction.atomic(savepoint=False):
        _lock_chain()
        last = AuditEvent.objects.order_by("-sequence").values_list("sequence", "row_hash").first()
        sequence, previous_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        fields["sequence"] = sequence
        return AuditEvent.objects.create(
            **fields, previous_hash=previous_hash, row_hash=row_hash(previous_hash, fields)
        )


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    # SQLite runs with transaction_mode=IMMEDIATE: a writing transaction already excludes others.


@dataclass(frozen=True)
class ChainBreak:
    sequence: int
    reason: str


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_hash: str
    first_break: ChainBreak | None

    @property
    def intact(self) -> bool:
        return self.first_break is None


def audit_chain_verify(*, chunk_size: int = 5000) -> ChainReport:
    """Walk the whole log in order and recompute every link; stop at the first bad row."""
    rows = 0
    expected_sequence = 1
    previous_hash = GENESIS_HASH
    for values in _rows_in_order(chunk_size):
        sequence = values["sequence"]
        if sequence != expected_sequence:
            what = "missing" if sequence > expected_sequence else "out of order"
            return ChainReport(
                rows, previous_hash, ChainBreak(sequence, f"row {expected_sequence} is {what}")
            )
        if values["previous_hash"] != previous_hash:
            return ChainReport(
                rows, previous_hash, ChainBreak(sequence, "does not follow the row before it")
            )
        if values["row_hash"] != row_hash(previous_hash, values):
            return ChainReport(
                rows, previous_hash, ChainBreak(sequence, "was changed after it was written")
            )
        rows += 1
        expected_sequence += 1
        previous_hash = values["row_hash"]
    return ChainReport(rows, previous_hash, None)


def _rows_in_order(chunk_size: int) -> Iterator[dict]:
    columns = (*HASHED_FIELDS, "previous_hash", "row_hash")
    return AuditEvent.objects.order_by("sequence").values(*columns).iterator(chunk_size=chunk_size)
