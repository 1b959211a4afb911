"""Patients join by invitation and see their own studies.

Three groups of pages:

- the front desk (`front-desk/<facility>/patients/...`): find a patient, record how their
  identity was checked, then invite them by e-mail or link the account they already have.
  Every view starts with the user's membership at the facility (404 for none, 403 for a role
  that does not register patients), then the patient within that facility (404).
- the invitation link (`join/<token>/`) and the patient sign-up it opens (`join/sign-up/`,
  allauth's own sign-up form and flow; `studies.receivers` links the account on sign-up).
- the patient's studies (`mine/`): the list, a study with its series, and the progress JSON
  that static/js/progress.js polls. The owner is part of every query: another patient's
  study is 404. Opening the list or a study is audited.

URLs carry opaque ids only: never an MRN or a DICOM UID.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from allauth.account.adapter import get_adapter
from allauth.account.models import EmailAddress
from allauth.account.views import SignupView
from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db.models import F, OuterRef, Subquery
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.dates import MONTHS_AP
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.guesses import address_key, count_guess, guesses
from accounts.models import User
from accounts.policies import LOGIN, PUBLIC, ROLE, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import audit_record
from facilities.access import get_membership_for_user
from facilities.models import Facility
from studies import invitations, selectors
from studies.access import (
    RECONCILING_ROLES,
    get_patient_for_facility,
    get_patient_for_user,
    get_study_for_patient,
    patients_visible_to_facility,
    studies_of_patient,
)
from studies.models import IdentityVerification, Patient, PatientInvitation, Series, Study
from studies.views import study_progress

# Guessing invitation links: after this many refused links from one address within the
# window, that address is refused outright until the window ends (as for staff invitations).
INVITATION_GUESS_LIMIT = 20
INVITATION_GUESS_WINDOW_SECONDS = 600

# What a row of the patient's list reads; anything else stays in the database.
PATIENT_STUDY_LIST_FIELDS = (
    "public_id",
    "study_date",
    "description",
    "modalities_in_study",
    "state",
    "number_of_instances",
    "available_until",
    "source_facility__name",
)


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


# --- Forms --------------------------------------------------------------------------------------


class PatientSearchForm(forms.Form):
    q = forms.CharField(label="Name or MRN", max_length=100, required=False)
    birth_date = forms.DateField(
        label="Date of birth",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
    )


class IdentityVerificationForm(forms.Form):
    method = forms.ChoiceField(label="How you checked", choices=IdentityVerification.Method.choices)
    document_type = forms.ChoiceField(
        label="Document looked at", choices=IdentityVerification.Document.choices
    )


class EmailForm(forms.Form):
    email = forms.EmailField(label="Patient's e-mail address", max_length=254)


# --- Front desk ---------------------------------------------------------------------------------


def _front_desk_facility(request: HttpRequest, facility_id: int) -> Facility:
    """The facility where the user registers patients: 404 without a membership there, 403
    for a role that does not register patients (clinicians)."""
    return get_membership_for_user(_user(request), facility_id, roles=RECONCILING_ROLES).facility


def front_desk_patient_view(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Resolve the facility (membership in the query) and the patient within it before
    anything else: a stranger gets 404 and a clinician 403 whatever the method, so a refused
    method says nothing to someone with no business there. The view gets both."""

    @wraps(view)
    def wrapper(request: HttpRequest, facility_id: int, patient_id: str) -> HttpResponse:
        facility = _front_desk_facility(request, facility_id)
        patient = get_patient_for_facility(facility, str(patient_id))
        return view(request, facility, patient)

    return wrapper


