"""The one access decision: may this actor, for this purpose, now, read this study?

Everything that serves study data (share links, DICOMweb, downloads, the viewer, the patient's
own pages) calls `decide` at request time, and streams call it again while they run. There is
no cache: a withdrawal committed a moment ago is seen by the next call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from consent.models import ConsentGrant
from studies.models import Study


@dataclass(frozen=True)
class PatientActor:
    """The patient, signed in: their own studies, whatever the purpose."""

    patient_id: int


@dataclass(frozen=True)
class FacilityActor:
    """Staff or an API token acting for a facility. The originating facility reads what it
    holds; any other facility needs a grant in force for the purpose."""

    facility_id: int


@dataclass(frozen=True)
class LinkActor:
    """A share link: the grant it was made under, and the studies it names."""

    grant_id: int
    study_ids: frozenset[int]


Actor = PatientActor | FacilityActor | LinkActor


class Reason(enum.StrEnum):
    OWN_STUDY = "own_study"
    ORIGINATING_FACILITY = "originating_facility"
    GRANT = "grant"
    # Denials, most specific first when several grants could have applied.
    STUDY_DELETED = "study_deleted"
    PAST_RETENTION = "past_retention"
    NOT_AVAILABLE = "not_available"
    UNMATCHED = "unmatched"
    NOT_YOURS = "not_yours"
    NO_GRANT = "no_grant"
    WRONG_PURPOSE = "wrong_purpose"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    grant_id: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


def decide(actor: Actor, study: Study, purpose: str, at: datetime) -> Decision:
    """Allowed or denied, with the reason; `at` is now for every caller but tests."""
    if study.state == Study.State.SHREDDED:
        return Decision(False, Reason.STUDY_DELETED)
    if isinstance(actor, FacilityActor) and actor.facility_id == study.source_facility_id:
        # The facility that sent the study keeps reading what it holds, matched or not.
        return Decision(True, Reason.ORIGINATING_FACILITY)
    if study.available_until < at.date() and not study.legal_hold:
        return Decision(False, Reason.PAST_RETENTION)
    if study.patient_id is None:
        return Decision(False, Reason.UNMATCHED)
    if isinstance(actor, PatientActor):
        if actor.patient_id == study.patient_id:
            return Decision(True, Reason.OWN_STUDY)
        return Decision(False, Reason.NOT_YOURS)
    if study.state != Study.State.AVAILABLE:
        return Decision(False, Reason.NOT_AVAILABLE)
    if isinstance(actor, LinkActor):
        grants = list(
            ConsentGrant.objects.select_related("withdrawal").filter(
                pk=actor.grant_id, patient_id=study.patient_id
            )
        )
        if study.pk not in actor.study_ids:
            return Decision(False, Reason.OUT_OF_SCOPE)
    else:
        grants = list(
            ConsentGrant.objects.select_related("withdrawal").filter(
                patient_id=study.patient_id, grantee_facility_id=actor.facility_id
            )
        )
    return _decide_by_grants(grants, study, purpose, at)


def _decide_by_grants(
    grants: list[ConsentGrant], study: Study, purpose: str, at: datetime
) -> Decision:
    if not grants:
        return Decision(False, Reason.NO_GRANT)
    denials: list[Reason] = []
    for grant in grants:
        reason = _grant_refuses(grant, study, purpose, at)
        if reason is None:
            return Decision(True, Reason.GRANT, grant.pk)
        denials.append(reason)
    # Say what came closest: a grant for the right purpose that was withdrawn or ran out says
    # more to the person asking than "no grant".
    return Decision(False, max(denials, key=_DENIAL_ORDER.index))


_DENIAL_ORDER = [
    Reason.WRONG_PURPOSE,
    Reason.NOT_YET_VALID,
    Reason.EXPIRED,
    Reason.WITHDRAWN,
    Reason.OUT_OF_SCOPE,
]


def _grant_refuses(grant: ConsentGrant, study: Study, purpose: str, at: datetime) -> Reason | None:
    if grant.purpose != purpose:
        return Reason.WRONG_PURPOSE
    withdrawal = getattr(grant, "withdrawal", None)
    if withdrawal is not None and withdrawal.withdrawn_at <= at:
        return Reason.WITHDRAWN
    if at < grant.valid_from:
        return Reason.NOT_YET_VALID
    if at >= grant.valid_until:
        return Reason.EXPIRED
    if not in_scope(grant, study):
        return Reason.OUT_OF_SCOPE
    return None


def in_scope(grant: ConsentGrant, study: Study) -> bool:
    """Whether a grant covers a study of its patient (its own studies only, never others')."""
    if study.patient_id != grant.patient_id:
        return False
    if grant.scope == ConsentGrant.Scope.ALL:
        return True
    if grant.scope == ConsentGrant.Scope.CHOSEN:
        return grant.studies.filter(pk=study.pk).exists()
    if grant.modalities and not set(grant.modalities) & set(study.modalities):
        return False
    if study.study_date is None:
        return not (grant.rule_date_from or grant.rule_date_to)
    if grant.rule_date_from and study.study_date < grant.rule_date_from:
        return False
    return not (grant.rule_date_to and study.study_date > grant.rule_date_to)
