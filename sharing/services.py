"""The encrypted store's life cycle: publishing spooled instances, reading them, ending them.

Publishing (rule 1 of DESIGN.md): a publish task claims a batch of a node's spooled instances,
encrypts each under its study's data key while checking the spool file against the SHA-256
recorded at ingest, uploads it in one request the store checks by MD5 (large objects stream,
and are read back and decrypted instead), then records the object and removes the spool file.
Every step can be interrupted (a killed worker, a store or database outage) without losing an
instance or publishing one twice:

- a claim is a conditional update (`received` -> `publishing`) plus a `StoredObject` row naming
  the object *before* anything is uploaded, so an upload never writes an object nobody knows;
- the claim carries a token (the task's id, which survives Celery retries), so a retried task
  finishes its own claims first, re-uploading under the same name;
- finishing is again conditional (`uploading` -> `stored`): a claim released in the meantime
  by the sweeper (its lease ran out) is not finished twice, and its object is removed;
- the sweeper releases claims older than the lease (deleting whatever was uploaded) and
  requeues instances that wait with no task, e.g. after Redis lost its queue.

Reading: `read_instance` is the only way any other part of the project gets study bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.http import HttpRequest
from django.utils import timezone

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import DetailValue, audit_record
from consent.models import SignedAuthorization
from sharing.crypto import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    DataKey,
    IntegrityError,
    ObjectDecryptor,
    ObjectEncryptor,
    ciphertext_size,
    decrypt_stream,
)
from sharing.documents import DOCUMENT_KIND
from sharing.keys import existing_study_data_key, study_data_key
from sharing.models import StoredObject, StudyKey
from sharing.store import ObjectCorrupted, ObjectStore, StoreUnavailable, get_object_store
from studies.models import Instance, Series, Study
from studies.spool import Spool, get_spool

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger(__name__)

OBJECT_KIND = "instance"


class PublishFailed(Exception):
    """An uploaded object did not read back as the instance received; it was not recorded."""


def publish_queue(node: str) -> str:
    """The Celery queue of the node whose spool holds the files: only its workers read them."""
    return f"publish.{node}"


# --- Publishing -------------------------------------------------------------------------------


@dataclass
class PublishReport:
    published: int = 0
    # Claims let go because the store failed; their instances wait to be claimed again.
    released: int = 0
    # True when the batch was full: more instances may be waiting.
    more: bool = False


@dataclass
class _Claim:
    instance: Instance
    stored: StoredObject


@dataclass
class _Uploaded:
    claim: _Claim
    object_id: bytes
    size: int


def publish_spooled(
    node: str,
    *,
    claim_token: str | None = None,
    batch_size: int | None = None,
    store: ObjectStore | None = None,
    on_full_batch: Callable[[], None] | None = None,
) -> PublishReport:
    """Publish one batch of `node`'s spooled instances: this token's unfinished claims first,
    then new ones. Raises StoreUnavailable (after letting go of what it could) for a retry.

    `on_full_batch` is called once a full batch is claimed, before any of it is published: the
    task queues the next batch there, so a backlog keeps every worker process busy.

    Up to PUBLISH_UPLOADS_IN_FLIGHT instances are encrypted and uploaded at once (the store's
    answer is mostly waiting), and what has been uploaded is recorded a group at a time, one
    transaction each, so that commits do not cost one disk flush per instance."""
    token = claim_token or uuid.uuid4().hex
    size = batch_size or settings.PUBLISH_BATCH_SIZE
    store = store or get_object_store()
    claims = _resumed_claims(token)
    if len(claims) < size:
        claims += _claim(node, token, size - len(claims))
    report = PublishReport(more=len(claims) >= size)
    if report.more and on_full_batch is not None:
        on_full_batch()
    try:
        _publish_claims(claims, store, report)
    finally:
        _settle_studies({claim.instance.study_id for claim in claims})
    return report


def _resumed_claims(token: str) -> list[_Claim]:
    objects = StoredObject.objects.select_related("instance").filter(
        claim_token=token, state=StoredObject.State.UPLOADING
    )
    return [_Claim(stored.instance, stored) for stored in objects]


def _claim(node: str, token: str, size: int) -> list[_Claim]:
    now = timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: workers of the same node each take different instances, without waiting.
        candidates = list(
            Instance.objects.select_for_update(skip_locked=True)
            .filter(spool_node=node, state=Instance.State.RECEIVED)
            .order_by("pk")[:size]
        )
        if connection.features.has_select_for_update_skip_locked:
            # The rows are locked: one update claims them all.
            Instance.objects.filter(pk__in=[instance.pk for instance in candidates]).update(
                state=Instance.State.PUBLISHING
            )
        else:
            # No row locks (SQLite): another claimer may have taken an instance since the
            # select, so each claim is a conditional update of its own.
            candidates = [
                instance
                for instance in candidates
                if Instance.objects.filter(pk=instance.pk, state=Instance.State.RECEIVED).update(
                    state=Instance.State.PUBLISHING
                )
            ]
        if not candidates:
            return []
        stored = StoredObject.objects.bulk_create(
            StoredObject(
                instance=instance,
                name=ObjectStore.new_name(OBJECT_KIND),
                claim_token=token,
                segment_size=DEFAULT_SEGMENT_SIZE,
                claimed_at=now,
            )
            for instance in candidates
        )
        Study.objects.filter(
            pk__in={instance.study_id for instance in candidates}, state=Study.State.RECEIVING
        ).update(state=Study.State.PUBLISHING)
    return [_Claim(instance, record) for instance, record in zip(candidates, stored, strict=True)]


def _publish_claims(claims: list[_Claim], store: ObjectStore, report: PublishReport) -> None:
    # Data keys come from the database, so they are fetched here, never in an upload thread.
    data_keys: dict[int, DataKey] = {}
    for claim in claims:
        if claim.instance.study_id not in data_keys:
            data_keys[claim.instance.study_id] = study_data_key(claim.instance.study)
    uploads = [
        (claim, _submit(_upload, claim, store, data_keys[claim.instance.study_id]))
        for claim in claims
    ]
    waiting: list[_Uploaded] = []  # uploaded, not recorded yet
    recorded: set[int] = set()
    unavailable: StoreUnavailable | None = None

    def record_waiting() -> None:
        recorded.update(upload.claim.stored.pk for upload in _record(waiting, store))
        waiting.clear()

    for claim, upload in uploads:
        # A group ends when it is full, or when the next upload is still running: what is
        # uploaded is recorded meanwhile, so the progress bar moves while the batch runs.
        if waiting and (len(waiting) >= RECORD_GROUP_SIZE or not upload.done()):
            record_waiting()
        if upload.cancelled():
            continue
        try:
            waiting.append(upload.result())
        except StoreUnavailable as exc:
            unavailable = unavailable or exc
            for _, later in uploads:  # those not started yet would only wait for it too
                later.cancel()
        except (PublishFailed, OSError):
            # A spool file gone or a read-back that does not match: loud, and left claimed so
            # that the sweeper retries it after the lease rather than in a tight loop.
            logger.exception("Publishing instance %s failed", claim.instance.pk)
    record_waiting()
    report.published = len(recorded)
    if unavailable is not None:
        unrecorded = [claim for claim in claims if claim.stored.pk not in recorded]
        report.released = _release(unrecorded, store)
        raise unavailable


# Uploads recorded in one transaction at most.
RECORD_GROUP_SIZE = 16


def _upload(claim: _Claim, store: ObjectStore, data_key: DataKey) -> _Uploaded:
    """Encrypt the spool file and upload it, checked; no database work (it may run in a
    thread of its own)."""
    instance, stored = claim.instance, claim.stored
    path = get_spool().path_of(instance.spool_name)
    encryptor = ObjectEncryptor(data_key, segment_size=stored.segment_size)
    expected_size = ciphertext_size(instance.size_bytes, segment_size=stored.segment_size)
    if expected_size <= settings.PUBLISH_IN_MEMORY_MAX_BYTES:
        # Most instances: encrypt in memory while hashing the plaintext, so the spool file is
        # proven to be what was received, and let the store check the upload by its MD5.
        with path.open("rb") as plaintext:
            hashing = _HashingReader(plaintext)
            ciphertext = b"".join(encryptor.encrypt(cast(IO[bytes], hashing)))
        if hashing.digest.hexdigest() != instance.sha256 or hashing.size != instance.size_bytes:
            raise PublishFailed("the spool file is not the instance received")
        try:
            store.put_verified(stored.name, ciphertext)
        except ObjectCorrupted as exc:
            raise PublishFailed("the store kept other bytes than were sent") from exc
    else:
        # Large ones stream through in constant memory and are checked by reading them back.
        with path.open("rb") as plaintext:
            store.put(stored.name, encryptor.reader(plaintext))
        _verify(store, stored.name, data_key, encryptor.object_id, instance)
    return _Uploaded(claim, encryptor.object_id, expected_size)


def _record(uploaded: list[_Uploaded], store: ObjectStore) -> list[_Uploaded]:
    """Record uploaded objects as stored and their instances as published, in one transaction;
    returns those recorded. An upload whose claim the sweeper released meanwhile (its lease ran out)
    is not recorded: a later claim publishes that instance under another name, so the object
    this one uploaded is deleted."""
    if not uploaded:
        return []
    spool = get_spool()
    finished: list[_Uploaded] = []
    now = timezone.now()
    with transaction.atomic():
        for upload in uploaded:
            stored = upload.claim.stored
            if StoredObject.objects.filter(
                pk=stored.pk, name=stored.name, state=StoredObject.State.UPLOADING
            ).update(
                state=StoredObject.State.STORED,
                object_id=upload.object_id,
                size_bytes=upload.size,
                stored_at=now,
            ):
                finished.append(upload)
        instances = [upload.claim.instance for upload in finished]
        Instance.objects.filter(
            pk__in=[instance.pk for instance in instances], state=Instance.State.PUBLISHING
        ).update(state=Instance.State.PUBLISHED, spool_name="")
        for study_id, count in Counter(instance.study_id for instance in instances).items():
            Study.objects.filter(pk=study_id).update(
                number_of_published_instances=F("number_of_published_instances") + count
            )
        paths = [spool.path_of(instance.spool_name) for instance in instances]
        transaction.on_commit(partial(_discard_all, spool, paths))
    for upload in uploaded:
        if upload not in finished:
            _delete_quietly(store, upload.claim.stored.name)
    return finished


def _discard_all(spool: Spool, paths: list[Path]) -> None:
    for path in paths:
        spool.discard(path)


# Encrypting and uploading run in threads that live as long as the process: each keeps its own
# connection to the store (django-storages makes one per thread), so a task pays no set-up.
_upload_threads: ThreadPoolExecutor | None = None


def _submit(function: Callable[..., _Uploaded], *args: object) -> Future[_Uploaded]:
    global _upload_threads
    in_flight = settings.PUBLISH_UPLOADS_IN_FLIGHT
    if in_flight > 1:
        if _upload_threads is None:
            _upload_threads = ThreadPoolExecutor(in_flight, thread_name_prefix="publish-upload")
        return _upload_threads.submit(function, *args)
    # One at a time: in the calling thread, in order (and simple to time and to debug).
    future: Future[_Uploaded] = Future()
    try:
        future.set_result(function(*args))
    except BaseException as exc:
        future.set_exception(exc)
    return future


class _HashingReader(io.RawIOBase):
    """Reads a file through, keeping the SHA-256 and size of what was read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            view = memoryview(buffer)[:count]
            self.digest.update(view)
            self.size += count
        return int(count or 0)


