"""The encrypted document vault `consent` stores signed authorizations in (consent/documents.py).

Each document gets its own random data key, wrapped by the keyring's current KEK and recorded
beside the document's row, and is written to the object store in the same format as study
objects (sharing/crypto.py) under a name of kind "document", which carries no PHI. The object is
read back and checked before its reference is handed out, so a reference always names an object
that decrypts to exactly the bytes given.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io

from consent.documents import DocumentIntegrityError, DocumentUnavailable, StoredDocument
from sharing.crypto import (
    CryptoError,
    DataKey,
    KeyProvider,
    ObjectEncryptor,
    WrappedDataKey,
    decrypt_stream,
)
from sharing.keys import get_keyring
from sharing.store import ObjectMissing, ObjectStore, StoreUnavailable, get_object_store

DOCUMENT_KIND = "document"


class EncryptedDocumentVault:
    """Documents encrypted under a data key of their own, in the portal's object store."""

    def __init__(
        self, *, store: ObjectStore | None = None, keyring: KeyProvider | None = None
    ) -> None:
        self.store = store or get_object_store()
        self.keyring = keyring or get_keyring()

    def put(self, data: bytes) -> StoredDocument:
        """Encrypt and store `data`, verify it reads back, and return its reference.

        DocumentUnavailable when the store fails; nothing is left behind then.
        """
        data_key = DataKey.generate()
        wrapped = self.keyring.wrap_data_key(data_key)
        name = ObjectStore.new_name(DOCUMENT_KIND)
        encryptor = ObjectEncryptor(data_key)
        document = StoredDocument(
            object_name=name,
            kek_id=wrapped.kek_id,
            wrapped_key=wrapped.wrapped_key,
            object_id=encryptor.object_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
        try:
            self.store.put(name, encryptor.reader(io.BytesIO(data)))
            self._read(document, data_key)
        except (StoreUnavailable, ObjectMissing, DocumentIntegrityError) as exc:
            self.discard(name)
            raise DocumentUnavailable("the document could not be stored") from exc
        return document

    def open(self, document: StoredDocument) -> bytes:
        """Decrypt a stored document. Every segment is authenticated, and the whole must match
        the SHA-256 recorded when it was written."""
        try:
            data_key = self.keyring.unwrap_data_key(
                WrappedDataKey(kek_id=document.kek_id, wrapped_key=bytes(document.wrapped_key))
            )
        except CryptoError as exc:
            raise DocumentIntegrityError("the document's key does not open") from exc
        try:
            return self._read(document, data_key)
        except (StoreUnavailable, ObjectMissing) as exc:
            raise DocumentUnavailable("the document cannot be read now") from exc

    def discard(self, object_name: str) -> None:
        # When the store is down the object stays for an orphan sweep of kind "document": it is
        # ciphertext under a key that was never recorded, so nobody can read it.
        with contextlib.suppress(StoreUnavailable):
            self.store.delete(object_name)

    def _read(self, document: StoredDocument, data_key: DataKey) -> bytes:
        try:
            with self.store.open(document.object_name) as body:
                plaintext = b"".join(
                    decrypt_stream(body, data_key, expected_object_id=bytes(document.object_id))
                )
        except CryptoError as exc:
            raise DocumentIntegrityError("the document fails verification") from exc
        if not hmac.compare_digest(hashlib.sha256(plaintext).hexdigest(), document.sha256):
            raise DocumentIntegrityError("the document is not the one that was stored")
        return plaintext
