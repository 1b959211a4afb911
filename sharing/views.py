"""Pages over the encrypted store: study thumbnails, and a facility admin's legal holds.

Thumbnails are decrypted and rendered per request, for whoever `consent.decision.decide`
allows (the patient, the originating facility's staff, a facility the patient granted).

A held study stays past its retention date (`available_until`) until the hold is lifted; the
daily retention sweep skips it. The study page (studies) shows the hold and posts here.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.views.decorators.http import require_GET

from accounts.policies import LOGIN, ROLE, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import audit_record
from facilities.models import Membership, Role
from sharing.access import signed_in_access
from sharing.frames import FrameRefused, series_thumbnail, thumbnail_response
from sharing.services import study_set_legal_hold
from studies.models import Series, Study

REASON_MAX_LENGTH = 200


@policy(ROLE)
def legal_hold(request: HttpRequest, study_id: str) -> HttpResponse:
    # Access first, whatever the method: a stranger learns nothing, not even "POST only".
    study = (
        Study.objects.filter(public_id=study_id, source_facility__memberships__user=request.user)
        .exclude(state=Study.State.SHREDDED)
        .first()
    )
    if study is None:
        raise Http404("No such study")
    if not Membership.objects.filter(
        user=request.user, facility_id=study.source_facility_id, role=Role.FACILITY_ADMIN
    ).exists():
        raise PermissionDenied("Only the facility's admins set legal holds")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    held = request.POST.get("held") == "on"
    reason = request.POST.get("reason", "").strip()
    if not reason or len(reason) > REASON_MAX_LENGTH:
        messages.error(request, f"Give the reason in 1 to {REASON_MAX_LENGTH} characters.")
    else:
        study_set_legal_hold(study, held=held, reason=reason, request=request)
        messages.success(
            request,
            "The study is kept until the hold is lifted."
            if held
            else f"The hold is lifted; the study is kept until {study.available_until:%d %B %Y}.",
        )
    return redirect("studies:study", study_id=study.public_id)


@policy(LOGIN)
@require_GET
def study_thumbnail(request: HttpRequest, study_id: str) -> HttpResponse:
    study = Study.objects.filter(public_id=study_id).first()
    if study is None:
        raise Http404("No such study")
    access = signed_in_access(request, study)
    if access is None:
        audit_record(action=Action.INSTANCE_READ, outcome=Outcome.DENIED, request=request,
                     target_kind=TargetKind.STUDY, target_id=study.pk, study_id=study.pk,
                     patient_id=study.patient_id)  # fmt: skip
        raise Http404("No such study")
    series = first_series_of_images(study)
    try:
        image = series_thumbnail(series, access) if series is not None else None
    except FrameRefused:
        raise Http404("No such study") from None
    return thumbnail_response(image)


def first_series_of_images(study: Study) -> Series | None:
    return (
        Series.objects.filter(study=study, instances__rows__isnull=False)
        .order_by("series_number", "pk")
        .first()
    )
