"""The reconciliation queue: front-desk staff match studies the portal could not match itself.

A study waits here when its patient ID is known but the name or birth date differ from the
patient on record, or when it came on media without an issuer for its patient ID. Staff can
attach it to a patient, split it off to a new patient record, or mark it as not the suggested
patient; a held study stays unshared until someone attaches it. Every decision is audited by
its service. Every view starts with an access helper that puts the membership in the query.

Below them, the studies of the user's facilities: a list, a study page (audited as a view of
the study) and the progress JSON that static/js/progress.js polls to move the page's bar.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from accounts.policies import ROLE, policy
from audit.codes import Action, TargetKind
from audit.services import audit_record
from facilities.models import Membership, Role
from studies import selectors, services
from studies.access import (
    get_patient_for_facility,
    get_study_for_staff,
    get_waiting_study_for_user,
    reconciling_facilities,
    staff_facilities,
    studies_for_staff,
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


# --- Studies: what staff's facilities hold, and how far publishing has got -----------------

STUDIES_PER_PAGE = 50
# Once a study is in one of these states its progress never changes again.
FINAL_STATES = frozenset({Study.State.AVAILABLE, Study.State.SHREDDED})
# What a row of the list reads; anything else stays in the database.
STUDY_LIST_FIELDS = (
    "public_id",
    "study_date",
    "description",
    "modalities_in_study",
    "match",
    "state",
    "number_of_instances",
    "number_of_published_instances",
    "available_until",
    "legal_hold",
    "received_at",
    "source_facility__name",
    "patient__name",
)


def study_progress(study: Study) -> dict[str, Any]:
    """How far a study is on its way to being available, without PHI: what the progress
    JSON answers. `studies/_progress.html` renders the same from the study itself."""
    return {
        "state": study.state,
        "label": study.get_state_display(),
        "published": study.number_of_published_instances,
        "total": study.number_of_instances,
        "percent": study.published_percent,
        "available_until": study.available_until.isoformat(),
        "done": study.state in FINAL_STATES,
    }


@policy(ROLE)
@require_GET
def study_list(request: HttpRequest) -> HttpResponse:
    facilities = list(staff_facilities(_user(request)))
    if not facilities:
        raise PermissionDenied("This page is for facility staff.")
    studies = (
        studies_for_staff(_user(request))
        .select_related("source_facility", "patient")
        .only(*STUDY_LIST_FIELDS)
        .order_by("-received_at", "-pk")
    )
    page = Paginator(studies, STUDIES_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "studies/study_list.html",
        {"page": page, "studies": page.object_list, "facilities": facilities},
    )


@policy(ROLE)
@require_GET
def study_detail(request: HttpRequest, study_id: str) -> HttpResponse:
    study = get_study_for_staff(_user(request), study_id)
    audit_record(
        action=Action.STUDY_VIEWED,
        request=request,
        facility_id=study.source_facility_id,
        target_kind=TargetKind.STUDY,
        target_id=study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
    )
    return render(
        request,
        "studies/study_detail.html",
        {
            "study": study,
            "series": study.series.only(
                "series_number", "modality", "description", "number_of_instances"
            ),
            "progress_url": reverse("studies:study-progress", kwargs={"study_id": study.public_id}),
            "can_set_legal_hold": Membership.objects.filter(
                user=_user(request), facility_id=study.source_facility_id, role=Role.FACILITY_ADMIN
            ).exists(),
        },
    )


@policy(ROLE)
@require_GET
@never_cache
def study_progress_json(request: HttpRequest, study_id: str) -> JsonResponse:
    """Polled by static/js/progress.js while the study page is open. Not audited: it tells
    nothing about the person or the images, and the page that polls it was audited."""
    study = get_study_for_staff(_user(request), study_id)
    return JsonResponse(study_progress(study))
