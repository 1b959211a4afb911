"""Everything that writes the study index: ingest, patient matching, reconciliation, the sweeper.

Every way in (C-STORE, STOW-RS, browser upload, bulk import) ends in `study_ingest_instance`,
which parses the spooled file, matches the patient, writes the index rows and keeps the file
in the spool in one transaction, and tells the publish pipeline on commit.
"""

from __future__ import annotations

import calendar
import enum
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.dispatch import Signal
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import audit_record
from facilities.models import Facility
from studies.dicom import (
    DicomRejected,
    ParsedInstance,
    RejectionReason,
    parse_instance,
    rejection_for,
)
from studies.models import (
    Instance,
    Patient,
    PatientIdentifier,
    Series,
    Study,
    normalised_person_name,
)
from studies.spool import Spool, get_spool

logger = logging.getLogger(__name__)

# Sent on commit for every newly stored instance (keyword `instance_id`). The publish pipeline
# connects to it; until something does, instances wait in the spool as `received`.
instance_received = Signal()


class Channel(enum.StrEnum):
    DIMSE = "dimse"
    STOW = "stow"
    UPLOAD = "upload"
    IMPORT = "import"


# C-STORE status for an instance whose SOPInstanceUID is held with other content. PS3.4 B.2.3
# warning "Elements Discarded": the sender must not count it as failed and retry for ever, and
# nothing it sent was kept.
DIMSE_CONFLICT_WARNING = 0xB006
# STOW-RS: PS3.7 C.4 "Duplicate SOP Instance", in the FailedSOPSequence of a 409 or 202.
STOW_CONFLICT_FAILURE_REASON = 0x0111
# A database or disk failure while storing: try again later (PS3.4 "Refused: Out of Resources").
DIMSE_PROCESSING_FAILURE = 0xA700
STOW_PROCESSING_FAILURE = 0x0110


@dataclass
class _Transfer:
    """What one transfer (an association, a request, an import run) has already written: the
    studies and series, and the studies whose receipt it has audited. A transaction that rolls
    back makes the transfer forget everything, so nothing stale is trusted."""

    studies: dict[str, Study] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    audited_study_ids: set[int] = field(default_factory=set)

    def remember(self, study: Study, series: Series) -> None:
        self.studies[study.study_instance_uid] = study
        self.series[series.series_instance_uid] = series
        self.audited_study_ids.add(study.pk)

    def forget(self) -> None:
        self.studies.clear()
        self.series.clear()
        self.audited_study_ids.clear()


@dataclass(frozen=True)
class IngestSource:
    """Who is sending: the facility it counts for, the way in, and who to name in the audit.

    Make one per transfer (a DIMSE association, an HTTP request, an import run) and pass it to
    every `study_ingest_instance` of that transfer: it remembers the studies and series already
    written, which spares each further instance their lookups.
    """

    facility: Facility
    channel: Channel
    actor_kind: str
    actor_id: str | int = ""
    request: HttpRequest | None = None
    address: str | None = None
    transfer: _Transfer = field(default_factory=_Transfer, compare=False, repr=False)

    @classmethod
    def for_user(cls, *, facility: Facility, channel: Channel, user: User,
                 request: HttpRequest | None = None) -> IngestSource:  # fmt: skip
        return cls(facility, channel, ActorKind.USER, user.pk, request)

    @property
    def default_issuer(self) -> str:
        """The IssuerOfPatientID assumed when an instance names none.

        A facility's own systems (DIMSE, STOW-RS, its archive) use its MRNs, so their issuer is
        the facility's default. Media brought in by patients come from anywhere: their
        PatientID says nothing without an issuer, so such studies wait for a person.
        """
        if self.channel == Channel.UPLOAD:
            return ""
        return self.facility.default_issuer_of_patient_id or f"PORTAL-FACILITY-{self.facility.pk}"