def _delete_quietly(store: ObjectStore, name: str) -> None:
    try:
        store.delete(name)
    except StoreUnavailable:
        logger.warning("An object of a released claim is left for the orphan sweep")


def _verify(
    store: ObjectStore,
    name: str,
    data_key: DataKey,
    object_id: bytes,
    instance: Instance,
) -> None:
    """Read the object back: it must decrypt to exactly the bytes received (their size and the
    SHA-256 recorded at ingest). Decryption authenticates every segment and the object's end,
    so a plaintext of the right size also proves the object has the size it should."""
    digest, size = hashlib.sha256(), 0
    try:
        with store.open(name) as body:
            for chunk in decrypt_stream(body, data_key, expected_object_id=object_id):
                digest.update(chunk)
                size += len(chunk)
    except IntegrityError as exc:
        raise PublishFailed(f"the stored object does not decrypt: {exc}") from exc
    if size != instance.size_bytes or digest.hexdigest() != instance.sha256:
        raise PublishFailed("the stored object does not decrypt to the instance received")


def _release(claims: Iterable[_Claim], store: ObjectStore) -> int:
    """Let go of unfinished claims so any worker can take them again; deletes what they may
    have uploaded first. A claim whose object cannot be deleted (the store is down) is kept,
    for the retried task or, after the lease, the sweeper."""
    released = 0
    for claim in claims:
        try:
            store.delete(claim.stored.name)
        except StoreUnavailable:
            break  # the store is down: each further delete would only wait for it again
        released += _release_claim(claim.stored)
    return released


