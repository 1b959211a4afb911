"""FHIR R4 Consent export for facility staff: `GET fhir/Consent?patient=…` and
`GET fhir/Consent/<id>`. The mapping itself is `consent.fhir`.

Who may read: a signed-in person with a role at a facility that knows the patient (the
patient has an identifier issued through it or a study it holds:
`studies.access.patients_visible_to_facility`), whatever the role, because every role there
may need to know what the patient allowed. A patient (or anyone else without a membership)
gets 403. Platform admins hold no membership and get 403 too: like studies, consents are read
through a facility, and platform admins review them through the audit log instead. A patient
or grant no facility of the caller knows is 404, the same answer as one that does not exist.

Every answer is `application/fhir+json`; errors are OperationOutcomes. Each export is audited
(allowed, with how many resources) and so is each refusal of a patient or grant (denied), so a
staff member probing other facilities' patients shows in the log.

Search parameters: `patient` as `Patient/<public id>` or the bare public id, or
`patient.identifier=<issuer>|<value>` (the chained search on the patient's identifier, whose
system is the IssuerOfPatientID here); exactly one of them. Other parameters are ignored, as
FHIR allows a server to do, and the Bundle's self link shows only those that were applied. A
patient's grants fit on one page, so there is no paging.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from accounts.models import User
from accounts.policies import ROLE, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import audit_record
from consent.fhir import (
    FHIR_JSON,
    GrantContext,
    SignedSource,
    consent_resource,
    operation_outcome,
)
from consent.fhir import searchset_bundle as make_bundle
from consent.models import ConsentGrant
from facilities.models import Facility
from studies.access import patients_visible_to_facility
from studies.models import Patient, PatientIdentifier, Study

SEARCH_PARAMETERS = ("patient", "patient.identifier")


class FHIRError(Exception):
    """An answer other than success: HTTP status, IssueType code and words for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def fhir_response(body: dict[str, Any], *, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def fhir_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """GET (and HEAD) only, never cached, errors as OperationOutcome."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = fhir_response(
                operation_outcome("not-supported", "This FHIR endpoint only answers GET."),
                status=405,
            )
            response["Allow"] = "GET, HEAD"
            return response
        try:
            return view(request, *args, **kwargs)
        except FHIRError as error:
            return fhir_response(operation_outcome(error.code, error.message), status=error.status)

    return wrapper


# --- Who may see what -----------------------------------------------------------------------


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def _member_facilities(user: User) -> list[Facility]:
    facilities = list(Facility.objects.filter(memberships__user=user).order_by("name"))
    if not facilities:
        raise FHIRError(403, "forbidden", "Only facility staff may export consents.")
    return facilities


def _visible_patient(facilities: list[Facility], **lookup: Any) -> tuple[Patient, Facility] | None:
    """The patient matching `lookup` if a facility of the caller knows them, with that facility
    (the first by name), which the audit row names as the one acted for."""
    for facility in facilities:
        found = patients_visible_to_facility(facility).filter(**lookup).first()
        if found is not None:
            return found, facility
    return None


def _refuse(
    request: HttpRequest, *, target_kind: str, target_id: str, patient_id: int | None, what: str
) -> FHIRError:
    audit_record(
        action=Action.CONSENT_EXPORTED,
        outcome=Outcome.DENIED,
        request=request,
        target_kind=target_kind,
        target_id=target_id,
        patient_id=patient_id,
        detail={"format": "fhir"},
    )
    return FHIRError(404, "not-found", f"No such {what}.")


# --- Views ----------------------------------------------------------------------------------


@policy(ROLE)
@never_cache
@fhir_view
def consent_search(request: HttpRequest) -> HttpResponse:
    facilities = _member_facilities(_user(request))
    parameter, lookup, value = _patient_parameter(request)
    visible = _visible_patient(facilities, **lookup)
    if visible is None:
        existing = Patient.objects.filter(**lookup).values_list("pk", flat=True).first()
        raise _refuse(
            request,
            target_kind=TargetKind.PATIENT,
            target_id=str(existing or ""),
            patient_id=existing,
            what="patient",
        )
    patient, facility = visible
    grants = list(_grants(ConsentGrant.objects.filter(patient=patient)))
    now = timezone.now()
    base = _base_url(request)
    custodians = _custodians(patient)
    bundle = make_bundle(
        (
            (_full_url(request, grant), _resource(grant, custodians, base=base, now=now))
            for grant in grants
        ),
        self_url=request.build_absolute_uri(reverse("fhir:consent-search"))
        + "?"
        + urlencode({parameter: value}),
        now=now,
    )
    audit_record(
        action=Action.CONSENT_EXPORTED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.PATIENT,
        target_id=patient.pk,
        patient_id=patient.pk,
        detail={"format": "fhir", "interaction": "search", "resources": len(grants)},
    )
    return fhir_response(bundle)


@policy(ROLE)
@never_cache
@fhir_view
def consent_read(request: HttpRequest, consent_id: str) -> HttpResponse:
    facilities = _member_facilities(_user(request))
    try:
        public_id = uuid.UUID(consent_id)
    except ValueError:
        raise FHIRError(404, "not-found", "No such consent.") from None
    grant = _grants(ConsentGrant.objects.filter(public_id=public_id)).first()
    visible = _visible_patient(facilities, pk=grant.patient_id) if grant is not None else None
    if grant is None or visible is None:
        raise _refuse(
            request,
            target_kind=TargetKind.GRANT,
            target_id=str(grant.pk if grant else ""),
            patient_id=grant.patient_id if grant else None,
            what="consent",
        )
    patient, facility = visible
    resource = _resource(grant, _custodians(patient), base=_base_url(request), now=timezone.now())
    audit_record(
        action=Action.CONSENT_EXPORTED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.GRANT,
        target_id=grant.pk,
        patient_id=patient.pk,
        purpose=grant.purpose,
        detail={"format": "fhir", "interaction": "read", "resources": 1},
    )
    return fhir_response(resource)


# --- Parts ----------------------------------------------------------------------------------


def _patient_parameter(request: HttpRequest) -> tuple[str, dict[str, Any], str]:
    """The one patient parameter given: its name, a Patient lookup, and its value as applied."""
    given = [name for name in SEARCH_PARAMETERS if name in request.GET]
    if len(given) != 1:
        raise FHIRError(
            400,
            "required" if not given else "invalid",
            "Search by exactly one of `patient` (Patient/<id>) or "
            "`patient.identifier` (<issuer>|<value>).",
        )
    name = given[0]
    values = request.GET.getlist(name)
    if len(values) != 1 or "," in values[0]:
        raise FHIRError(400, "invalid", f"Give one `{name}` value: one patient at a time.")
    value = values[0].strip()
    if name == "patient":
        reference = value.removeprefix("Patient/")
        try:
            public_id = uuid.UUID(reference)
        except ValueError:
            raise FHIRError(
                400, "invalid", "`patient` must be Patient/<id> or the id, a UUID."
            ) from None
        return name, {"public_id": public_id}, f"Patient/{public_id}"
    issuer, bar, identifier = value.partition("|")
    if not bar or not issuer or not identifier:
        raise FHIRError(
            400,
            "invalid",
            "`patient.identifier` must be <issuer>|<value>: a patient ID is only unique "
            "within its issuer.",
        )
    return (
        name,
        {"identifiers__issuer": issuer, "identifiers__value": identifier},
        f"{issuer}|{identifier}",
    )


def _grants(grants: QuerySet[ConsentGrant]) -> QuerySet[ConsentGrant]:
    return grants.select_related(
        "patient", "grantee_facility", "withdrawal", "replaces", "authorization__facility"
    ).prefetch_related("studies")


def _custodians(patient: Patient) -> list[Facility]:
    """The originating facilities: those holding the patient's studies or identifiers."""
    ids = set(
        PatientIdentifier.objects.filter(patient=patient).values_list("facility_id", flat=True)
    )
    ids |= set(Study.objects.filter(patient=patient).values_list("source_facility_id", flat=True))
    return list(Facility.objects.filter(pk__in=ids))


def _resource(
    grant: ConsentGrant, custodians: list[Facility], *, base: str, now: datetime
) -> dict[str, Any]:
    studies = sorted(grant.studies.all(), key=lambda s: (s.study_date is None, s.study_date, s.pk))
    signed_source = None
    authorization = grant.authorization
    if authorization is not None:
        custodians = [*custodians, authorization.facility]
        signed_source = SignedSource(
            title=f"Signed authorization ({authorization.get_method_display().lower()})",
            created=authorization.signed_at,
            size=authorization.pdf_size,
        )
    context = GrantContext(custodians=custodians, studies=studies, signed_source=signed_source)
    return consent_resource(grant, context, base=base, now=now)


def _base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("fhir:consent-search")).removesuffix("Consent")


def _full_url(request: HttpRequest, grant: ConsentGrant) -> str:
    return request.build_absolute_uri(
        reverse("fhir:consent-read", kwargs={"consent_id": str(grant.public_id)})
    )
