"""Who may read study data through the portal's pages, resolved once per request.

Every page, frame and download of study data (the thumbnail, the viewer, the zip download)
works from a `ReadAccess`: who reads (for the audit log) and `allows`, which asks the one
access decision (`consent.decision.decide`) again at the moment it is called. Views ask it
before serving anything, and streams ask it before every segment, so a withdrawal committed
a moment ago stops the next frame and the rest of a download.

Two ways to get one: a signed-in person (`signed_in_access`: the patient, or staff for a
facility) and a verified share-link session (`sharing.links`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils import timezone

from accounts.models import User
from audit.codes import ActorKind, PurposeOfUse
from consent.decision import Actor, FacilityActor, PatientActor, decide
from facilities.models import Membership
from sharing.services import Reader
from studies.access import get_patient_for_user
from studies.models import Study


@dataclass(frozen=True)
class ReadAccess:
    reader: Reader
    allows: Callable[[Study], bool]

    def still_allowed(self, study: Study) -> Callable[[], bool]:
        """For `read_instance(still_allowed=...)`: the decision, asked again per segment."""
        return lambda: self.allows(study)


def actor_access(actor: Actor, purpose: str, reader: Reader) -> ReadAccess:
    """Access that asks `decide(actor, study, purpose, now)` every time it is used."""
    return ReadAccess(reader, lambda study: bool(decide(actor, study, purpose, timezone.now())))


def signed_in_access(request: HttpRequest, study: Study) -> ReadAccess | None:
    """The first way the signed-in person may read the study: as its patient, or for one of
    their facilities (for treatment); None when none is allowed."""
    user: User = request.user  # type: ignore[assignment]
    now = timezone.now()
    patient = get_patient_for_user(user)
    if patient is not None:
        actor: Actor = PatientActor(patient.pk)
        if decide(actor, study, PurposeOfUse.PATIENT_REQUEST, now):
            reader = Reader(ActorKind.USER, user.pk, request, purpose=PurposeOfUse.PATIENT_REQUEST)
            return actor_access(actor, PurposeOfUse.PATIENT_REQUEST, reader)
    for facility_id in Membership.objects.filter(user=user).values_list("facility_id", flat=True):
        actor = FacilityActor(facility_id)
        if decide(actor, study, PurposeOfUse.TREATMENT, now):
            reader = Reader(ActorKind.USER, user.pk, request, facility_id, PurposeOfUse.TREATMENT)
            return actor_access(actor, PurposeOfUse.TREATMENT, reader)
    return None


class AccessResolver(Protocol):
    """How a route of the viewer or the download finds who may read `study` in this request:
    a ReadAccess to go on, None for "not found" (audited by the caller), or a response to send
    as it is (a share link's "prove your e-mail address" page). `route` holds the URL's other
    arguments (a share link's id)."""

    def __call__(
        self, request: HttpRequest, study: Study, /, **route: Any
    ) -> ReadAccess | HttpResponseBase | None: ...


def signed_in_resolver(request: HttpRequest, study: Study, /, **route: Any) -> ReadAccess | None:
    return signed_in_access(request, study)