def _release_claim(stored: StoredObject) -> int:
    with transaction.atomic():
        deleted, _ = StoredObject.objects.filter(
            pk=stored.pk, name=stored.name, state=StoredObject.State.UPLOADING
        ).delete()
        if deleted:
            Instance.objects.filter(pk=stored.pk, state=Instance.State.PUBLISHING).update(
                state=Instance.State.RECEIVED
            )
    return int(bool(deleted))


def _settle_studies(study_ids: Iterable[int]) -> int:
    """Move each study to `available` once nothing of it waits, auditing that moment; returns
    how many studies changed state."""
    changed = 0
    for study_id in sorted(study_ids):
        with transaction.atomic():
            # The row lock orders this after any ingest transaction still adding to the study.
            study = Study.objects.select_for_update().filter(pk=study_id).first()
            if study is None or study.state == Study.State.SHREDDED:
                continue
            waiting = (
                Instance.objects.filter(study_id=study_id)
                .exclude(state=Instance.State.PUBLISHED)
                .exists()
            )
            state = Study.State.PUBLISHING if waiting else Study.State.AVAILABLE
            if state == study.state:
                continue
            changed += 1
            Study.objects.filter(pk=study_id).update(state=state, updated_at=timezone.now())
            if state == Study.State.AVAILABLE:
                audit_record(
                    action=Action.STUDY_PUBLISHED,
                    actor_kind=ActorKind.SYSTEM,
                    facility_id=study.source_facility_id,
                    target_kind=TargetKind.STUDY,
                    target_id=study.pk,
                    patient_id=study.patient_id,
                    study_id=study.pk,
                    detail={"instances": study.number_of_published_instances},
                )
    return changed


