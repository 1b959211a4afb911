"""The encrypted document vault behind consent's signed authorizations, on the real S3 store."""

from __future__ import annotations

import hashlib

import pytest

from consent.documents import (
    DocumentIntegrityError,
    StoredDocument,
    get_document_vault,
)
from sharing.documents import DOCUMENT_KIND, EncryptedDocumentVault

PAYLOAD = b"%PDF-1.4 an authorization\n" * 5000


@pytest.fixture
def vault(store) -> EncryptedDocumentVault:
    for name in list(store.names(DOCUMENT_KIND)):
        store.delete(name)
    return EncryptedDocumentVault(store=store)


def test_it_is_the_configured_vault(db):
    assert isinstance(get_document_vault(), EncryptedDocumentVault)


def test_it_stores_documents_encrypted_and_reads_them_back(vault, store):
    document = vault.put(PAYLOAD)
    assert document.object_name.startswith(f"{DOCUMENT_KIND}/")
    assert document.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert document.size == len(PAYLOAD)
    with store.open(document.object_name) as body:
        ciphertext = body.read()
    assert b"authorization" not in ciphertext
    assert vault.open(document) == PAYLOAD


def test_each_document_has_its_own_key(vault):
    first, second = vault.put(PAYLOAD), vault.put(PAYLOAD)
    assert first.wrapped_key != second.wrapped_key
    assert first.object_name != second.object_name


def test_it_refuses_a_swapped_or_altered_document(vault, store):
    first, second = vault.put(PAYLOAD), vault.put(b"another document")
    swapped = StoredDocument(**{**first.__dict__, "object_name": second.object_name})
    with pytest.raises(DocumentIntegrityError):
        vault.open(swapped)
    wrong_hash = StoredDocument(**{**first.__dict__, "sha256": "0" * 64})
    with pytest.raises(DocumentIntegrityError):
        vault.open(wrong_hash)
    bad_key = StoredDocument(**{**first.__dict__, "wrapped_key": b"\0" * 60})
    with pytest.raises(DocumentIntegrityError):
        vault.open(bad_key)


def test_discard_removes_the_object(vault, store):
    document = vault.put(PAYLOAD)
    vault.discard(document.object_name)
    vault.discard(document.object_name)  # already gone: quiet
    assert not store.exists(document.object_name)
