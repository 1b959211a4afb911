"""The patient's consent page: who may see their images, for what, until when; giving and
withdrawing consent, each after a page that says plainly what will happen.

Every view starts from the signed-in person's own patient record, and every grant or study id
is looked up within it, so another patient's ids answer 404. The services check and record
(and audit) each change; these views only show and ask. Opening a page that shows the
patient's studies or grants is audited here.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts.models import User
from accounts.policies import LOGIN, policy
from audit.codes import Action, TargetKind
from audit.services import audit_record
from consent import selectors
from consent.authorizations import authorizations_for_patient
from consent.forms import GrantForm, WithdrawForm
from consent.services import (
    ConsentError,
    grant_consent,
    is_in_force,
    patient_studies,
    withdraw_consent,
)
from studies.access import get_patient_for_user
from studies.models import Patient


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def _not_linked(request: HttpRequest) -> HttpResponse:
    return render(request, "consent/not_linked.html")


def _audit_view(request: HttpRequest, patient: Patient, page: str, **target: Any) -> None:
    audit_record(
        action=Action.CONSENT_PAGE_VIEWED,
        request=request,
        target_kind=target.get("kind", TargetKind.PATIENT),
        target_id=target.get("id", patient.pk),
        patient_id=patient.pk,
        detail={"page": page},
    )


@policy(LOGIN)
@require_GET
@never_cache
def consent_page(request: HttpRequest) -> HttpResponse:
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return _not_linked(request)
    overview = selectors.consent_overview(patient, viewer=_user(request), now=timezone.now())
    _audit_view(request, patient, "overview")
    return render(
        request,
        "consent/consent_page.html",
        {"overview": overview, "authorizations": authorizations_for_patient(patient)},
    )


@policy(LOGIN)
@require_http_methods(["GET", "POST"])
@never_cache
def grant_new(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST `review`: the confirmation, saying what the grant will cover and
    until when. POST `edit`: back to the form as filled. POST `confirm`: the grant."""
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return _not_linked(request)
    studies = list(patient_studies(patient).select_related("source_facility"))
    if request.method == "GET":
        _audit_view(request, patient, "grant_form")
        return _grant_form(request, GrantForm(studies=studies), studies)

    # Ids of studies that are not the patient's own read as missing ones, whatever the step.
    if selectors.own_studies_by_public_id(patient, request.POST.getlist("studies")) is None:
        raise Http404("No such study")
    form = GrantForm(request.POST, studies=studies)
    action = request.POST.get("action", "review")
    if not form.is_valid() or action == "edit":
        return _grant_form(request, form, studies)
    wanted = form.grant_request(patient)
    if action != "confirm":
        try:
            preview = selectors.grant_preview(wanted, now=timezone.now())
        except ConsentError as error:
            form.add_error(None, str(error))
            return _grant_form(request, form, studies)
        _audit_view(request, patient, "grant_review")
        return render(
            request,
            "consent/grant_confirm.html",
            {"preview": preview, "carried": _carried(form), "study_count": len(studies)},
        )
    try:
        grant = grant_consent(wanted, by=_user(request), request=request)
    except ConsentError as error:
        form.add_error(None, str(error))
        return _grant_form(request, form, studies)
    messages.success(
        request,
        f"Done. {selectors.grantee_name(grant)} may now see your images for "
        f"{grant.get_purpose_display().lower()}, until {selectors.grant_last_day(grant):%d %B %Y}.",
    )
    return redirect("consent:consents")


def _grant_form(request: HttpRequest, form: GrantForm, studies: list[Any]) -> HttpResponse:
    return render(
        request,
        "consent/grant_form.html",
        {"form": form, "has_studies": bool(studies)},
        status=400 if form.is_bound and form.errors else 200,
    )


def _carried(form: GrantForm) -> list[tuple[str, str]]:
    """The form as sent, to carry through the confirmation page in hidden fields."""
    return [
        (name, value)
        for name in form.fields
        for value in form.data.getlist(name)  # type: ignore[attr-defined]
        if value != ""
    ]


@policy(LOGIN)
@require_http_methods(["GET", "POST"])
@never_cache
def grant_withdraw(request: HttpRequest, grant_id: str) -> HttpResponse:
    """GET: what withdrawing will do. POST: withdraw, from this commit on."""
    patient = get_patient_for_user(_user(request))
    grant = selectors.get_grant_for_patient(patient, grant_id) if patient else None
    if patient is None or grant is None:
        raise Http404("No such consent")
    now = timezone.now()
    summary = selectors.summarize_grant(grant, list(patient_studies(patient)), now)
    if not summary.in_force:
        # Withdrawing twice (or after the end) is harmless: it changes nothing and says so.
        if request.method == "POST":
            messages.info(request, _already_over(summary))
            return redirect("consent:consents")
        form = None
    elif request.method == "POST":
        form = WithdrawForm(request.POST)
        if form.is_valid():
            withdraw_consent(
                grant, by=_user(request), reason=form.cleaned_data["reason"], request=request
            )
            messages.success(
                request,
                f"Withdrawn. {summary.grantee} can no longer search for or open the images this "
                "consent covered.",
            )
            return redirect("consent:consents")
    else:
        form = WithdrawForm()
    if request.method == "GET":
        _audit_view(request, patient, "withdraw", kind=TargetKind.GRANT, id=grant.pk)
    others = [
        other
        for other in selectors.grants_for_patient(patient).exclude(pk=grant.pk)
        if selectors.grantee_name(other) == summary.grantee and is_in_force(other, now)
    ]
    return render(
        request,
        "consent/withdraw_confirm.html",
        {
            "summary": summary,
            "form": form,
            "others": others,
            "already": None if summary.in_force else _already_over(summary),
        },
        status=400 if form is not None and form.errors else 200,
    )


def _already_over(summary: selectors.GrantSummary) -> str:
    withdrawal = getattr(summary.grant, "withdrawal", None)
    if withdrawal is not None:
        when = timezone.localtime(withdrawal.withdrawn_at)
        return f"This consent was already withdrawn on {when:%d %B %Y}. Nothing changed."
    return f"This consent already ended on {summary.last_day:%d %B %Y}. Nothing changed."
