"""The DIMSE receiver: a C-STORE and C-ECHO SCP in front of `study_ingest_instance`.

How one instance travels:

1. A facility's PACS or modality opens an association. Its calling AE title must be registered
   (`facilities.AETitle`); the facility it belongs to is the one the studies count for. Unknown
   callers are refused at association (A-ASSOCIATE-RJ, "calling AE title not recognised") and
   the refusal is audited. The called AE title must be the listener's own.
2. pynetdicom writes the data set, PDV by PDV as it arrives, into a spool incoming file laid out
   as a DICOM Part 10 file: preamble, `DICM`, file meta from the C-STORE request (SOP class and
   instance) and the negotiated transfer syntax, then the data set bytes exactly as sent. The
   data set is never held in memory, decoded or copied before the ingest service reads it.
3. `study_ingest_instance` parses, indexes and keeps (or discards) that file; its result's
   `dimse_status` is the C-STORE response.

Threads: pynetdicom runs each association in a thread of its own (and reads its socket in
another). Every handler here that touches the database runs in the association's thread, so an
association uses one database connection, closed when the association ends.

Logging: pynetdicom's debug output names SOP instance UIDs, which are PHI here, so its per-PDU
and per-message logging is switched off and its logger kept at WARNING (INFO when verbose, which
carries no UIDs). Our own lines name only AE titles, addresses, statuses and counts.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from weakref import WeakKeyDictionary

from django.conf import settings
from django.db import connections
from django.db.models.functions import Trim
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, dimse_messages, evt, register_uid
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from audit.codes import Action, ActorKind, Outcome
from audit.services import audit_record
from facilities.models import AETitle, Facility
from studies.dicom import STORAGE_SOP_CLASSES, SUPPORTED_TRANSFER_SYNTAXES
from studies.services import (
    DIMSE_PROCESSING_FAILURE,
    Channel,
    IngestOutcome,
    IngestSource,
    study_ingest_instance,
)
from studies.spool import get_spool

logger = logging.getLogger(__name__)

# The largest PDU we accept. The reader holds one whole PDU in memory, so this bounds memory per
# association; 1 MiB is large enough that a 512x512 CT slice arrives in one PDU and per-PDU
# overhead disappears, and small enough that a thousand associations fit in a gigabyte.
MAX_PDU_BYTES = 1024 * 1024

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
_REJECT_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)  # permanent, service user
_REJECT_TEMPORARY_CONGESTION = (0x02, 0x03, 0x01)  # transient, service provider (presentation)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
# PS3.7 C.4.2: Error Comment is LO, at most 64 characters.
_ERROR_COMMENT_MAX = 64


# --- pynetdicom, set up once per process --------------------------------------------------------

_prepare_lock = threading.Lock()
_is_prepared = False


DUL_IDLE_POLL_SECONDS = 0.0001


def _prepare_pynetdicom() -> None:
    """Change pynetdicom's process-wide behaviour the way the listener needs it (idempotent).

    - Receive C-STORE data sets in chunks into a file instead of memory
      (`STORE_RECV_CHUNKED_DATASET`), and make that file a spool incoming file (see
      `_SpoolIncomingFile`).
    - No per-PDU and per-message log handlers: they log UIDs at debug level, and cost time on
      every PDU even when nothing is printed.
    - Every Storage SOP class we accept is served by the Storage service: pynetdicom maps some
      retired and trial ones (e.g. the retired Ultrasound and Nuclear Medicine classes old
      modalities still send) to no service, which would abort the association.
    """
    global _is_prepared
    with _prepare_lock:
        if _is_prepared:
            return
        if not hasattr(dimse_messages, "NamedTemporaryFile"):
            raise RuntimeError(
                "pynetdicom no longer creates received data set files where the listener "
                "expects; check studies/scp.py against the installed pynetdicom."
            )
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = _SpoolIncomingFile.open  # type: ignore[assignment]
        _config.LOG_HANDLER_LEVEL = "none"
        for uid in sorted(STORAGE_SOP_CLASSES):
            if uid_to_service_class(uid) is ServiceClass:
                register_uid(uid, "PortalStorage_" + uid.replace(".", "_"), StorageServiceClass)
        _is_prepared = True


class _SpoolIncomingFile:
    """The file pynetdicom writes a received data set into: a fresh spool incoming file.

    Why not pynetdicom's own temporary file: it is made in the system temp directory, outside
    the spool, so plaintext images would rest where DESIGN rule 1 says they must not (and on a
    tmpfs, in memory), and handing it to the spool could mean a copy across file systems.
    pynetdicom 3.0 has no setting for that directory, so `_prepare_pynetdicom` points its
    `NamedTemporaryFile` at `open` below. pynetdicom uses `name`, `write`, `file.flush()` and
    `close()`; after the handler it closes the file and unlinks `name`, which is harmless once
    the ingest service has moved or removed it. A transfer cut off half-way leaves an incoming
    file that the spool sweeper removes.
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.file = path.open("wb")

    @classmethod
    def open(cls, **_tempfile_options: Any) -> _SpoolIncomingFile:
        return cls(get_spool().new_incoming())

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


