"""Where consent keeps signed documents: behind a protocol, so `consent` needs no `sharing`.

A signed authorization is PHI and must rest encrypted like study data (rule 1 of DESIGN.md), but
encryption and the object store belong to `sharing`, one floor above `consent`, which may not
import it. So `consent` says here what it needs, a vault that takes bytes and gives back a
reference to record, and settings name the implementation (`CONSENT_DOCUMENT_VAULT`, by default
`sharing.documents.EncryptedDocumentVault`), loaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class DocumentUnavailable(Exception):
    """The vault could not store or read a document now (the store is down): try again later."""


class DocumentIntegrityError(Exception):
    """A stored document failed its checks (altered, swapped, or its key is unknown): it must
    not be served."""


@dataclass(frozen=True)
class StoredDocument:
    """What the database records about one stored document: enough to find it, decrypt it and
    know it is the one that was written. No field carries PHI."""

    object_name: str
    kek_id: str
    wrapped_key: bytes
    object_id: bytes
    sha256: str
    size: int


class DocumentVault(Protocol):
    def put(self, data: bytes) -> StoredDocument:
        """Store `data` encrypted; the reference is what the caller records."""
        ...

    def open(self, document: StoredDocument) -> bytes:
        """The plaintext of a stored document, verified against its recorded SHA-256."""
        ...

    def discard(self, object_name: str) -> None:
        """Remove a document whose record was never committed; quiet if it is gone."""
        ...


def get_document_vault() -> DocumentVault:
    vault_class = import_string(settings.CONSENT_DOCUMENT_VAULT)
    vault: DocumentVault = vault_class()
    return vault
