"""The keyring as settings configure it, and the per-study data keys wrapped by it.

`PORTAL_KEYRING_FILE` names a keyring file, or `PORTAL_KEYRING` holds its text (see
`sharing.crypto.LocalKeyring` for the format). With neither, the embedded default (DEBUG) keeps a
file of its own under `var/dev-secrets/` and production refuses to start publishing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import models, transaction

from consent.models import SignedAuthorization
from sharing.crypto import (
    DataKey,
    KeyProvider,
    KeyringError,
    LocalKeyring,
    WrappedDataKey,
    add_kek_version,
    load_keyring,
    rewrap_data_key,
)
from sharing.models import StudyKey
from studies.models import Study

KEYRING_VARIABLE = "PORTAL_KEYRING"


def keyring_file() -> Path | None:
    """The local keyring file new KEK versions can be added to, if the keyring is one."""
    if settings.PORTAL_KEYRING_FILE:
        return Path(settings.PORTAL_KEYRING_FILE)
    if settings.PORTAL_KEYRING_TEXT is None and settings.DEBUG:
        return settings.VAR_DIR / "dev-secrets" / "keyring"
    return None


@functools.cache
def get_keyring() -> KeyProvider:
    environ = {}
    if settings.PORTAL_KEYRING_FILE:
        environ[f"{KEYRING_VARIABLE}_FILE"] = settings.PORTAL_KEYRING_FILE
    elif settings.PORTAL_KEYRING_TEXT is not None:
        environ[KEYRING_VARIABLE] = settings.PORTAL_KEYRING_TEXT
    default_path = keyring_file() if not environ else None
    return load_keyring(variable=KEYRING_VARIABLE, default_path=default_path, environ=environ)


def study_data_key(study: Study) -> DataKey:
    """The study's data key, created (and stored wrapped) the first time it is asked for."""
    keyring = get_keyring()
    stored = StudyKey.objects.filter(study=study).first()
    if stored is None:
        with transaction.atomic():
            # Two workers publishing the same study race here: the row lock on the study makes
            # the second one find the first one's key instead of making a second.
            Study.objects.select_for_update().filter(pk=study.pk).first()
            stored = StudyKey.objects.filter(study=study).first()
            if stored is None:
                wrapped = keyring.wrap_data_key(DataKey.generate())
                stored = StudyKey.objects.create(
                    study=study, kek_id=wrapped.kek_id, wrapped_key=wrapped.wrapped_key
                )
    return keyring.unwrap_data_key(_wrapped(stored))


def existing_study_data_key(study_id: int) -> DataKey:
    """The data key of a study that has one; KeyringError when it was never made or shredded."""
    stored = StudyKey.objects.filter(study_id=study_id).first()
    if stored is None:
        raise KeyringError("the study has no data key (never published, or shredded)")
    return get_keyring().unwrap_data_key(_wrapped(stored))


def add_key_version() -> str:
    """A new KEK version in the local keyring file; KeyringError when the keyring is not one."""
    path = keyring_file()
    if path is None:
        raise KeyringError(
            f"the keyring comes from {KEYRING_VARIABLE}: add the new version there, then run "
            "rotate_kek --rewrap-only"
        )
    LocalKeyring.load_or_create(path)
    kek_id = add_kek_version(path)
    get_keyring.cache_clear()
    return kek_id


@dataclass(frozen=True)
class WrappedKeyColumn:
    """Where data keys rest wrapped: a model and its (KEK id, wrapped key) fields."""

    model: type[models.Model]
    kek_field: str
    key_field: str

    def not_under(self, kek_id: str) -> models.QuerySet[models.Model]:
        # A blank KEK id means no key in this column (an authorization without a scan).
        return self.model._default_manager.exclude(**{self.kek_field: kek_id}).exclude(
            **{self.kek_field: ""}
        )


# Every data key the keyring wraps: studies' keys, and the documents of signed authorizations.
WRAPPED_KEY_COLUMNS = (
    WrappedKeyColumn(StudyKey, "kek_id", "wrapped_key"),
    WrappedKeyColumn(SignedAuthorization, "pdf_kek_id", "pdf_wrapped_key"),
    WrappedKeyColumn(SignedAuthorization, "scan_kek_id", "scan_wrapped_key"),
)


def keys_not_under_current_kek() -> int:
    current = get_keyring().current_kek_id()
    return sum(column.not_under(current).count() for column in WRAPPED_KEY_COLUMNS)


def rewrap_data_keys(*, chunk: int = 500) -> Iterator[int]:
    """Re-wrap every data key still under an older KEK; yields how many after each chunk.

    Each chunk commits on its own, so an interrupted run leaves every key usable (under its old
    or its new KEK) and the next run carries on with what is left.
    """
    keyring = get_keyring()
    current = keyring.current_kek_id()
    for column in WRAPPED_KEY_COLUMNS:
        while True:
            with transaction.atomic():
                rows = list(
                    column.not_under(current)
                    .select_for_update(skip_locked=True)
                    .order_by("pk")[:chunk]
                )
                if not rows:
                    break
                for row in rows:
                    wrapped = WrappedDataKey(
                        kek_id=getattr(row, column.kek_field),
                        wrapped_key=bytes(getattr(row, column.key_field)),
                    )
                    rewrapped = rewrap_data_key(keyring, wrapped)
                    setattr(row, column.kek_field, rewrapped.kek_id)
                    setattr(row, column.key_field, rewrapped.wrapped_key)
                column.model._default_manager.bulk_update(
                    rows, [column.kek_field, column.key_field]
                )
            yield len(rows)


def _wrapped(stored: StudyKey) -> WrappedDataKey:
    return WrappedDataKey(kek_id=stored.kek_id, wrapped_key=bytes(stored.wrapped_key))
