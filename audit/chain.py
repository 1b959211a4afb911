"""The canonical encoding and hash of audit rows (no Django here, so it can be reasoned about).

A row's hash is SHA-256 over the previous row's hash and the row's canonical JSON: sorted
keys, no white space, ASCII only, times as UTC ISO-8601 with microseconds. The sequence number
is part of the encoding, so moving a row to another place breaks the chain too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

HASHED_FIELDS = (
    "sequence",
    "occurred_at",
    "action",
    "dicom_event_id",
    "outcome",
    "actor_kind",
    "actor_id",
    "facility_id",
    "target_kind",
    "target_id",
    "patient_id",
    "study_id",
    "purpose",
    "client_address",
    "detail",
)


def canonical_encoding(fields: Mapping[str, Any]) -> bytes:
    values = {name: fields[name] for name in HASHED_FIELDS}
    occurred_at = values["occurred_at"]
    if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be an aware datetime")
    values["occurred_at"] = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_hash(previous_hash: str, fields: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(previous_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical_encoding(fields))
    return digest.hexdigest()
