"""Reads the patient's consent page shares: their grants, what each covers, and their history.

Nothing here writes. Whether a grant is in force comes from `services.is_in_force`, and which
studies it covers from `decision.in_scope`, so the page says what the access decision does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from accounts.models import User
from consent.decision import in_scope
from consent.models import DEIDENTIFIED_PURPOSES, ConsentGrant, ConsentWithdrawal, Purpose
from consent.services import ConsentError, GrantRequest, is_in_force, patient_studies
from facilities.models import Facility
from studies.models import Patient, Study

# Column headings of the page's grid, short enough for six columns side by side.
PURPOSE_SHORT_LABELS = {
    Purpose.TREATMENT: "Treatment",
    Purpose.SECOND_OPINION: "Second opinion",
    Purpose.TRANSFER_OF_CARE: "Transfer of care",
    Purpose.EMERGENCY: "Emergency",
    Purpose.RESEARCH: "Research",
    Purpose.EDUCATION: "Education",
}


def grants_for_patient(patient: Patient) -> QuerySet[ConsentGrant]:
    """Every grant of the patient, newest first, with what the page shows of each."""
    return (
        ConsentGrant.objects.filter(patient=patient)
        .select_related(
            "grantee_facility", "created_by", "withdrawal", "withdrawal__withdrawn_by", "replaces"
        )
        .prefetch_related(Prefetch("studies", queryset=Study.objects.order_by("-study_date")))
    )


def get_grant_for_patient(patient: Patient, public_id: str | uuid.UUID) -> ConsentGrant | None:
    """One of the patient's own grants; None for a grant of anyone else or no grant at all."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return grants_for_patient(patient).filter(public_id=public_id).first()


def own_studies_by_public_id(patient: Patient, public_ids: Iterable[str]) -> list[Study] | None:
    """The patient's studies with these ids, or None when any id is malformed or names a study
    that is not theirs (the caller answers 404: a stranger cannot tell such a study exists)."""
    wanted: set[uuid.UUID] = set()
    for value in public_ids:
        try:
            wanted.add(uuid.UUID(str(value)))
        except ValueError:
            return None
    found = list(patient_studies(patient).filter(public_id__in=wanted).order_by("-study_date"))
    return found if len(found) == len(wanted) else None


def grant_facilities() -> QuerySet[Facility]:
    """The directory a patient picks a grantee from: every facility on the portal."""
    return Facility.objects.order_by("name")


def studies_covered(grant: ConsentGrant, studies: Sequence[Study]) -> list[Study]:
    """Which of the patient's current studies the grant covers (for ALL, also future ones)."""
    if grant.scope == ConsentGrant.Scope.CHOSEN and grant.pk is not None:
        chosen = {study.pk for study in grant.studies.all()}  # prefetched by grants_for_patient
        return [study for study in studies if study.pk in chosen]
    return [study for study in studies if in_scope(grant, study)]


def _recorded_by(user: User, viewer: User) -> str:
    if user.pk == viewer.pk:
        return "You"
    return user.get_full_name() or user.email


# --- The consent page ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantSummary:
    """One grant as the patient reads it."""

    grant: ConsentGrant
    grantee: str
    studies: list[Study]
    in_force: bool
    status: str  # "in force", "withdrawn", "ended", "changed"

    @property
    def covers_future(self) -> bool:
        return self.grant.scope != ConsentGrant.Scope.CHOSEN

    @property
    def last_day(self) -> date:
        """The last day in force: valid_until is the midnight after it."""
        return grant_last_day(self.grant)


@dataclass(frozen=True)
class GridCell:
    purpose: str
    label: str
    grants: list[GrantSummary]


@dataclass(frozen=True)
class GridRow:
    grantee: str
    cells: list[GridCell]


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str  # "granted", "changed", "withdrawn", "ended"
    title: str
    who: str
    why: str
    grant: ConsentGrant


@dataclass
class ConsentOverview:
    purposes: list[tuple[str, str]]
    grid: list[GridRow] = field(default_factory=list)
    in_force: list[GrantSummary] = field(default_factory=list)
    past: list[GrantSummary] = field(default_factory=list)
    timeline: list[TimelineEvent] = field(default_factory=list)
    study_count: int = 0


def grant_last_day(grant: ConsentGrant) -> date:
    """The last day a grant is in force: its period ends at the midnight after it."""
    return (timezone.localtime(grant.valid_until) - timedelta(microseconds=1)).date()


def grantee_name(grant: ConsentGrant) -> str:
    if grant.grantee_facility is not None:
        return grant.grantee_facility.name
    return grant.grantee_email


def summarize_grant(grant: ConsentGrant, studies: Sequence[Study], now: datetime) -> GrantSummary:
    withdrawal = getattr(grant, "withdrawal", None)
    if is_in_force(grant, now):
        status = "in force"
    elif withdrawal is not None and withdrawal.reason == "changed":
        status = "changed"
    elif withdrawal is not None and withdrawal.withdrawn_at <= now:
        status = "withdrawn"
    else:
        status = "ended"
    return GrantSummary(
        grant=grant,
        grantee=grantee_name(grant),
        studies=studies_covered(grant, studies),
        in_force=status == "in force",
        status=status,
    )