# --- The sweeper ------------------------------------------------------------------------------


@dataclass
class PublishSweepReport:
    released: int = 0
    # Nodes with instances waiting and no task: their queues get a task.
    nodes_to_kick: set[str] = field(default_factory=set)
    studies_settled: int = 0


def publish_sweep(
    *,
    lease: timedelta | None = None,
    waiting_for: timedelta | None = None,
    store: ObjectStore | None = None,
) -> PublishSweepReport:
    """Release claims older than `lease` and name the nodes whose instances have waited longer
    than `waiting_for` (the caller queues a publish task for each)."""
    store = store or get_object_store()
    now = timezone.now()
    lease = timedelta(seconds=settings.PUBLISH_CLAIM_LEASE_SECONDS) if lease is None else lease
    if waiting_for is None:
        waiting_for = timedelta(seconds=settings.PUBLISH_REQUEUE_AFTER_SECONDS)
    report = PublishSweepReport()
    stale = StoredObject.objects.select_related("instance").filter(
        state=StoredObject.State.UPLOADING, claimed_at__lte=now - lease
    )
    for stored in stale.iterator():
        try:
            store.delete(stored.name)
        except StoreUnavailable:
            logger.warning("The object store is unavailable; stale claims stay for the next sweep")
            break
        if _release_claim(stored):
            report.released += 1
            report.nodes_to_kick.add(stored.instance.spool_node)
    report.nodes_to_kick.update(
        Instance.objects.filter(state=Instance.State.RECEIVED, received_at__lte=now - waiting_for)
        .values_list("spool_node", flat=True)
        .distinct()
    )
    # A task that died between publishing a study's last instance and settling the study
    # leaves it `publishing` with nothing left to publish.
    unsettled = Study.objects.filter(
        state=Study.State.PUBLISHING, updated_at__lte=now - waiting_for
    ).exclude(
        Exists(
            Instance.objects.filter(study=OuterRef("pk")).exclude(state=Instance.State.PUBLISHED)
        )
    )
    report.studies_settled = _settle_studies(unsettled.values_list("pk", flat=True))
    return report


# Documents (signed authorizations) are written inside the transaction that records them, so a
# just-written one has no committed row yet: only objects older than this can be orphans.
ORPHAN_GRACE = timedelta(hours=1)