class IngestOutcome(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    message: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    instance: Instance | None = None
    rejection: DicomRejected | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.outcome in (IngestOutcome.STORED, IngestOutcome.DUPLICATE)

    @property
    def dimse_status(self) -> int:
        """The C-STORE response status for this result."""
        if self.rejection is not None:
            return self.rejection.dimse_status
        return {
            IngestOutcome.CONFLICT: DIMSE_CONFLICT_WARNING,
            IngestOutcome.FAILED: DIMSE_PROCESSING_FAILURE,
        }.get(self.outcome, 0x0000)

    @property
    def stow_failure_reason(self) -> int | None:
        """The STOW-RS Failure Reason (0008,1197), or None when the instance is held."""
        if self.rejection is not None:
            return self.rejection.stow_failure_reason
        return {
            IngestOutcome.CONFLICT: STOW_CONFLICT_FAILURE_REASON,
            IngestOutcome.FAILED: STOW_PROCESSING_FAILURE,
        }.get(self.outcome)


_MESSAGES = {
    IngestOutcome.STORED: "Received.",
    IngestOutcome.DUPLICATE: "Already received; nothing changed.",
    IngestOutcome.CONFLICT: (
        "An image with the same identifier but different content is already held; "
        "this one was not stored."
    ),
    IngestOutcome.FAILED: "The portal could not store this image just now; please try again.",
}


class _Conflict(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def study_ingest_instance(
    *,
    path: Path,
    source: IngestSource,
    spool: Spool | None = None,
    expected_study_instance_uid: str | None = None,
) -> IngestResult:
    """Parse, validate, match and index one received instance held in an incoming spool file.

    The incoming file is consumed: kept in the spool when the instance is new, removed
    otherwise. Re-sending identical bytes changes nothing; the same SOPInstanceUID with other
    content is a conflict and is kept out. Every refusal is audited with a reason and no
    patient data. With `expected_study_instance_uid` (a STOW-RS URL names the study), an
    instance of another study is refused. Never raises for bad input; a database failure is
    reported as FAILED with the incoming file removed, so the sender can simply send again.
    """
    spool = spool or get_spool()
    try:
        parsed = parse_instance(
            path,
            max_bytes=settings.INGEST_MAX_INSTANCE_BYTES,
            max_sequence_depth=settings.INGEST_MAX_SEQUENCE_DEPTH,
        )
    except DicomRejected as rejection:
        spool.discard(path)
        audit_ingest_refusal(source, rejection.reason_code)
        return IngestResult(IngestOutcome.REFUSED, rejection.message, rejection=rejection)
    except OSError:
        spool.discard(path)
        logger.exception("Reading an incoming spool file failed")
        return _failed(None)
    if expected_study_instance_uid not in (None, parsed.study_instance_uid):
        spool.discard(path)
        mismatch = rejection_for(RejectionReason.STUDY_MISMATCH)
        audit_ingest_refusal(source, mismatch.reason_code)
        return IngestResult(IngestOutcome.REFUSED, mismatch.message, parsed.sop_class_uid,
                            parsed.sop_instance_uid, rejection=mismatch)  # fmt: skip

    try:
        return _index(parsed, path, source, spool)
    except _Conflict as conflict:
        spool.discard(path)
        audit_ingest_refusal(source, conflict.why, action=Action.INSTANCE_CONFLICT)
        return IngestResult(
            IngestOutcome.CONFLICT,
            _MESSAGES[IngestOutcome.CONFLICT],
            parsed.sop_class_uid,
            parsed.sop_instance_uid,
        )
    except Exception:
        # The transaction rolled back; whatever was renamed into the spool is removed here or,
        # after a crash, by the sweeper. The sender was not told "stored".
        spool.discard(path)
        logger.exception("Storing a received instance failed")
        return _failed(parsed)


def _failed(parsed: ParsedInstance | None) -> IngestResult:
    return IngestResult(
        IngestOutcome.FAILED,
        _MESSAGES[IngestOutcome.FAILED],
        parsed.sop_class_uid if parsed else "",
        parsed.sop_instance_uid if parsed else "",
    )


def _index(parsed: ParsedInstance, path: Path, source: IngestSource, spool: Spool) -> IngestResult:
    spool_name = spool.new_spool_name()
    try:
        # Two senders racing with the same instance: the loser's insert fails on the unique
        # SOPInstanceUID, and the second attempt sees the winner's row and answers duplicate.
        try:
            return _index_once(parsed, path, source, spool, spool_name)
        except IntegrityError:
            source.transfer.forget()
            return _index_once(parsed, path, source, spool, spool_name)
    except BaseException:
        source.transfer.forget()
        # Rolled back, so there is no row: neither may there be a file. (A crash before this
        # line leaves a spooled file without a row, which is what the sweeper is for.)
        spool.discard(spool.path_of(spool_name))
        raise


@transaction.atomic
def _index_once(
    parsed: ParsedInstance, path: Path, source: IngestSource, spool: Spool, spool_name: str
) -> IngestResult:
    held = (
        Instance.objects.filter(sop_instance_uid=parsed.sop_instance_uid)
        .only("pk", "data_set_sha256", "study_id")
        .first()
    )
    if held is not None:
        # The data set decides: the same instance sent another way has other file meta.
        if held.data_set_sha256 != parsed.data_set_sha256:
            raise _Conflict("different_content")
        spool.discard(path)
        return IngestResult(
            IngestOutcome.DUPLICATE,
            _MESSAGES[IngestOutcome.DUPLICATE],
            parsed.sop_class_uid,
            parsed.sop_instance_uid,
            instance=held,
        )

    study = _study_for(parsed, source)
    series, series_created = _series_for(parsed, study, source)
    instance = Instance.objects.create(
        study=study,
        series=series,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        instance_number=parsed.instance_number,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        number_of_frames=parsed.number_of_frames,
        rows=parsed.rows,
        columns=parsed.columns,
        size_bytes=parsed.size_bytes,
        sha256=parsed.sha256,
        data_set_sha256=parsed.data_set_sha256,
        received_from=source.facility,
        spool_name=spool_name,
        spool_node=settings.PORTAL_NODE,
    )
    Series.objects.filter(pk=series.pk).update(
        number_of_instances=F("number_of_instances") + 1,
        size_bytes=F("size_bytes") + parsed.size_bytes,
    )
    Study.objects.filter(pk=study.pk).update(
        number_of_series=F("number_of_series") + int(series_created),
        number_of_instances=F("number_of_instances") + 1,
        size_bytes=F("size_bytes") + parsed.size_bytes,
        state=Study.State.RECEIVING,
    )
    if study.pk not in source.transfer.audited_study_ids:
        # One audit row per study per transfer, written with its first instance, as DICOM's
        # "Instances Transferred" event (DCM 110104) is. Each instance row keeps who sent it
        # (received_from) and when (received_at).
        _audit(source, Action.IMAGES_RECEIVED, study, target_kind=TargetKind.STUDY,
               target_id=study.pk, detail={"first_instance": instance.pk})  # fmt: skip
    # Last, so that everything that can fail has failed before the file moves.
    spool.keep(path, spool_name)
    source.transfer.remember(study, series)
    transaction.on_commit(
        lambda: instance_received.send(sender=Instance, instance_id=instance.pk), robust=True
    )
    return IngestResult(
        IngestOutcome.STORED,
        _MESSAGES[IngestOutcome.STORED],
        parsed.sop_class_uid,
        parsed.sop_instance_uid,
        instance=instance,
    )


def _study_for(parsed: ParsedInstance, source: IngestSource) -> Study:
    """The study this instance belongs to, created and matched to a patient the first time."""
    study = source.transfer.studies.get(parsed.study_instance_uid)
    if study is None:
        study = Study.objects.filter(study_instance_uid=parsed.study_instance_uid).first()
    received = parsed.patient
    if study is not None:
        issuer = received.issuer_of_patient_id or study.issuer_of_patient_id
        if (received.patient_id, issuer) != (study.patient_id_value, study.issuer_of_patient_id):
            # One study, two patients: the sender has mixed up its data; keep them apart.
            raise _Conflict("study_of_another_patient")
        if study.state == Study.State.SHREDDED:
            # Deleted at the end of retention or at the patient's request: a re-send must not
            # bring it back behind their back.
            raise _Conflict("study_deleted")
        return study

    issuer = received.issuer_of_patient_id or source.default_issuer
    study = Study(
        study_instance_uid=parsed.study_instance_uid,
        source_facility=source.facility,
        patient_name=received.name,
        patient_id_value=received.patient_id,
        issuer_of_patient_id=issuer,
        patient_birth_date=received.birth_date,
        patient_sex=received.sex,
        study_date=parsed.study.study_date,
        study_time=parsed.study.study_time,
        accession_number=parsed.study.accession_number[:16],
        referring_physician_name=parsed.study.referring_physician_name,
        study_id=parsed.study.study_id[:16],
        description=parsed.study.description[:64],
        available_until=retention_end(
            parsed.study.study_date,
            source.facility.retention_months,
            received_on=timezone.localdate(),
        ),
    )
    _match_patient(study, source)
    study.save()
    if study.match == Study.Match.PENDING:
        _audit(
            source,
            Action.STUDY_QUEUED_FOR_RECONCILIATION,
            study,
            target_kind=TargetKind.STUDY,
            target_id=study.pk,
            detail={"reason": study.match_reason},
        )
    return study


def retention_end(study_date: date | None, months: int, *, received_on: date) -> date:
    """The last day a study must stay available: `months` after the study, and never less than
    `months` after it reached the portal, so an old study brought in on a CD does not expire on
    arrival."""
    return add_months(max(study_date or received_on, received_on), months)


def add_months(day: date, months: int) -> date:
    """The same day `months` later, or that month's last day when it is shorter."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _match_patient(study: Study, source: IngestSource) -> None:
    """Attach a new study to its patient, or set it aside for a person.

    PatientID + issuer finds the identifier; a first-time identifier creates the patient; a
    known identifier whose name or birth date disagrees with what is on record sends the study
    to the reconciliation queue, where front-desk staff decide.
    """
    if not study.issuer_of_patient_id:
        study.match = Study.Match.PENDING
        study.match_reason = "Came on media: its patient ID has no issuer."
        study.candidate_patient = _likely_patient(study)
        return
    identifier = (
        PatientIdentifier.objects.select_related("patient")
        .filter(issuer=study.issuer_of_patient_id, value=study.patient_id_value)
        .first()
    )
    if identifier is None:
        patient = Patient.objects.create(
            name=study.patient_name, birth_date=study.patient_birth_date, sex=study.patient_sex
        )
        PatientIdentifier.objects.create(
            patient=patient,
            facility=source.facility,
            issuer=study.issuer_of_patient_id,
            value=study.patient_id_value,
        )
        _audit(source, Action.PATIENT_CREATED, None, target_kind=TargetKind.PATIENT,
               target_id=patient.pk, patient=patient)  # fmt: skip
        study.patient, study.match = patient, Study.Match.MATCHED
        return
    disagreement = demographics_disagreement(
        identifier.patient, name=study.patient_name, birth_date=study.patient_birth_date
    )
    if disagreement:
        study.match, study.match_reason = Study.Match.PENDING, disagreement
        study.candidate_patient = identifier.patient
    else:
        study.patient, study.match = identifier.patient, Study.Match.MATCHED


def demographics_disagreement(patient: Patient, *, name: str, birth_date: date | None) -> str:
    """Why a study's patient attributes do not fit `patient`, or "" when they do.

    Family and given names are compared without case, middle names or suffixes; an empty
    value on either side is not a disagreement (many senders leave them out).
    """
    reasons = []
    received_name, known_name = normalised_person_name(name), normalised_person_name(patient.name)
    if received_name and known_name and received_name != known_name:
        reasons.append("name")
    if birth_date and patient.birth_date and birth_date != patient.birth_date:
        reasons.append("birth date")
    if not reasons:
        return ""
    verb = "differ" if len(reasons) > 1 else "differs"
    return f"The {' and '.join(reasons)} {verb} from the patient on record."


def _likely_patient(study: Study) -> Patient | None:
    """The one patient with this exact name and birth date, offered to staff as a suggestion."""
    if not study.patient_name or study.patient_birth_date is None:
        return None
    wanted = normalised_person_name(study.patient_name)
    candidates = [
        patient
        for patient in Patient.objects.filter(birth_date=study.patient_birth_date)[:50]
        if normalised_person_name(patient.name) == wanted
    ]
    return candidates[0] if len(candidates) == 1 else None


def _series_for(parsed: ParsedInstance, study: Study, source: IngestSource) -> tuple[Series, bool]:
    series = source.transfer.series.get(parsed.series_instance_uid)
    if series is None:
        series = Series.objects.filter(series_instance_uid=parsed.series_instance_uid).first()
    if series is not None:
        if series.study_id != study.pk:
            raise _Conflict("series_of_another_study")
        return series, False
    received = parsed.series
    series = Series.objects.create(
        study=study,
        series_instance_uid=parsed.series_instance_uid,
        modality=received.modality[:16],
        series_number=received.series_number,
        description=received.description[:64],
        body_part=received.body_part[:16],
        performed_procedure_step_start_date=received.performed_procedure_step_start_date,
        performed_procedure_step_start_time=received.performed_procedure_step_start_time,
    )
    # From the series rows, not the (possibly cached) study, so modalities that another
    # transfer added meanwhile are kept.
    modalities = (
        Series.objects.filter(study=study).order_by("pk").values_list("modality", flat=True)
    )
    study.modalities_in_study = "\\".join(dict.fromkeys(m for m in modalities if m))
    Study.objects.filter(pk=study.pk).update(modalities_in_study=study.modalities_in_study)
    return series, True


def _audit(
    source: IngestSource,
    action: str,
    study: Study | None,
    *,
    target_kind: str,
    target_id: int,
    patient: Patient | None = None,
    outcome: str = Outcome.ALLOWED,
    detail: dict[str, str | int | bool | None] | None = None,
) -> None:
    audit_record(
        action=action,
        outcome=outcome,
        request=source.request,
        address=source.address,
        actor_kind=source.actor_kind,
        actor_id=source.actor_id,
        facility_id=source.facility.pk,
        target_kind=target_kind,
        target_id=target_id,
        patient_id=patient.pk if patient else (study.patient_id if study else None),
        study_id=study.pk if study else None,
        detail={"channel": source.channel.value, **(detail or {})},
    )


def audit_ingest_refusal(
    source: IngestSource, reason: str, *, action: str = Action.INSTANCE_REFUSED
) -> None:
    """Audit an instance refused before or during ingest: the way in and the reason, no names."""
    audit_record(
        action=action,
        outcome=Outcome.DENIED,
        request=source.request,
        address=source.address,
        actor_kind=source.actor_kind,
        actor_id=source.actor_id,
        facility_id=source.facility.pk,
        target_kind=TargetKind.INSTANCE,
        detail={"channel": source.channel.value, "reason": str(reason)},
    )


# --- The sweeper -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepReport:
    stale_incoming_removed: int
    orphans_removed: int


def spool_sweep(
    *, spool: Spool | None = None, older_than_seconds: int | None = None
) -> SweepReport:
    """Remove what a crash left in the spool: incoming files of transfers that never finished,
    and spooled files whose index row was never committed. Neither was acknowledged to its
    sender, so removing them loses nothing the sender does not still hold."""
    spool = spool or get_spool()
    grace = (
        settings.INGEST_SPOOL_ORPHAN_AFTER_SECONDS
        if older_than_seconds is None
        else older_than_seconds
    )
    stale = 0
    for path in spool.stale_incoming(older_than_seconds=grace):
        spool.discard(path)
        stale += 1
    orphans = 0
    batch: dict[str, Path] = {}
    for spool_name, path in spool.spooled_files(older_than_seconds=grace):
        batch[spool_name] = path
        if len(batch) >= 1000:
            orphans += _remove_orphans(spool, batch)
            batch = {}
    orphans += _remove_orphans(spool, batch)
    if stale or orphans:
        logger.warning("Spool sweep removed %d unfinished and %d unindexed files", stale, orphans)
    return SweepReport(stale_incoming_removed=stale, orphans_removed=orphans)


def _remove_orphans(spool: Spool, batch: dict[str, Path]) -> int:
    if not batch:
        return 0
    indexed = set(
        Instance.objects.filter(spool_name__in=batch).values_list("spool_name", flat=True)
    )
    removed = 0
    for spool_name, path in batch.items():
        if spool_name not in indexed:
            spool.discard(path)
            removed += 1
    return removed


# --- Reconciliation ----------------------------------------------------------------------------


def _audit_decision(
    *, action: str, study: Study, actor: User, request: HttpRequest | None, patient: Patient | None
) -> None:
    audit_record(
        action=action,
        request=request,
        actor_kind=ActorKind.USER,
        actor_id=actor.pk,
        facility_id=study.source_facility_id,
        target_kind=TargetKind.STUDY,
        target_id=study.pk,
        patient_id=patient.pk if patient else None,
        study_id=study.pk,
    )


def _lock_waiting_study(study: Study) -> Study:
    locked = Study.objects.select_for_update().get(pk=study.pk)
    if locked.match == Study.Match.MATCHED:
        raise ReconciliationError("This study has already been matched to a patient.")
    return locked


def _file_under(study: Study, patient: Patient) -> Study:
    study.patient, study.match = patient, Study.Match.MATCHED
    study.match_reason, study.candidate_patient = "", None
    study.save(
        update_fields=["patient", "match", "match_reason", "candidate_patient", "updated_at"]
    )
    return study


class ReconciliationError(Exception):
    """A decision that no longer applies (someone else decided first)."""


@transaction.atomic
def study_attach(
    *, study: Study, patient: Patient, actor: User, request: HttpRequest | None = None
) -> Study:
    """Front desk: this waiting study belongs to `patient`. The caller has checked that the
    actor may act for the study's facility and may see `patient`."""
    study = _file_under(_lock_waiting_study(study), patient)
    _audit_decision(
        action=Action.STUDY_ATTACHED, study=study, actor=actor, request=request, patient=patient
    )
    return study


@transaction.atomic
def study_split(*, study: Study, actor: User, request: HttpRequest | None = None) -> Patient:
    """Front desk: this waiting study is of someone the portal does not know yet; a new patient
    record is made from the study's own patient attributes. Its identifier is not claimed,
    because it already names another patient (or, from media, names no one reliably)."""
    study = _lock_waiting_study(study)
    patient = Patient.objects.create(
        name=study.patient_name, birth_date=study.patient_birth_date, sex=study.patient_sex
    )
    study = _file_under(study, patient)
    _audit_decision(
        action=Action.STUDY_SPLIT, study=study, actor=actor, request=request, patient=patient
    )
    return patient


@transaction.atomic
def study_hold(*, study: Study, actor: User, request: HttpRequest | None = None) -> Study:
    """Front desk: this study is not the suggested patient's. It stays unattached, shared with
    no one, until someone attaches it (for example after the sender corrects it)."""
    study = _lock_waiting_study(study)
    previous = study.candidate_patient
    study.match = Study.Match.HELD
    study.match_reason = "Marked as not this patient."
    study.candidate_patient = None
    study.save(update_fields=["match", "match_reason", "candidate_patient", "updated_at"])
    _audit_decision(
        action=Action.STUDY_HELD, study=study, actor=actor, request=request, patient=previous
    )
    return study