def consent_overview(patient: Patient, *, viewer: User, now: datetime) -> ConsentOverview:
    """The patient's consent page: who may see what, for which purpose, and the history."""
    studies = list(patient_studies(patient).order_by("-study_date", "-received_at"))
    grants = list(grants_for_patient(patient))
    summaries = [summarize_grant(grant, studies, now) for grant in grants]
    overview = ConsentOverview(
        purposes=[(value, PURPOSE_SHORT_LABELS[Purpose(value)]) for value in Purpose.values],
        study_count=len(studies),
    )
    overview.in_force = [s for s in summaries if s.in_force]
    overview.past = [s for s in summaries if not s.in_force]

    grantees = sorted({s.grantee for s in overview.in_force}, key=str.lower)
    for grantee in grantees:
        cells = [
            GridCell(
                purpose=value,
                label=label,
                grants=[
                    s
                    for s in overview.in_force
                    if s.grantee == grantee and s.grant.purpose == value
                ],
            )
            for value, label in Purpose.choices
        ]
        overview.grid.append(GridRow(grantee=grantee, cells=cells))

    overview.timeline = _timeline(grants, viewer=viewer, now=now)
    return overview


def _timeline(
    grants: Sequence[ConsentGrant], *, viewer: User, now: datetime
) -> list[TimelineEvent]:
    events: list[TimelineEvent] = []
    for grant in grants:
        grantee = grantee_name(grant)
        purpose = grant.get_purpose_display().lower()
        if grant.replaces_id is not None:
            kind, verb = "changed", "Changed consent"
        else:
            kind, verb = "granted", "Gave consent"
        source = (
            ""
            if grant.source == ConsentGrant.Source.PATIENT_ONLINE
            else " (" + grant.get_source_display().lower() + ")"
        )
        events.append(
            TimelineEvent(
                at=grant.created_at,
                kind=kind,
                title=f"{verb}: {grantee}, for {purpose}",
                who=_recorded_by(grant.created_by, viewer) + source,
                why=grant.get_scope_display()
                + f", until {grant_last_day(grant):%d %B %Y}"
                + (", de-identified" if grant.deidentify else ""),
                grant=grant,
            )
        )
        withdrawal: ConsentWithdrawal | None = getattr(grant, "withdrawal", None)
        if withdrawal is not None and withdrawal.reason != "changed":
            events.append(
                TimelineEvent(
                    at=withdrawal.withdrawn_at,
                    kind="withdrawn",
                    title=f"Withdrew consent: {grantee}, for {purpose}",
                    who=_recorded_by(withdrawal.withdrawn_by, viewer),
                    why=withdrawal.reason or "No reason given",
                    grant=grant,
                )
            )
        elif withdrawal is None and grant.valid_until <= now:
            events.append(
                TimelineEvent(
                    at=grant.valid_until,
                    kind="ended",
                    title=f"Consent ended: {grantee}, for {purpose}",
                    who="The portal",
                    why="Its period was over",
                    grant=grant,
                )
            )
    events.sort(key=lambda event: (event.at, event.kind != "withdrawn"), reverse=True)
    return events


# --- Before granting: what the grant would cover and until when ---------------------------------


@dataclass(frozen=True)
class GrantPreview:
    grantee: str
    purpose_label: str
    scope: str
    studies: list[Study]
    last_day: date
    deidentify: bool


def grant_preview(wanted: GrantRequest, *, now: datetime) -> GrantPreview:
    """What `grant_consent(wanted)` would record, read without writing, for the confirmation
    the patient sees before granting. The service checks everything again when it records;
    where it disagrees, its message is what the patient reads."""
    from consent.services import _period_end  # one rule for the period, the service's

    draft = ConsentGrant(
        patient=wanted.patient,
        grantee_facility=wanted.grantee_facility,
        grantee_email=wanted.grantee_email,
        purpose=wanted.purpose,
        scope=wanted.scope,
        rule_modalities="\\".join(sorted({m.strip().upper() for m in wanted.rule_modalities})),
        rule_date_from=wanted.rule_date_from,
        rule_date_to=wanted.rule_date_to,
    )
    if wanted.scope == ConsentGrant.Scope.CHOSEN:
        covered = list(wanted.studies)
    else:
        covered = [study for study in patient_studies(wanted.patient) if in_scope(draft, study)]
        if not covered and wanted.scope == ConsentGrant.Scope.RULES:
            raise ConsentError("No study matches what you chose.")
    end = _period_end(wanted.valid_until, covered, now)
    draft.valid_until = end
    return GrantPreview(
        grantee=grantee_name(draft),
        purpose_label=draft.get_purpose_display(),
        scope=wanted.scope,
        studies=sorted(covered, key=_newest_first, reverse=True),
        last_day=grant_last_day(draft),
        deidentify=wanted.deidentify or wanted.purpose in DEIDENTIFIED_PURPOSES,
    )


def _newest_first(study: Study) -> tuple[bool, date]:
    return (study.study_date is not None, study.study_date or date.min)