def remove_orphan_objects(*, store: ObjectStore | None = None) -> int:
    """Delete objects that no row names: instances left by a shred or by a release whose
    delete failed, documents of a capture that failed while the store was down."""
    store = store or get_object_store()
    cutoff = timezone.now() - ORPHAN_GRACE
    removed = 0
    for kind, known_names in (
        (OBJECT_KIND, _instance_object_names),
        (DOCUMENT_KIND, _document_object_names),
    ):
        listed = list(store.names(kind))
        known = known_names(listed)
        for name in listed:
            if name not in known and store.modified_at(name) < cutoff:
                store.delete(name)
                removed += 1
    return removed


def _instance_object_names(names: list[str]) -> set[str]:
    return set(StoredObject.objects.filter(name__in=names).values_list("name", flat=True))


def _document_object_names(names: list[str]) -> set[str]:
    rows = SignedAuthorization.objects.filter(
        Q(pdf_object_name__in=names) | Q(scan_object_name__in=names)
    ).values_list("pdf_object_name", "scan_object_name")
    return {name for pair in rows for name in pair if name}


# --- Reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """Who reads an instance and why, as the audit log records it."""

    actor_kind: str
    actor_id: str | int = ""
    request: HttpRequest | None = None
    facility_id: int | None = None
    purpose: str = ""


class ObjectUnavailable(Exception):
    """The instance has no stored object (not yet published, or shredded)."""


def read_instance(
    instance: Instance,
    reader: Reader,
    *,
    offset: int = 0,
    still_allowed: Callable[[], bool] | None = None,
    store: ObjectStore | None = None,
) -> Iterator[bytes]:
    """The plaintext of a published instance from byte `offset` on, one chunk per segment.

    The read is audited before the first byte. Every segment is authenticated before it is
    released; a stored object that fails raises `IntegrityError`, audited and logged as an alert,
    and never yields wrong bytes. `still_allowed` is asked before each segment, so a withdrawal
    of consent stops a stream in flight.
    """
    stored = StoredObject.objects.filter(instance=instance, state=StoredObject.State.STORED).first()
    if stored is None or stored.object_id is None:
        raise ObjectUnavailable("the instance is not in the encrypted store")
    if offset < 0 or offset > instance.size_bytes:
        raise ValueError("offset outside the instance")
    data_key = existing_study_data_key(instance.study_id)
    audit_instance_read(instance, reader, detail={"offset": offset} if offset else None)
    return _plaintext(
        instance, stored, data_key, reader, offset, still_allowed, store or get_object_store()
    )


def audit_instance_read(
    instance: Instance,
    reader: Reader,
    *,
    action: str = Action.INSTANCE_READ,
    outcome: str = Outcome.ALLOWED,
    detail: Mapping[str, DetailValue] | None = None,
) -> None:
    """One audit row for a read of an instance (allowed, refused or failed), by `reader`."""
    audit_record(
        action=action,
        outcome=outcome,
        request=reader.request,
        actor_kind=reader.actor_kind,
        actor_id=reader.actor_id,
        facility_id=reader.facility_id,
        target_kind=TargetKind.INSTANCE,
        target_id=instance.pk,
        patient_id=instance.study.patient_id,
        study_id=instance.study_id,
        purpose=reader.purpose,
        detail=detail,
    )


def _plaintext(
    instance: Instance,
    stored: StoredObject,
    data_key: DataKey,
    reader: Reader,
    offset: int,
    still_allowed: Callable[[], bool] | None,
    store: ObjectStore,
) -> Iterator[bytes]:
    object_id = bytes(stored.object_id or b"")
    try:
        if offset == 0:
            # From the start (most reads): one request for the header and the body.
            with store.open(stored.name) as body:
                chunks = decrypt_stream(body, data_key, expected_object_id=object_id)
                yield from _released(chunks, still_allowed)
            return
        # From an offset: the header first, then a ranged read from the segment that holds it.
        with store.open(stored.name) as head:
            header = head.read(HEADER_SIZE)
        decryptor = ObjectDecryptor(header, data_key, expected_object_id=object_id)
        with store.open(stored.name, offset=decryptor.ciphertext_offset(offset)) as body:
            yield from _released(decryptor.decrypt(body, offset=offset), still_allowed)
    except IntegrityError as exc:
        logger.critical(
            "ALERT: stored object of instance %s failed its integrity check (%s)",
            instance.pk,
            exc,
        )
        audit_instance_read(
            instance,
            reader,
            action=Action.OBJECT_INTEGRITY_FAILED,
            outcome=Outcome.ERROR,
            detail={"object": stored.name},
        )
        raise


