"""The object store: where encrypted study objects rest.

One interface over two backends chosen by settings (`STORAGES["objects"]`): any S3-compatible
service through django-storages/boto3, or a local folder for the embedded default. Callers get
opaque object names that carry no PHI, write streams, and read streams from any byte offset
(so decryption can start at a segment without fetching the whole object). Nobody outside the
portal is ever given a storage URL: every read passes through the portal's access decision.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from django.core.files import File
from django.core.files.storage import Storage, storages

OBJECT_NAME_BYTES = 16  # 128 random bits: unguessable, and never derived from DICOM data.


class StoreUnavailable(Exception):
    """The object store did not answer, or refused our credentials."""


class ObjectMissing(Exception):
    """The named object is not in the store."""


class ObjectCorrupted(Exception):
    """The store kept other bytes than were sent."""


class ObjectStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @property
    def is_s3(self) -> bool:
        return hasattr(self.storage, "bucket_name")

    @staticmethod
    def new_name(kind: str) -> str:
        """A fresh object name: `<kind>/<2 hex>/<32 hex>`; the prefix spreads keys for S3."""
        if not kind.isidentifier():
            raise ValueError("object kind must be a plain word")
        token = secrets.token_hex(OBJECT_NAME_BYTES)
        return f"{kind}/{token[:2]}/{token}"

    def put(self, name: str, stream: IO[bytes]) -> None:
        """Write `stream` under `name` exactly (never renamed, never made public).

        An existing object of that name is replaced (a retried upload writes the same name).
        """
        with _unavailable_on_failure():
            if not self.is_s3:
                # The folder backend would save under another name rather than replace.
                self.storage.delete(name)
            stored_as = self.storage.save(name, File(stream, name=name))
            if stored_as != name:  # a backend that renames would lose the object for us
                self.storage.delete(stored_as)
                raise StoreUnavailable("the object store renamed an object")

    def put_verified(self, name: str, data: bytes) -> None:
        """Write `data` under `name` in one request that the store checks against its MD5.

        S3 refuses a body that does not match the Content-MD5 header, and the ETag it answers
        with is the MD5 of what it kept; a mismatch raises ObjectCorrupted. A local folder is
        written and its size checked. For objects that fit in memory: faster than `put`, whose
        streaming upload goes through s3transfer, and no read-back needed.
        """
        digest = hashlib.md5(data, usedforsecurity=False)
        if not self.is_s3:
            self.put(name, io.BytesIO(data))
            if self.size(name) != len(data):
                raise ObjectCorrupted(name)
            return
        storage: Any = self.storage
        parameters = {
            **storage.get_object_parameters(name),
            "ContentType": "application/octet-stream",
        }
        if storage.default_acl:
            parameters.setdefault("ACL", storage.default_acl)
        with _unavailable_on_failure():
            answer = _shared_client(storage).put_object(
                Bucket=storage.bucket_name,
                Key=storage._normalize_name(name),
                Body=data,
                ContentLength=len(data),
                ContentMD5=base64.b64encode(digest.digest()).decode("ascii"),
                **parameters,
            )
        if answer.get("ETag", "").strip('"') != digest.hexdigest():
            raise ObjectCorrupted(name)

    def size(self, name: str) -> int:
        return int(self._stat(name, self.storage.size))

    def modified_at(self, name: str) -> datetime:
        return self._stat(name, self.storage.get_modified_time)

    def exists(self, name: str) -> bool:
        with _unavailable_on_failure():
            return bool(self.storage.exists(name))

    def delete(self, name: str) -> None:
        """Remove an object; removing one that is already gone is not an error."""
        with _unavailable_on_failure():
            self.storage.delete(name)

    def names(self, kind: str) -> Iterator[str]:
        """Every object name of `kind` (see `new_name`), for sweeping orphans."""
        with _unavailable_on_failure():
            prefixes, _ = self.storage.listdir(kind)
            for prefix in sorted(prefixes):
                _, files = self.storage.listdir(f"{kind}/{prefix}")
                for file_name in files:
                    yield f"{kind}/{prefix}/{file_name}"

    def _stat(self, name: str, read: Callable[[str], Any]) -> Any:
        try:
            with _unavailable_on_failure():
                return read(name)
        except FileNotFoundError:
            raise ObjectMissing(name) from None
        except StoreUnavailable as exc:
            if _is_s3_not_found(exc.__cause__):
                raise ObjectMissing(name) from None
            raise

    @contextmanager
    def open(self, name: str, *, offset: int = 0) -> Iterator[BinaryIO]:
        """A readable stream of the object from byte `offset` on, read lazily."""
        if offset < 0:
            raise ValueError("offset must not be negative")
        if self.is_s3:
            from botocore.exceptions import BotoCoreError

            body = self._s3_get(name, offset)
            try:
                yield body
            except BotoCoreError as exc:
                # The store failed half-way through the body (a cut connection, a timeout):
                # the same "try again later" as a failed request.
                raise StoreUnavailable(type(exc).__name__) from exc
            finally:
                body.close()
            return
        try:
            handle = Path(self.storage.path(name)).open("rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise ObjectMissing(name) from None
        with handle:
            handle.seek(offset)
            yield handle

    def _s3_get(self, name: str, offset: int) -> Any:
        storage: Any = self.storage
        key = storage._normalize_name(name)
        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return storage.bucket.Object(key).get(**kwargs)["Body"]
        except Exception as exc:
            if _is_s3_not_found(exc):
                raise ObjectMissing(name) from None
            if _s3_error_code(exc) == "InvalidRange":
                # S3 refuses a range that starts at or past the end; a local file simply reads
                # as empty there, and both backends must behave the same for the readers.
                return io.BytesIO()
            if _is_store_failure(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def check(self, *, timeout: float = 1.0) -> None:
        """Raise StoreUnavailable unless the store answers within `timeout` seconds."""
        if not self.is_s3:
            location = Path(self.storage.path(""))
            location.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not location.is_dir():
                raise StoreUnavailable("the object folder is missing")
            return
        import boto3
        from botocore.config import Config

        storage: Any = self.storage
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=storage.endpoint_url,
            region_name=storage.region_name,
            aws_access_key_id=storage.access_key,
            aws_secret_access_key=storage.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": storage.addressing_style or "auto"},
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )
        try:
            client.head_bucket(Bucket=storage.bucket_name)
        except Exception as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


def _is_store_failure(exc: BaseException) -> bool:
    """Whether `exc` says the store failed (down, refusing us, out of space), as opposed to a
    bug of ours: callers retry the former later."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, FileNotFoundError):
        return False  # a missing object or folder: the caller says what that means
    return isinstance(exc, BotoCoreError | ClientError | Boto3Error | OSError)


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if _is_store_failure(exc):
            raise StoreUnavailable(type(exc).__name__) from exc
        raise


def _s3_error_code(exc: BaseException | None) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _is_s3_not_found(exc: BaseException | None) -> bool:
    return _s3_error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def _shared_client(storage: Any) -> Any:
    """One low-level S3 client for every thread of the process. django-storages keeps a boto3
    resource per thread (resources are not thread-safe), and building one costs about 0.1 s
    of CPU; clients are thread-safe, so publishing's upload threads share this one."""
    client = getattr(storage, "_portal_shared_client", None)
    if client is None:
        client = storage._portal_shared_client = storage.connection.meta.client
    return client


def get_object_store() -> ObjectStore:
    return ObjectStore(storages["objects"])