def _supported_contexts() -> list[PresentationContext]:
    transfer_syntaxes = sorted(SUPPORTED_TRANSFER_SYNTAXES)
    contexts = [build_context(uid, transfer_syntaxes) for uid in sorted(STORAGE_SOP_CLASSES)]
    contexts.append(build_context(VERIFICATION_SOP_CLASS))
    return contexts


# --- The listener -------------------------------------------------------------------------------


@dataclass
class _Caller:
    """Who is on the other end of one association: looked up once, when it is requested."""

    source: IngestSource
    outcomes: Counter[str] = field(default_factory=Counter)


def find_calling_facility(calling_ae_title: str) -> Facility | None:
    """The facility a calling AE title is registered to, or None.

    Leading and trailing spaces are not significant in AE titles (PS3.5 6.2), on the wire or
    in what an admin typed; case is.
    """
    registered = (
        AETitle.objects.annotate(bare=Trim("ae_title"))
        .filter(bare=calling_ae_title.strip())
        .select_related("facility")
        .first()
    )
    return registered.facility if registered else None


class DicomListener:
    """A C-STORE and C-ECHO SCP for the facilities' registered AE titles.

    `start()` listens in background threads and returns at once; `stop()` ends it. The
    `dicom_listener` command runs one until it is signalled; tests run one in-process.
    """

    def __init__(
        self,
        *,
        ae_title: str | None = None,
        max_associations: int | None = None,
        max_pdu_bytes: int = MAX_PDU_BYTES,
        verbose: bool = False,
    ) -> None:
        _prepare_pynetdicom()
        logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.WARNING)
        self.ae_title = (ae_title or settings.DICOM_LISTENER_AE_TITLE).strip()
        self.ae = AE(ae_title=self.ae_title)
        self.ae.supported_contexts = _supported_contexts()
        self.ae.require_called_aet = True
        self.ae.maximum_associations = (
            settings.DICOM_LISTENER_MAX_ASSOCIATIONS
            if max_associations is None
            else max_associations
        )
        self.ae.maximum_pdu_size = max_pdu_bytes
        self._server: ThreadedAssociationServer | None = None
        self._callers: WeakKeyDictionary[Association, _Caller] = WeakKeyDictionary()
        self._callers_lock = threading.Lock()

    @property
    def max_associations(self) -> int:
        return int(self.ae.maximum_associations)

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on (host, port) and return the address actually bound (port 0 picks one)."""
        server = self.ae.start_server(
            (host, port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, self._on_connection_open),
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_RELEASED, self._on_association_end),
                (evt.EVT_ABORTED, self._on_association_end),
                (evt.EVT_REJECTED, self._on_association_end),
            ],
        )
        if server is None:  # pynetdicom returns the server of a non-blocking start
            raise RuntimeError("The DICOM listener did not start.")
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Stop accepting associations, let those in progress finish for up to `grace_seconds`,
        then abort the rest.

        Why a grace period: an aborted sender resends everything it was not told was stored,
        so a short wait saves work, and nothing is lost when it runs out.
        """
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for association in self.ae.active_associations:
            association.abort()

    # --- Handlers (see the module docstring for which thread runs which) ---------------------

    def _on_connection_open(self, event: Event) -> None:
        """Send each C-STORE response at once: without TCP_NODELAY a small response can wait
        for a delayed ACK, which stalls a sender that waits for it before the next instance."""
        client = event.assoc.dul.socket
        if client is not None and client.socket is not None:
            client.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom's reader sleeps this long whenever no PDU is waiting; its 1 ms default
        # is paid at least once per instance (the sender waits for our response before it
        # sends the next). A tenth of that costs a little CPU while an association idles, and
        # associations are short.
        event.assoc.dul._run_loop_delay = DUL_IDLE_POLL_SECONDS

    def _on_requested(self, event: Event) -> None:
        """Admit registered calling AE titles only, and remember the caller's facility."""
        association = event.assoc
        request = cast(A_ASSOCIATE, association.requestor.primitive)  # set before EVT_REQUESTED
        calling = str(request.calling_ae_title).strip()
        address = association.requestor.address
        try:
            facility = find_calling_facility(calling)
        except Exception as error:
            # The database is unreachable: say "try later" rather than "you are not known".
            logger.error(
                "Cannot check calling AE %r at %s (%s); refusing for now",
                calling,
                address,
                type(error).__name__,
            )
            self._reject(association, _REJECT_TEMPORARY_CONGESTION)
            return
        if facility is None:
            logger.warning("Refused association from unregistered AE %r at %s", calling, address)
            try:
                audit_record(
                    action=Action.DICOM_ASSOCIATION_REFUSED,
                    outcome=Outcome.DENIED,
                    actor_kind=ActorKind.DICOM_NODE,
                    actor_id=calling,
                    address=address,
                    detail={
                        "reason": "calling AE title not recognised",
                        "called_ae_title": str(request.called_ae_title).strip(),
                    },
                )
            except Exception as error:
                logger.error("Could not audit a refused association (%s)", type(error).__name__)
            self._reject(association, _REJECT_CALLING_AE_NOT_RECOGNISED)
            return
        source = IngestSource(
            facility, Channel.DIMSE, ActorKind.DICOM_NODE, calling, address=address
        )
        with self._callers_lock:
            self._callers[association] = _Caller(source)

    def _reject(self, association: Association, reason: tuple[int, int, int]) -> None:
        """Send A-ASSOCIATE-RJ from within EVT_REQUESTED, the way pynetdicom rejects its own."""
        _close_database_connections()
        association.acse.send_reject(*reason)
        association.kill()

    def _on_c_store(self, event: Event) -> int | Dataset:
        """Hand the received file to the ingest service and answer with its status.

        Never raises: an exception here would make pynetdicom answer 0xC211 and log a
        traceback; a failure is instead "out of resources", so the sender tries again.
        """
        with self._callers_lock:
            caller = self._callers.get(event.assoc)
        if caller is None:  # cannot happen: EVT_REQUESTED admitted this association
            return _status(DIMSE_PROCESSING_FAILURE, "The portal could not store this image.")
        try:
            result = study_ingest_instance(path=event.dataset_path, source=caller.source)
        except Exception as error:
            logger.error(
                "C-STORE from %s at %s failed (%s)",
                caller.source.actor_id,
                caller.source.address,
                type(error).__name__,
            )
            caller.outcomes[IngestOutcome.FAILED] += 1
            return _status(DIMSE_PROCESSING_FAILURE, "The portal could not store this image.")
        caller.outcomes[result.outcome] += 1
        if result.dimse_status == 0x0000:
            return 0x0000
        logger.info(
            "C-STORE from %s at %s: %s (0x%04X)",
            caller.source.actor_id,
            caller.source.address,
            result.outcome,
            result.dimse_status,
        )
        return _status(result.dimse_status, result.message)

    def _on_association_end(self, event: Event) -> None:
        """Log what the association brought, and close its thread's database connection."""
        with self._callers_lock:
            caller = self._callers.pop(event.assoc, None)
        if caller is not None and event.event == evt.EVT_REJECTED:
            # pynetdicom's own refusals: too many associations, or not our called AE title.
            logger.warning(
                "Refused association from %s at %s: %s",
                caller.source.actor_id,
                caller.source.address,
                cast(A_ASSOCIATE, event.assoc.acceptor.primitive).reason_str,
            )
        elif caller is not None:
            counts = " ".join(f"{outcome}={caller.outcomes[outcome]}" for outcome in IngestOutcome)
            logger.info(
                "Association from %s at %s %s: %s",
                caller.source.actor_id,
                caller.source.address,
                event.event.name[4:].lower(),
                counts,
            )
        # An abort can come from another thread (stop() in the main thread); only the
        # association's own thread holds its connection.
        if threading.current_thread() is event.assoc:
            _close_database_connections()


def _close_database_connections() -> None:
    """Close this thread's database connections; Django opens one per thread and never
    closes those of threads it does not manage."""
    connections.close_all()


def _status(status: int, message: str) -> Dataset:
    """A C-STORE response status with a comment a person at the sending end can read."""
    response = Dataset()
    response.Status = status
    response.ErrorComment = message[:_ERROR_COMMENT_MAX]
    return response
