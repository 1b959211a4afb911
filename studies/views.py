"""The reconciliation queue: front-desk staff match studies the portal could not match itself.

A study waits here when its patient ID is known but the name or birth date differ from the
patient on record, or when it came on media without an issuer for its patient ID. Staff can
attach it to a patient, split it off to a new patient record, or mark it as not the suggested
patient; a held study stays unshared until someone attaches it. Every decision is audited by
its service. Every view starts with an access helper that puts the membership in the query.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from accounts.policies import ROLE, policy
from studies import selectors, services
from studies.access import (
    get_patient_for_facility,
    get_waiting_study_for_user,
    reconciling_facilities,
)
from studies.models import Study


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def waiting_study_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Look the study up with the user's membership in the query before anything else, so a
    stranger gets 404 and another role 403 whatever the method; the view gets the study."""

    @wraps(view)
    def wrapper(request: HttpRequest, study_id: str) -> HttpResponse:
        return view(request, get_waiting_study_for_user(_user(request), study_id))

    return wrapper


@policy(ROLE)
@require_GET
def reconciliation(request: HttpRequest) -> HttpResponse:
    facilities = reconciling_facilities(_user(request))
    if not facilities.exists():
        raise PermissionDenied("Your role does not match studies to patients")
    pending = selectors.studies_waiting_for_a_person(facilities)
    held = selectors.studies_waiting_for_a_person(facilities, match=Study.Match.HELD)
    return render(
        request,
        "studies/reconciliation.html",
        {"pending": pending, "held": held, "facilities": facilities},
    )


@policy(ROLE)
@waiting_study_view
@require_GET
def reconciliation_study(request: HttpRequest, study: Study) -> HttpResponse:
    query = request.GET.get("q", "")[:100]
    candidates = selectors.patient_search(study.source_facility, query) if query else []
    candidate = study.candidate_patient
    return render(
        request,
        "studies/reconciliation_study.html",
        {
            "study": study,
            "candidate": candidate,
            "differences": _differences(study),
            "series": study.series.all(),
            "query": query,
            "results": candidates,
            "searched": bool(query),
        },
    )


def _differences(study: Study) -> set[str]:
    """Which of the compared attributes differ from the candidate, for highlighting."""
    candidate = study.candidate_patient
    if candidate is None:
        return set()
    reason = services.demographics_disagreement(
        candidate, name=study.patient_name, birth_date=study.patient_birth_date
    )
    return {field for field in ("name", "birth date") if field in reason}


@policy(ROLE)
@waiting_study_view
@require_POST
def reconciliation_attach(request: HttpRequest, study: Study) -> HttpResponse:
    patient_id = request.POST.get("patient", "")
    try:
        patient = get_patient_for_facility(study.source_facility, patient_id)
    except (Http404, ValidationError):  # a malformed or foreign id reads as a missing one
        messages.error(request, "Choose a patient from the list to attach the study to.")
        return redirect("studies:reconciliation-study", study_id=study.public_id)
    try:
        services.study_attach(study=study, patient=patient, actor=_user(request), request=request)
    except services.ReconciliationError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"The study is now filed under {patient.display_name}.")
    return redirect("studies:reconciliation")


@policy(ROLE)
@waiting_study_view
@require_POST
def reconciliation_split(request: HttpRequest, study: Study) -> HttpResponse:
    try:
        patient = services.study_split(study=study, actor=_user(request), request=request)
    except services.ReconciliationError as error:
        messages.error(request, str(error))
    else:
        messages.success(
            request, f"A new patient record was made for {patient.display_name}, with this study."
        )
    return redirect("studies:reconciliation")


@policy(ROLE)
@waiting_study_view
@require_POST
def reconciliation_hold(request: HttpRequest, study: Study) -> HttpResponse:
    if study.match == Study.Match.HELD:
        messages.info(request, "This study was already marked as not this patient.")
        return redirect("studies:reconciliation")
    try:
        services.study_hold(study=study, actor=_user(request), request=request)
    except services.ReconciliationError as error:
        messages.error(request, str(error))
    else:
        messages.success(
            request,
            "Marked as not this patient. The study stays unshared until someone attaches it.",
        )
    return redirect("studies:reconciliation")
