"""Writing the consent ledger: granting, withdrawing and changing consent, each audited.

Rows are only ever added. Withdrawing takes the grant's row lock, so two withdrawals racing each
other (a patient online and the front desk) leave exactly one withdrawal, and a change racing a
withdrawal either replaces a grant still in force or is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, TargetKind
from audit.services import audit_record
from consent.decision import in_scope
from consent.models import DEIDENTIFIED_PURPOSES, ConsentGrant, ConsentWithdrawal, Purpose
from facilities.models import Facility
from studies.models import Patient, Study
from studies.services import add_months

# The shortest period a grant may have, and the default: 12 months from the latest study.
MINIMUM_MONTHS = 12
REASON_MAX_LENGTH = 200


class ConsentError(Exception):
    """A grant or withdrawal that cannot be made; the message says why in plain words."""


@dataclass(frozen=True)
class GrantRequest:
    """What a patient (or staff for them) asks for. Exactly one grantee."""

    patient: Patient
    purpose: str
    scope: str
    grantee_facility: Facility | None = None
    grantee_email: str = ""
    studies: Sequence[Study] = ()
    rule_modalities: Sequence[str] = ()
    rule_date_from: date | None = None
    rule_date_to: date | None = None
    valid_until: date | None = None  # None: the default period
    deidentify: bool = False
    source: str = ConsentGrant.Source.PATIENT_ONLINE


def patient_studies(patient: Patient) -> QuerySet[Study]:
    return Study.objects.filter(patient=patient).exclude(state=Study.State.SHREDDED)


def grant_consent(
    wanted: GrantRequest, *, by: User, request: HttpRequest | None = None
) -> ConsentGrant:
    """Record a new grant, in force from now until the end of its period."""
    now = timezone.now()
    with transaction.atomic():
        grant = _new_grant(wanted, by=by, now=now)
        audit_record(
            action=Action.GRANT_CREATED,
            request=request,
            facility_id=wanted.grantee_facility.pk if wanted.grantee_facility else None,
            target_kind=TargetKind.GRANT,
            target_id=grant.pk,
            patient_id=wanted.patient.pk,
            purpose=wanted.purpose,
            detail={"scope": grant.scope, "source": grant.source, "until": str(grant.valid_until)},
        )
    return grant


def withdraw_consent(
    grant: ConsentGrant, *, by: User, reason: str = "", request: HttpRequest | None = None
) -> ConsentWithdrawal:
    """End a grant now. Withdrawing a grant already withdrawn returns that withdrawal."""
    with transaction.atomic():
        locked = ConsentGrant.objects.select_for_update().get(pk=grant.pk)
        existing = ConsentWithdrawal.objects.filter(grant=locked).first()
        if existing is not None:
            return existing
        withdrawal = ConsentWithdrawal.objects.create(
            grant=locked,
            withdrawn_at=timezone.now(),
            withdrawn_by=by,
            reason=reason.strip()[:REASON_MAX_LENGTH],
        )
        audit_record(
            action=Action.GRANT_WITHDRAWN,
            request=request,
            facility_id=locked.grantee_facility_id,
            target_kind=TargetKind.GRANT,
            target_id=locked.pk,
            patient_id=locked.patient_id,
            purpose=locked.purpose,
        )
    return withdrawal


def change_consent(
    grant: ConsentGrant, wanted: GrantRequest, *, by: User, request: HttpRequest | None = None
) -> ConsentGrant:
    """Replace a grant in force by another: a withdrawal of the old and a new grant pointing at
    it, in one transaction, so there is no moment with neither or both."""
    with transaction.atomic():
        locked = ConsentGrant.objects.select_for_update().get(pk=grant.pk)
        if ConsentWithdrawal.objects.filter(grant=locked).exists():
            raise ConsentError("This consent was already withdrawn; give a new one instead.")
        if wanted.patient.pk != locked.patient_id:
            raise ConsentError("A consent can only be changed for its own patient.")
        withdraw_consent(locked, by=by, reason="changed", request=request)
        new = grant_consent(wanted, by=by, request=request)
        ConsentGrant.objects.filter(pk=new.pk).update(replaces=locked)
        new.replaces = locked
    return new


def is_in_force(grant: ConsentGrant, at: datetime) -> bool:
    withdrawal = getattr(grant, "withdrawal", None)
    if withdrawal is not None and withdrawal.withdrawn_at <= at:
        return False
    return grant.valid_from <= at < grant.valid_until


# --- Checking what is asked for ---------------------------------------------------------------


def _new_grant(wanted: GrantRequest, *, by: User, now: datetime) -> ConsentGrant:
    if wanted.purpose not in Purpose.values:
        raise ConsentError("Choose what the images may be used for.")
    if wanted.scope not in ConsentGrant.Scope.values:
        raise ConsentError("Choose which studies the consent covers.")
    if (wanted.grantee_facility is None) == (not wanted.grantee_email):
        raise ConsentError("Choose one facility, or one clinician's e-mail address.")
    own = patient_studies(wanted.patient)
    chosen = list(wanted.studies)
    if wanted.scope == ConsentGrant.Scope.CHOSEN:
        if not chosen:
            raise ConsentError("Choose at least one study.")
        if len({study.pk for study in chosen} - set(own.values_list("pk", flat=True))):
            raise ConsentError("Choose among your own studies.")
    if (
        wanted.rule_date_from
        and wanted.rule_date_to
        and wanted.rule_date_from > wanted.rule_date_to
    ):
        raise ConsentError("The date range ends before it starts.")
    grant = ConsentGrant(
        patient=wanted.patient,
        grantee_facility=wanted.grantee_facility,
        grantee_email=wanted.grantee_email.strip().lower(),
        purpose=wanted.purpose,
        scope=wanted.scope,
        rule_modalities="\\".join(sorted({m.strip().upper() for m in wanted.rule_modalities})),
        rule_date_from=wanted.rule_date_from if wanted.scope == ConsentGrant.Scope.RULES else None,
        rule_date_to=wanted.rule_date_to if wanted.scope == ConsentGrant.Scope.RULES else None,
        source=wanted.source,
        deidentify=wanted.deidentify or wanted.purpose in DEIDENTIFIED_PURPOSES,
        valid_from=now,
        valid_until=now,  # set below, from the studies in scope
        created_by=by,
    )
    if grant.scope != ConsentGrant.Scope.RULES:
        grant.rule_modalities = ""
    in_scope_now = chosen if grant.scope == ConsentGrant.Scope.CHOSEN else [
        study for study in own if in_scope(grant, study)
    ]  # fmt: skip
    if not in_scope_now and grant.scope != ConsentGrant.Scope.ALL:
        raise ConsentError("No study matches what you chose.")
    grant.valid_until = _period_end(wanted.valid_until, in_scope_now, now)
    grant.save()
    if chosen:
        grant.studies.set(chosen)
    return grant


def _period_end(asked: date | None, studies: Iterable[Study], now: datetime) -> datetime:
    """The end of the grant: what was asked for, never before 12 months after the latest
    study in scope nor before those studies' own availability ends."""
    studies = list(studies)
    latest = max((s.study_date or s.received_at.date() for s in studies), default=now.date())
    floor = max([add_months(latest, MINIMUM_MONTHS)] + [s.available_until for s in studies])
    if asked is not None and asked <= now.date():
        raise ConsentError("The end date must be in the future.")
    if asked is not None and asked < floor:
        raise ConsentError(
            f"The consent must last at least until {floor:%d %B %Y}, 12 months after the "
            "latest study it covers."
        )
    # In force through the whole last day.
    end = datetime.combine(asked or floor, time.min, tzinfo=timezone.get_current_timezone())
    return end + timedelta(days=1)