@policy(ROLE)
@require_GET
def front_desk_patients(request: HttpRequest, facility_id: int) -> HttpResponse:
    facility = _front_desk_facility(request, facility_id)
    form = PatientSearchForm(request.GET or None)
    results: list[Patient] = []
    searched = False
    if form.is_valid() and (form.cleaned_data["q"] or form.cleaned_data["birth_date"]):
        searched = True
        query = form.cleaned_data["q"]
        birth_date = form.cleaned_data["birth_date"]
        if query:
            results = selectors.patient_search(facility, query)
        if birth_date:
            if query:
                results = [p for p in results if p.birth_date == birth_date]
            else:
                results = list(
                    patients_visible_to_facility(facility)
                    .filter(birth_date=birth_date)
                    .prefetch_related("identifiers")
                    .order_by("name")[: selectors.PATIENT_SEARCH_LIMIT]
                )
        # What was asked is PHI (a name, a birth date): the row keeps who, where and how many.
        audit_record(
            action=Action.PATIENTS_SEARCHED,
            request=request,
            facility_id=facility.pk,
            target_kind=TargetKind.PATIENT,
            detail={"results": len(results)},
        )
    return render(
        request,
        "studies/patient_search.html",
        {"facility": facility, "form": form, "results": results, "searched": searched},
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


def _front_desk_patient_page(
    request: HttpRequest,
    facility: Facility,
    patient: Patient,
    *,
    verify_form: IdentityVerificationForm | None = None,
    invite_form: EmailForm | None = None,
    link_form: EmailForm | None = None,
    status: int = 200,
) -> HttpResponse:
    audit_record(
        action=Action.PATIENT_RECORD_VIEWED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.PATIENT,
        target_id=patient.pk,
        patient_id=patient.pk,
    )
    now = timezone.now()
    invitations_list = list(
        PatientInvitation.objects.filter(patient=patient, facility=facility).order_by(
            "-created_at"
        )[:10]
    )
    context = {
        "facility": facility,
        "patient": patient,
        "identifiers": patient.identifiers.filter(facility=facility).order_by("issuer", "value"),
        "verifications": IdentityVerification.objects.filter(patient=patient, facility=facility)
        .select_related("verified_by")
        .order_by("-verified_at")[:5],
        "recent_verification": invitations.recent_verification(patient, facility, now=now),
        "invitations": [(inv, inv.state_at(now)) for inv in invitations_list],
        "verify_form": verify_form or IdentityVerificationForm(),
        "invite_form": invite_form or EmailForm(prefix="invite"),
        "link_form": link_form or EmailForm(prefix="link"),
        "has_account": patient.account_id is not None,
    }
    return render(request, "studies/patient_front_desk.html", context, status=status)


@policy(ROLE)
@front_desk_patient_view
@require_GET
def front_desk_patient(request: HttpRequest, facility: Facility, patient: Patient) -> HttpResponse:
    return _front_desk_patient_page(request, facility, patient)


@policy(ROLE)
@front_desk_patient_view
@require_POST
def front_desk_verify(request: HttpRequest, facility: Facility, patient: Patient) -> HttpResponse:
    form = IdentityVerificationForm(request.POST)
    if form.is_valid():
        try:
            invitations.identity_verification_record(
                patient=patient,
                facility=facility,
                method=form.cleaned_data["method"],
                document_type=form.cleaned_data["document_type"],
                actor=_user(request),
                request=request,
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Identity of {patient.display_name} checked.")
            return redirect("studies:front-desk-patient", facility.pk, patient.public_id)
    return _front_desk_patient_page(request, facility, patient, verify_form=form, status=400)


@policy(ROLE)
@front_desk_patient_view
@require_POST
def front_desk_invite(request: HttpRequest, facility: Facility, patient: Patient) -> HttpResponse:
    form = EmailForm(request.POST, prefix="invite")
    if form.is_valid():
        try:
            invitation, _token = invitations.patient_invitation_create(
                patient=patient,
                facility=facility,
                email=form.cleaned_data["email"],
                actor=_user(request),
                request=request,
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(
                request,
                f"Invitation sent to {invitation.email}. The link works for "
                f"{invitations.PATIENT_INVITATION_LIFETIME.days} days.",
            )
            return redirect("studies:front-desk-patient", facility.pk, patient.public_id)
    return _front_desk_patient_page(request, facility, patient, invite_form=form, status=400)


@policy(ROLE)
@front_desk_patient_view
@require_POST
def front_desk_link(request: HttpRequest, facility: Facility, patient: Patient) -> HttpResponse:
    form = EmailForm(request.POST, prefix="link")
    if form.is_valid():
        try:
            invitations.patient_account_link(
                patient=patient,
                facility=facility,
                email=form.cleaned_data["email"],
                actor=_user(request),
                request=request,
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(
                request,
                f"The account {form.cleaned_data['email']} now sees the images of this record.",
            )
            return redirect("studies:front-desk-patient", facility.pk, patient.public_id)
    return _front_desk_patient_page(request, facility, patient, link_form=form, status=400)


# --- The invitation link and the sign-up it opens ---------------------------------------------


def _guess_key(request: HttpRequest) -> str:
    return address_key("studies:patient-invitation-guesses", request)


def _refuse_invitation(
    request: HttpRequest, invitation: PatientInvitation | None, now: Any
) -> HttpResponse:
    """The same plain page whatever the reason; audited as denied; counted as a guess."""
    count_guess(_guess_key(request), INVITATION_GUESS_WINDOW_SECONDS)
    reason = "unknown" if invitation is None else invitation.state_at(now)
    audit_record(
        action=Action.PATIENT_INVITATION_REFUSED,
        outcome=Outcome.DENIED,
        request=request,
        facility_id=invitation.facility_id if invitation else None,
        target_kind=TargetKind.INVITATION if invitation else "",
        target_id=invitation.pk if invitation else "",
        patient_id=invitation.patient_id if invitation else None,
        detail={"reason": reason},
    )
    status = 410 if reason == "expired" else 404
    return render(request, "studies/invitation_invalid.html", status=status)


def _account_exists(email: str) -> bool:
    return (
        User.objects.filter(email__iexact=email).exists()
        or EmailAddress.objects.filter(email__iexact=email).exists()
    )


@policy(PUBLIC)
@require_http_methods(["GET", "POST"])
@never_cache
def patient_invitation(request: HttpRequest, token: str) -> HttpResponse:
    """Where the e-mailed link leads.

    Not signed in: sign-up for the invited address (or sign-in, when an account already uses
    it). Signed in as that address: confirm, then the account sees the records. Any link that
    is not a pending invitation gets the same plain page.
    """
    if guesses(_guess_key(request)) >= INVITATION_GUESS_LIMIT:
        return render(
            request, "studies/invitation_invalid.html", {"rate_limited": True}, status=429
        )
    invitation = invitations.patient_invitation_for_token(token)
    now = timezone.now()
    if (
        invitation is not None
        and request.user.is_authenticated
        and invitation.accepted_by_id == request.user.pk
    ):
        return redirect("studies:mine")
    if invitation is None or not invitation.is_pending_at(now):
        return _refuse_invitation(request, invitation, now)

    if not request.user.is_authenticated:
        if _account_exists(invitation.email):
            return redirect_to_login(request.get_full_path())
        request.session[invitations.PATIENT_INVITATION_SESSION_KEY] = invitation.pk
        # The visitor holds the link e-mailed to this address: allauth may mark the address
        # verified at sign-up instead of sending a code.
        get_adapter(request).stash_verified_email(request, invitation.email)
        return redirect("studies:patient-signup")

    user = _user(request)
    if user.email.lower() != invitation.email.lower():
        return render(request, "studies/invitation_wrong_account.html", status=403)
    error = None
    if request.method == "POST":
        try:
            invitations.patient_invitation_accept(invitation=invitation, user=user, request=request)
        except ValidationError as refusal:
            error = " ".join(refusal.messages)
        else:
            messages.success(request, "Your account now shows your images.")
            return redirect("studies:mine")
    return render(
        request,
        "studies/invitation_confirm.html",
        {"invitation": invitation, "error": error},
        status=400 if error else 200,
    )


class PatientSignupView(SignupView):
    """allauth's sign-up, opened by a patient invitation in the session (public sign-up is
    closed). The address must be the invited one; `studies.receivers` links the account to
    the patient when allauth signals the sign-up."""

    template_name = "studies/invitation_signup.html"
    success_url = reverse_lazy("studies:mine")

    def is_open(self) -> bool:
        return invitations.patient_invitation_in_session(self.request.session) is not None

    def closed(self) -> HttpResponse:
        return render(self.request, "studies/invitation_invalid.html", status=404)

    def form_valid(self, form: Any) -> HttpResponse:
        invitation = invitations.patient_invitation_in_session(self.request.session)
        email = str(form.cleaned_data.get("email", ""))
        if invitation is None or email.lower() != invitation.email.lower():
            form.add_error("email", "Please use the e-mail address the invitation was sent to.")
            return self.form_invalid(form)
        return super().form_valid(form)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["invitation"] = invitations.patient_invitation_in_session(self.request.session)
        return context


patient_signup = policy(PUBLIC)(PatientSignupView.as_view())


# --- The patient's own studies ----------------------------------------------------------------


@policy(LOGIN)
@require_GET
def patient_studies(request: HttpRequest) -> HttpResponse:
    """Every study of the signed-in patient, newest first, in a fixed number of queries: the
    body part comes from a subquery, the facility from a join, and no row asks for more."""
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return redirect("portal:patient-home")
    first_body_part = (
        Series.objects.filter(study=OuterRef("pk"))
        .exclude(body_part="")
        .order_by("series_number", "pk")
        .values("body_part")[:1]
    )
    studies = list(
        studies_of_patient(patient)
        .annotate(body_part=Subquery(first_body_part))
        .order_by(
            F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-pk"
        )
        .values(*PATIENT_STUDY_LIST_FIELDS, "body_part")
    )
    audit_record(
        action=Action.PATIENT_STUDIES_LISTED,
        request=request,
        target_kind=TargetKind.PATIENT,
        target_id=patient.pk,
        patient_id=patient.pk,
        detail={"studies": len(studies)},
    )
    return render(
        request,
        "studies/patient_studies.html",
        {"patient": patient, "studies": studies, "rows": _study_rows(studies)},
    )


def _study_rows(studies: list[dict[str, Any]]) -> SafeString:
    """The table rows of the patient's list, escaped here rather than in the template.

    With hundreds of studies the template language's per-variable lookups and the date
    filter were most of the page's time (bench/patient_pages.py); one format string per row
    keeps the page well under its 150 ms budget. Every value passes through `escape`. Dates
    are written as DATE_FORMAT writes them in en-us ("Jan. 2, 2026").
    """
    months = [""] + [str(MONTHS_AP[month]) for month in range(1, 13)]
    states = dict(Study.State.choices)
    study_url = reverse("studies:patient-study", args=[_UUID_PLACEHOLDER])
    # Rendered from the encrypted store by sharing, for studies that finished publishing; the
    # browser fetches only those scrolled into view.
    thumbnail_url = reverse("sharing:study-thumbnail", args=[_UUID_PLACEHOLDER])

    def day(value: Any) -> str:
        return f"{months[value.month]} {value.day}, {value.year}" if value else ""

    rows = []
    for study in studies:
        description, body_part = study["description"], (study["body_part"] or "").title()
        exam: str = escape(description or body_part or "Imaging study")
        below = (
            f'<br><span class="meta">{escape(body_part)}</span>'
            if description and body_part
            else ""
        )
        kinds = ", ".join(m for m in study["modalities_in_study"].split("\\") if m) or "\u2013"
        state = study["state"]
        until = (
            '<span class="meta">Deleted</span>'
            if state == Study.State.SHREDDED
            else escape(day(study["available_until"]))
        )
        public_id = str(study["public_id"])
        picture = thumbnail_url.replace(_UUID_PLACEHOLDER, public_id)
        thumbnail = (
            f'<img class="study-thumbnail" src="{picture}" alt="" width="64" height="64"'
            ' loading="lazy">'
            if state == Study.State.AVAILABLE
            else ""
        )
        rows.append(
            "<tr>"
            f'<td class="thumbnail-cell">{thumbnail}</td>'
            f'<td class="nowrap">{escape(day(study["study_date"]) or "No date")}</td>'
            f'<td><a href="{study_url.replace(_UUID_PLACEHOLDER, public_id)}">'
            f"{exam}</a>{below}</td>"
            f"<td>{escape(kinds)}</td>"
            f"<td>{escape(study['source_facility__name'])}</td>"
            f'<td class="numeric">{int(study["number_of_instances"])}</td>'
            f'<td><span class="badge badge-state-{escape(state)}">'
            f"{escape(states.get(state, state))}</span></td>"
            f'<td class="nowrap">{until}</td>'
            "</tr>"
        )
    return mark_safe("\n".join(rows))  # noqa: S308 (every value above is escaped)


_UUID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


@policy(LOGIN)
@require_GET
def patient_study(request: HttpRequest, study_id: str) -> HttpResponse:
    study = get_study_for_patient(_user(request), study_id)
    audit_record(
        action=Action.STUDY_VIEWED,
        request=request,
        facility_id=study.source_facility_id,
        target_kind=TargetKind.STUDY,
        target_id=study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
        detail={"by": "patient"},
    )
    return render(
        request,
        "studies/patient_study.html",
        {
            "study": study,
            "series": study.series.only(
                "series_number", "modality", "body_part", "description", "number_of_instances"
            ),
            "progress_url": reverse("studies:patient-study-progress", args=[study.public_id]),
        },
    )


@policy(LOGIN)
@require_GET
@never_cache
def patient_study_progress(request: HttpRequest, study_id: str) -> JsonResponse:
    """Polled by static/js/progress.js while the patient's study page is open; the same JSON
    as the staff one, checked against the patient. Not audited: it tells nothing about the
    person or the images, and the page that polls it was audited."""
    return JsonResponse(study_progress(get_study_for_patient(_user(request), study_id)))