def _released(chunks: Iterator[bytes], still_allowed: Callable[[], bool] | None) -> Iterator[bytes]:
    """Each authenticated segment, once access is confirmed again; stops when it is not."""
    for chunk in chunks:
        if still_allowed is not None and not still_allowed():
            return
        yield chunk


# --- Ending: crypto-shred, retention, legal hold ---------------------------------------------


@dataclass
class ShredReport:
    objects: int
    objects_left: int  # not deleted now (store down): unreadable, and the orphan sweep's


def study_shred(
    study: Study,
    *,
    reason: str,
    request: HttpRequest | None = None,
    actor_kind: str = ActorKind.SYSTEM,
    actor_id: str = "",
    store: ObjectStore | None = None,
) -> ShredReport:
    """Destroy a study's data key and delete its objects and image rows, audited.

    Once the transaction commits nothing of the study can be decrypted, wherever copies of
    its objects are (backups included); the objects are deleted after that, and any the store
    does not delete now are left to `remove_orphan_objects`. The study row stays, `shredded`,
    so the audit log and the patient's history still point at something.
    """
    store = store or get_object_store()
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state == Study.State.SHREDDED:
            return ShredReport(objects=0, objects_left=0)
        objects = StoredObject.objects.filter(instance__study=locked)
        names = list(objects.values_list("name", flat=True))
        spool_names = list(
            Instance.objects.filter(study=locked)
            .exclude(spool_name="")
            .values_list("spool_name", flat=True)
        )
        StudyKey.objects.filter(study=locked).delete()
        objects.delete()
        Instance.objects.filter(study=locked).delete()
        Series.objects.filter(study=locked).delete()
        Study.objects.filter(pk=locked.pk).update(
            state=Study.State.SHREDDED,
            number_of_series=0,
            number_of_instances=0,
            number_of_published_instances=0,
            size_bytes=0,
            updated_at=timezone.now(),
        )
        audit_record(
            action=Action.STUDY_SHREDDED,
            request=request,
            actor_kind=actor_kind,
            actor_id=actor_id,
            facility_id=locked.source_facility_id,
            target_kind=TargetKind.STUDY,
            target_id=locked.pk,
            patient_id=locked.patient_id,
            study_id=locked.pk,
            detail={"reason": reason, "objects": len(names)},
        )
    spool = get_spool()
    for spool_name in spool_names:  # on another node, that node's spool sweep removes them
        spool.discard(spool.path_of(spool_name))
    left = 0
    for name in names:
        try:
            store.delete(name)
        except StoreUnavailable:
            left += 1
    if left:
        logger.warning("%s objects of a shredded study are left for the orphan sweep", left)
    return ShredReport(objects=len(names), objects_left=left)


def studies_past_retention(today: date) -> Iterator[Study]:
    return (
        Study.objects.filter(available_until__lt=today, legal_hold=False)
        .exclude(state=Study.State.SHREDDED)
        .order_by("pk")
        .iterator()
    )


def retention_sweep(*, today: date | None = None) -> int:
    """Crypto-shred every study past its `available_until` that no legal hold keeps."""
    today = today or timezone.localdate()
    shredded = 0
    for study in studies_past_retention(today):
        study_shred(study, reason="retention")
        shredded += 1
    return shredded


def study_set_legal_hold(study: Study, *, held: bool, reason: str, request: HttpRequest) -> None:
    """Keep a study past its retention date (or stop keeping it), audited with the reason."""
    updated = Study.objects.filter(pk=study.pk).exclude(legal_hold=held)
    if not updated.update(legal_hold=held, updated_at=timezone.now()):
        return
    study.legal_hold = held
    audit_record(
        action=Action.LEGAL_HOLD_CHANGED,
        request=request,
        facility_id=study.source_facility_id,
        target_kind=TargetKind.STUDY,
        target_id=study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
        detail={"held": held, "reason": reason[:200]},
    )
