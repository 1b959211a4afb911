"""Share-link pages: the patient's (make, list, end, the access log), the front desk's (make
and end links for a patient at the desk), and the recipient's (open, prove the code, see the
shared studies).

The patient's pages start from the signed-in person's own record; every link or study id is
looked up within it, so another patient's ids answer 404. The front desk's pages start with the
user's membership at the facility (404 without, 403 for a role that does not register
patients), then the patient within that facility. The recipient's pages are public: the token
(once) and then the verified session are the key, and `sharing.links.link_read_access` checks
the link row and asks the access decision on every request. No page of the recipient's side
shows an MRN or a DICOM UID, and the token appears in one URL only: the e-mailed one.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import segno
from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts.models import User
from accounts.policies import LOGIN, PUBLIC, ROLE, policy
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from audit.services import audit_record
from consent.models import Purpose
from facilities.access import get_membership_for_user
from facilities.models import Facility
from sharing import links
from sharing.access import ReadAccess
from sharing.download_views import make_download_view
from sharing.links import (
    LINK_PURPOSES,
    CodeCheck,
    CodeNotSent,
    LinkRefused,
    ShareLinkError,
    ShareLinkRequest,
)
from sharing.models import ShareLink
from studies.access import RECONCILING_ROLES, get_patient_for_facility, get_patient_for_user
from studies.invitations import recent_verification
from studies.models import Patient, Study

# The confirmation page's one-time keys: a form sent twice (reload, back button) makes one link.
# A few are kept, so that two tabs each reviewing a link can both confirm.
NONCE_SESSION_KEY = "sharing_link_nonces"
NONCES_KEPT = 5
NOT_LISTED = "not-listed"
ACCESS_LOG_PAGE_SIZE = 100
LINK_LIST_PAGE_SIZE = 25
EXPIRY_CHOICES = (1, 3, 7, 14, 30, 60, 90)
PURPOSE_HELP = {
    Purpose.TREATMENT: "They are treating you now.",
    Purpose.SECOND_OPINION: "Another doctor reviews your images.",
    Purpose.TRANSFER_OF_CARE: "You are moving your care to them.",
    Purpose.EMERGENCY: "Emergency care.",
}


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


# --- The form -----------------------------------------------------------------------------------


def study_label(study: Study) -> str:
    when = f"{study.study_date:%d %b %Y}" if study.study_date else "No date"
    kind = ", ".join(study.modalities) or "Images"
    return f"{when} · {study.description or 'Imaging study'} ({kind}) · {study.source_facility}"


def _days_label(days: int) -> str:
    if days % 7 == 0 and days <= 28:
        weeks = days // 7
        return f"{weeks} week{'s' if weeks > 1 else ''}"
    return f"{days} day{'s' if days > 1 else ''}"


class ShareLinkForm(forms.Form):
    label_suffix = ""

    studies = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        label="Studies to share",
        error_messages={
            "required": "Choose at least one study to share.",
            "invalid_choice": "Choose among the studies listed.",
        },
    )
    recipient_email = forms.EmailField(
        max_length=254,
        label="The clinician's e-mail address",
        help_text="The link goes there, and only someone who can read that mailbox can open it.",
        error_messages={
            "required": "Enter the clinician's e-mail address.",
            "invalid": "Enter a complete e-mail address, like name@clinic.org.",
        },
    )
    recipient_facility = forms.ChoiceField(
        label="Their hospital or clinic",
        error_messages={
            "required": "Choose the clinician's facility, or \u201cnot listed\u201d.",
            "invalid_choice": "Choose a facility from the list, or \u201cnot listed\u201d.",
        },
    )
    recipient_facility_name = forms.CharField(
        required=False,
        max_length=links.FACILITY_NAME_MAX_LENGTH,
        label="Its name, if not listed",
    )
    purpose = forms.ChoiceField(
        widget=forms.RadioSelect,
        label="What for",
        error_messages={
            "required": "Choose what the images are for.",
            "invalid_choice": "Choose what the images are for.",
        },
    )
    days = forms.TypedChoiceField(
        coerce=int,
        label="The link works for",
        error_messages={"invalid_choice": "Choose how long the link works from the list."},
    )
    notify_on_open = forms.BooleanField(
        required=False, initial=True, label="E-mail me when the link is first opened"
    )
    notify_on_download = forms.BooleanField(
        required=False, initial=True, label="E-mail me when images are downloaded"
    )

    def __init__(
        self,
        *args: Any,
        studies: Sequence[Study],
        facilities: Iterable[Facility],
        for_staff: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if for_staff:  # the switches are still the patient's: staff ask them
            self.fields["notify_on_open"].label = "E-mail the patient when it is first opened"
            self.fields[
                "notify_on_download"
            ].label = "E-mail the patient when images are downloaded"
        self.own_studies = {str(study.public_id): study for study in studies}
        self.facilities = {str(facility.pk): facility for facility in facilities}
        self._choices("studies").choices = [
            (public_id, study_label(study)) for public_id, study in self.own_studies.items()
        ]
        self._choices("recipient_facility").choices = [
            ("", "Choose a facility"),
            *((pk, facility.name) for pk, facility in self.facilities.items()),
            (NOT_LISTED, "Not listed: I will type its name"),
        ]
        self._choices("purpose").choices = [
            (purpose.value, f"{purpose.label}: {PURPOSE_HELP[purpose]}")
            for purpose in LINK_PURPOSES
        ]
        lengths = sorted({d for d in EXPIRY_CHOICES if d <= settings.LINK_MAX_DAYS}
                         | {settings.LINK_DEFAULT_DAYS})  # fmt: skip
        self._choices("days").choices = [(days, _days_label(days)) for days in lengths]
        self.fields["days"].initial = settings.LINK_DEFAULT_DAYS

    def _choices(self, name: str) -> forms.ChoiceField:
        return cast(forms.ChoiceField, self.fields[name])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("recipient_facility") == NOT_LISTED:
            if not data.get("recipient_facility_name", "").strip():
                self.add_error("recipient_facility_name", "Type the name of the facility.")
        else:
            data["recipient_facility_name"] = ""
        return data

    def link_request(self, patient: Patient) -> ShareLinkRequest:
        data = self.cleaned_data
        facility = self.facilities.get(data["recipient_facility"])
        return ShareLinkRequest(
            patient=patient,
            studies=[self.own_studies[public_id] for public_id in data["studies"]],
            recipient_email=data["recipient_email"],
            purpose=data["purpose"],
            recipient_facility=facility,
            recipient_facility_name="" if facility else data["recipient_facility_name"],
            days=data["days"],
            notify_on_open=data["notify_on_open"],
            notify_on_download=data["notify_on_download"],
        )


def _carried(form: ShareLinkForm) -> list[tuple[str, str]]:
    """The form as sent, carried through the confirmation page in hidden fields."""
    return [
        (name, value)
        for name in form.fields
        for value in form.data.getlist(name)  # type: ignore[attr-defined]
        if value != ""
    ]


def qr_code_svg(url: str) -> SafeString:
    """The link as a QR code, drawn here as inline SVG (no script, no external service)."""
    svg = segno.make(url, error="m").svg_inline(
        scale=4, border=4, dark="#000", light="#fff", title="QR code of the share link"
    )
    return mark_safe(svg)  # noqa: S308 (segno's own markup of an ASCII URL)


# --- The making of a link, shared by the patient's and the front desk's pages ------------------


@dataclass(frozen=True)
class MakeContext:
    """Who makes the link and where the pages lead."""

    patient: Patient
    studies: list[Study]
    on_behalf_at: Facility | None
    form_url: str
    back_url: str


def _make_link(request: HttpRequest, context: MakeContext) -> HttpResponse:
    """GET: the form. POST `review`: the confirmation in plain words. POST `edit`: back to
    the form as filled. POST `confirm`: the link, shown once with its QR code."""
    facilities = Facility.objects.order_by("name")
    if request.method == "GET":
        initial = {}
        preselected = request.GET.get("study", "")
        if any(preselected == str(study.public_id) for study in context.studies):
            initial["studies"] = [preselected]
        form = ShareLinkForm(
            initial=initial,
            studies=context.studies,
            facilities=facilities,
            for_staff=context.on_behalf_at is not None,
        )
        return _link_form(request, form, context)

    # A study id that is not one of those offered reads as a missing one, whatever the step.
    offered = {str(study.public_id) for study in context.studies}
    if not set(request.POST.getlist("studies")) <= offered:
        raise Http404("No such study")
    form = ShareLinkForm(
        request.POST,
        studies=context.studies,
        facilities=facilities,
        for_staff=context.on_behalf_at is not None,
    )
    action = request.POST.get("action", "review")
    if not form.is_valid() or action == "edit":
        return _link_form(request, form, context)
    wanted = form.link_request(context.patient)
    by = _user(request)
    if action != "confirm":
        try:
            preview = links.share_link_preview(wanted, by=by, on_behalf_at=context.on_behalf_at)
        except ShareLinkError as error:
            form.add_error(None, str(error))
            return _link_form(request, form, context)
        nonce = secrets.token_urlsafe(16)
        kept = [n for n in request.session.get(NONCE_SESSION_KEY, []) if isinstance(n, str)]
        request.session[NONCE_SESSION_KEY] = [*kept, nonce][-NONCES_KEPT:]
        return render(
            request,
            "sharing/link_confirm.html",
            {
                "preview": preview,
                "carried": _carried(form),
                "nonce": nonce,
                "context": context,
                "wanted": wanted,
            },
        )
    kept = request.session.get(NONCE_SESSION_KEY, [])
    sent = request.POST.get("nonce", "")
    if not isinstance(kept, list) or sent not in kept:
        messages.info(
            request,
            "That confirmation was already used, so no second link was made. A link is shown "
            "only once: if you did not copy it, end it and make a new one.",
        )
        return redirect(context.back_url)
    request.session[NONCE_SESSION_KEY] = [n for n in kept if n != sent]
    try:
        link, token = links.create_share_link(
            wanted, by=by, on_behalf_at=context.on_behalf_at, request=request
        )
    except ShareLinkError as error:
        form.add_error(None, str(error))
        return _link_form(request, form, context)
    emailed = links.email_share_link(
        link, token, request=request, on_behalf_at=context.on_behalf_at
    )
    url = links.share_link_url(token, request)
    return render(
        request,
        "sharing/link_created.html",
        {
            "link": link,
            "url": url,
            "qr_svg": qr_code_svg(url),
            "emailed": emailed,
            "context": context,
        },
        status=201,
    )


def _link_form(request: HttpRequest, form: ShareLinkForm, context: MakeContext) -> HttpResponse:
    return render(
        request,
        "sharing/link_form.html",
        {"form": form, "context": context, "has_studies": bool(context.studies)},
        status=400 if form.is_bound and form.errors else 200,
    )


# --- The patient's pages ------------------------------------------------------------------------


def _not_linked(request: HttpRequest) -> HttpResponse:
    return render(request, "sharing/not_linked.html")


def _audit_page(request: HttpRequest, patient: Patient, page: str, action: str) -> None:
    audit_record(
        action=action,
        request=request,
        target_kind=TargetKind.PATIENT,
        target_id=patient.pk,
        patient_id=patient.pk,
        detail={"page": page},
    )


@policy(LOGIN)
@require_GET
@never_cache
def link_list(request: HttpRequest) -> HttpResponse:
    """The patient's links, newest first, each with its state and a way to end it."""
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return _not_linked(request)
    page = Paginator(links.links_for_patient(patient), LINK_LIST_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    _audit_page(request, patient, "share_links", Action.CONSENT_PAGE_VIEWED)
    return render(
        request,
        "sharing/link_list.html",
        {"page": page, "rows": _link_rows(page.object_list)},
    )


@dataclass(frozen=True)
class LinkRow:
    link: ShareLink
    state: str
    state_label: str
    studies: list[Study]
    ended_at: datetime | None

    @property
    def live(self) -> bool:
        return self.state in (ShareLink.State.ACTIVE, ShareLink.State.OPENED)


def _link_rows(page_links: Iterable[ShareLink]) -> list[LinkRow]:
    now = timezone.now()
    rows = []
    for link in page_links:
        state = link.state_at(now)
        rows.append(
            LinkRow(
                link=link,
                state=state,
                state_label=ShareLink.State(state).label,
                studies=sorted(link.studies.all(), key=lambda s: s.study_date or now.date()),
                ended_at=link.ended_at if state in ("ended", "expired") else None,
            )
        )
    return rows


@policy(LOGIN)
@require_http_methods(["GET", "POST"])
@never_cache
def link_new(request: HttpRequest) -> HttpResponse:
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return _not_linked(request)
    context = MakeContext(
        patient=patient,
        studies=list(links.shareable_studies(patient)),
        on_behalf_at=None,
        form_url=reverse("links:new"),
        back_url=reverse("links:list"),
    )
    if request.method == "GET":
        _audit_page(request, patient, "share_link_form", Action.CONSENT_PAGE_VIEWED)
    return _make_link(request, context)


@policy(LOGIN)
@require_http_methods(["GET", "POST"])
@never_cache
def link_end(request: HttpRequest, link_id: uuid.UUID) -> HttpResponse:
    """GET: what ending the link does. POST: end it, from this commit on."""
    patient = get_patient_for_user(_user(request))
    link = links.get_link_for_patient(patient, link_id) if patient else None
    if link is None:
        raise Http404("No such link")
    return _end_link(request, link, back_url=reverse("links:list"))


def _end_link(request: HttpRequest, link: ShareLink, *, back_url: str) -> HttpResponse:
    state = link.state_at(timezone.now())
    live = state in (ShareLink.State.ACTIVE, ShareLink.State.OPENED)
    if request.method == "POST":
        if live:
            links.revoke_share_link(link, _user(request), request=request)
            messages.success(
                request,
                f"Ended. The link for {link.recipient_email} no longer opens anything, from now "
                "on. They will get an e-mail saying so.",
            )
        else:
            messages.info(request, "This link had already ended. Nothing changed.")
        return redirect(back_url)
    return render(
        request,
        "sharing/link_end_confirm.html",
        {"link": link, "live": live, "state": state, "back_url": back_url},
    )


# --- The patient's access log -------------------------------------------------------------------

# Every open, view and download of the patient's studies, and what happened to their links.
ACCESS_ACTIONS = (
    Action.LINK_CREATED,
    Action.LINK_REVOKED,
    Action.LINK_OPENED,
    Action.LINK_CODE_FAILED,
    Action.LINK_REFUSED,
    Action.LINK_STUDIES_LISTED,
    Action.STUDY_VIEWED,
    Action.SERIES_VIEWED,
    Action.INSTANCE_READ,
    Action.STUDY_DOWNLOADED,
    Action.SERIES_DOWNLOADED,
)
# Refusals the patient should know of: someone tried their link with a wrong code, or after it
# ended. Other refused reads exposed nothing and are left to the auditors.
SHOWN_REFUSALS = (Action.LINK_CODE_FAILED, Action.LINK_REFUSED)

WHAT: dict[str, str] = {
    Action.LINK_CREATED: "made a share link",
    Action.LINK_REVOKED: "ended a share link",
    Action.LINK_OPENED: "opened the link (entered the code sent to them)",
    Action.LINK_CODE_FAILED: "entered a wrong or expired code",
    Action.LINK_REFUSED: "tried the link after it stopped working",
    Action.LINK_STUDIES_LISTED: "saw the list of shared studies",
    Action.STUDY_VIEWED: "opened the study's details",
    Action.SERIES_VIEWED: "viewed a series",
    Action.INSTANCE_READ: "opened images",
    Action.STUDY_DOWNLOADED: "downloaded the images",
    Action.SERIES_DOWNLOADED: "downloaded a series",
}


@dataclass
class LogEntry:
    """One line of the log: consecutive events of one actor, action and study, merged."""

    newest: datetime
    oldest: datetime
    who: str
    what: str
    study: str
    address: str
    count: int
    denied: bool
    key: tuple[Any, ...]

    @property
    def what_text(self) -> str:
        if self.count > 1 and self.what == WHAT[Action.INSTANCE_READ]:
            return f"opened {self.count} images"
        if self.count > 1:
            return f"{self.what} ({self.count} times)"
        if self.what == WHAT[Action.INSTANCE_READ]:
            return "opened an image"
        return self.what


def access_log_events(patient: Patient, viewer: User) -> QuerySet[AuditEvent]:
    """The audit rows about the patient's studies and links, newest first. The patient's own
    visits are left out: the log answers "who else"."""
    return (
        AuditEvent.objects.filter(patient_id=patient.pk, action__in=ACCESS_ACTIONS)
        .filter(Q(outcome=Outcome.ALLOWED) | Q(action__in=SHOWN_REFUSALS))
        .exclude(actor_kind=ActorKind.USER, actor_id=str(viewer.pk))
        .order_by("-sequence")
    )


def describe_events(events: Sequence[AuditEvent], patient: Patient) -> list[LogEntry]:
    """The rows in plain words. Links, studies and facilities are looked up within the
    patient's own (a row can only name what is theirs), in three queries for the page."""
    link_ids = {e.actor_id for e in events if e.actor_kind == ActorKind.SHARE_LINK}
    link_ids |= {e.target_id for e in events if e.target_kind == TargetKind.SHARE_LINK}
    share_links = {
        link.pk: link
        for link in ShareLink.objects.filter(
            pk__in=[int(i) for i in link_ids if i.isdigit()], grant__patient=patient
        )
        .select_related("recipient_facility")
    }  # fmt: skip
    studies = {
        study.pk: study
        for study in Study.objects.filter(
            pk__in={e.study_id for e in events if e.study_id}, patient=patient
        )
    }
    facilities = dict(
        Facility.objects.filter(pk__in={e.facility_id for e in events if e.facility_id})
        .values_list("pk", "name")
    )  # fmt: skip
    entries: list[LogEntry] = []
    for event in events:
        link = share_links.get(_int(event.actor_id) or 0) or share_links.get(
            _int(event.target_id) or 0
        )
        who = _who(event, link, facilities)
        study = studies.get(event.study_id or 0)
        what = WHAT.get(event.action, event.get_action_display())
        if event.action in (Action.LINK_CREATED, Action.LINK_REVOKED) and link is not None:
            what = f"{what} for {link.recipient_email}"
        key = (event.actor_kind, event.actor_id, event.action, event.study_id, event.outcome)
        last = entries[-1] if entries else None
        if last is not None and last.key == key:
            last.count += 1
            last.oldest = event.occurred_at
            continue
        entries.append(
            LogEntry(
                newest=event.occurred_at,
                oldest=event.occurred_at,
                who=who,
                what=what,
                study=_study_words(study) if study else "",
                address=event.client_address or "",
                count=1,
                denied=event.outcome != Outcome.ALLOWED,
                key=key,
            )
        )
    return entries


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _who(event: AuditEvent, link: ShareLink | None, facilities: dict[int, str]) -> str:
    facility = facilities.get(event.facility_id or 0)
    if event.actor_kind == ActorKind.SHARE_LINK:
        if link is None:
            return "Someone with a share link"
        return f"{link.recipient_email} ({link.facility_label}), with your share link"
    if event.actor_kind == ActorKind.API_TOKEN:
        return f"{facility}'s computer systems" if facility else "A facility's computer systems"
    if event.actor_kind == ActorKind.USER:
        return f"Staff of {facility}" if facility else "Someone signed in to the portal"
    if event.actor_kind == ActorKind.SYSTEM:
        return "The portal itself"
    return "Someone not signed in"


def _study_words(study: Study) -> str:
    when = f"{study.study_date:%d %b %Y}" if study.study_date else "no date"
    return f"{study.description or 'Imaging study'}, {when}"


@policy(LOGIN)
@require_GET
@never_cache
def access_log(request: HttpRequest) -> HttpResponse:
    """Who opened, viewed and downloaded the patient's images, newest first."""
    patient = get_patient_for_user(_user(request))
    if patient is None:
        return _not_linked(request)
    paginator = Paginator(access_log_events(patient, _user(request)), ACCESS_LOG_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    entries = describe_events(list(page.object_list), patient)
    _audit_page(request, patient, "access_log", Action.ACCESS_LOG_VIEWED)
    return render(request, "sharing/access_log.html", {"page": page, "entries": entries})


# --- The front desk's pages ---------------------------------------------------------------------


def _front_desk(request: HttpRequest, facility_id: int, patient_id: uuid.UUID) -> MakeContext:
    """The facility (membership in the query: 404 without one, 403 for a role that does not
    register patients) and the patient within it (404)."""
    facility = get_membership_for_user(
        _user(request), facility_id, roles=RECONCILING_ROLES
    ).facility
    patient = get_patient_for_facility(facility, str(patient_id))
    return MakeContext(
        patient=patient,
        studies=list(links.shareable_studies(patient, held_by=facility)),
        on_behalf_at=facility,
        form_url=reverse("links:front-desk-new", args=[facility.pk, patient.public_id]),
        back_url=reverse("links:front-desk-links", args=[facility.pk, patient.public_id]),
    )


def _front_desk_links(context: MakeContext) -> QuerySet[ShareLink]:
    """The patient's links to studies this facility holds: what its desk may see and end."""
    return (
        links.links_for_patient(context.patient)
        .filter(studies__source_facility=context.on_behalf_at)
        .distinct()
    )


@policy(ROLE)
@require_GET
@never_cache
def front_desk_links(request: HttpRequest, facility_id: int, patient_id: uuid.UUID) -> HttpResponse:
    context = _front_desk(request, facility_id, patient_id)
    facility = cast(Facility, context.on_behalf_at)
    audit_record(
        action=Action.PATIENT_RECORD_VIEWED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.PATIENT,
        target_id=context.patient.pk,
        patient_id=context.patient.pk,
        detail={"page": "share_links"},
    )
    page = Paginator(_front_desk_links(context), LINK_LIST_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "sharing/front_desk_links.html",
        {
            "context": context,
            "facility": facility,
            "patient": context.patient,
            "page": page,
            "rows": _link_rows(page.object_list),
            "recent_verification": recent_verification(context.patient, facility),
        },
    )


@policy(ROLE)
@require_http_methods(["GET", "POST"])
@never_cache
def front_desk_link_new(
    request: HttpRequest, facility_id: int, patient_id: uuid.UUID
) -> HttpResponse:
    return _make_link(request, _front_desk(request, facility_id, patient_id))


@policy(ROLE)
@require_http_methods(["GET", "POST"])
@never_cache
def front_desk_link_end(
    request: HttpRequest, facility_id: int, patient_id: uuid.UUID, link_id: uuid.UUID
) -> HttpResponse:
    context = _front_desk(request, facility_id, patient_id)
    link = _front_desk_links(context).filter(public_id=link_id).first()
    if link is None:
        raise Http404("No such link")
    return _end_link(request, link, back_url=context.back_url)


# --- The recipient's pages ----------------------------------------------------------------------

REFUSED_STATUS = {
    links.UNKNOWN: 404,
    links.EXPIRED: 410,
    links.REVOKED: 410,
    links.WITHDRAWN: 410,
    links.NOT_VERIFIED: 403,
}


def link_refused_response(request: HttpRequest, refused: LinkRefused) -> HttpResponse:
    """The plain page for a link that serves nothing, for every recipient page (the viewer and
    downloads too): withdrawn (ended by the patient) and expired answer 410, an unknown link 404.
    A session that holds the token but has not proved the code is sent to the code step."""
    if (
        refused.reason == links.NOT_VERIFIED
        and refused.link is not None
        and links.token_presented(request, refused.link)
    ):
        return redirect("links:code", refused.link.public_id)
    return render(
        request,
        "sharing/link_refused.html",
        {"reason": refused.reason},
        status=REFUSED_STATUS.get(refused.reason, 404),
    )


def link_access_resolver(
    request: HttpRequest, study: Study, /, *, link_id: uuid.UUID, **route: Any
) -> ReadAccess | HttpResponse | None:
    """The resolver the viewer's and the download's URL patterns take for share-link routes
    (`viewer_urlpatterns(link_access_resolver, access_policy=PUBLIC)`,
    `make_download_view(link_access_resolver)`, with `<uuid:link_id>` in the route): the
    verified link session's access; the plain refusal page when the link serves nothing or
    this browser has not proved the code; None (the caller's audited 404) for a study the
    link does not name."""
    try:
        access = links.link_read_access(request, link_id)
    except LinkRefused as refused:
        return link_refused_response(request, refused)
    if not ShareLink.objects.filter(public_id=link_id, studies=study).exists():
        return None
    return access


_link_download = make_download_view(link_access_resolver)


@policy(PUBLIC)
@require_GET
def link_download(
    request: HttpRequest, link_id: uuid.UUID, study_id: str, series_id: str | None = None
) -> HttpResponseBase:
    """The zip of a shared study or series, as signed-in people get it; the patient is told
    (when they asked to be) that images were downloaded."""
    response = _link_download(request, study_id, series_id, link_id=link_id)
    if isinstance(response, StreamingHttpResponse):
        link = ShareLink.objects.filter(public_id=link_id).first()
        if link is not None:
            links.notify_download(link)
    return response


def link_back_link(request: HttpRequest, study: Study, access: ReadAccess) -> tuple[str, str]:
    """The viewer's way back: the link's list of shared studies."""
    link_id = request.resolver_match.kwargs["link_id"] if request.resolver_match else ""
    return reverse("links:home", args=[link_id]), "Back to the shared studies"


def _rate_limited(request: HttpRequest) -> HttpResponse:
    return render(request, "sharing/link_refused.html", {"reason": "rate_limited"}, status=429)


@policy(PUBLIC)
@require_GET
@never_cache
def link_open(request: HttpRequest, token: str) -> HttpResponse:
    """Where the e-mailed link leads: find the link by the token's hash, remember that this
    browser holds the token, and go on to the code step under the link's opaque id, so the
    token leaves the address bar at once."""
    if links.token_guesses_exhausted(request):
        links.audit_refused_token(request, None, "rate_limited")
        return _rate_limited(request)
    link = links.share_link_for_token(token)
    if link is None:
        links.count_token_guess(request)
        reason = "unknown" if links.TOKEN_PATTERN.fullmatch(token) else "malformed"
        links.audit_refused_token(request, None, reason)
        return link_refused_response(request, LinkRefused(links.UNKNOWN))
    refusal = link.refusal_at(timezone.now())
    if refusal is not None:
        links.audit_refused_token(request, link, refusal)
        return link_refused_response(request, LinkRefused(refusal, link))
    links.remember_token(request, link)
    if links.session_verified(request, link):
        return redirect("links:home", link.public_id)
    return redirect("links:code", link.public_id)


class CodeForm(forms.Form):
    code = forms.CharField(
        max_length=20,
        label="The 6-digit code",
        widget=forms.TextInput(
            attrs={"inputmode": "numeric", "autocomplete": "one-time-code", "autofocus": True}
        ),
        error_messages={"required": "Enter the code from the e-mail."},
    )


CODE_MESSAGES = {
    CodeCheck.WRONG: "That code is not right. Check the e-mail and try again.",
    CodeCheck.MALFORMED: "The code is 6 digits, like 123456.",
    CodeCheck.EXPIRED: "That code has expired. Ask for a new one below.",
    CodeCheck.NO_CODE: "Ask for a code first: it is sent to the address the link was sent to.",
    CodeCheck.USED_UP: "Too many tries with that code. Ask for a new one below.",
    CodeCheck.RATE_LIMITED: "Too many wrong codes. Wait an hour, then open the link from your "
    "e-mail again.",
}


@policy(PUBLIC)
@require_http_methods(["GET", "POST"])
@never_cache
def link_code(request: HttpRequest, link_id: uuid.UUID) -> HttpResponse:
    """The recipient proves they hold the e-mail address: POST `send` e-mails a code (a GET
    never does: mail scanners fetch links, and must not spend codes or fill the patient's log),
    POST `verify` checks it and binds this session to the link."""
    try:
        link = links.live_link(request, link_id)
    except LinkRefused as refused:
        return link_refused_response(request, refused)
    if links.session_verified(request, link):
        return redirect("links:home", link.public_id)
    if not links.token_presented(request, link):
        links.audit_refused_token(request, link, "no_token")
        return link_refused_response(request, LinkRefused(links.NOT_VERIFIED, link))
    sent_key = f"code_sent:{link.public_id}"
    form = CodeForm()
    status = 200
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "send":
        try:
            links.request_code(link, request)
        except CodeNotSent as refusal:
            if refusal.reason == "rate_limited":
                messages.error(request, "Several codes were sent already. Wait an hour, then "
                               "open the link from your e-mail again.")  # fmt: skip
            else:
                messages.error(request, "The e-mail could not be sent just now. Try again in a "
                               "minute.")  # fmt: skip
        else:
            request.session[sent_key] = True
        return redirect("links:code", link.public_id)
    if action == "verify":
        form = CodeForm(request.POST)
        if form.is_valid():
            result = links.verify_code(link, form.cleaned_data["code"], request)
            if result is CodeCheck.OK:
                request.session.pop(sent_key, None)
                return redirect("links:home", link.public_id)
            form.add_error("code", CODE_MESSAGES[result])
            status = 429 if result is CodeCheck.RATE_LIMITED else 400
        else:
            status = 400
    elif request.method == "POST":
        status = 400
        messages.error(request, "Choose to send a code, or enter the one you received.")
    return render(
        request,
        "sharing/link_code.html",
        {
            "link": link,
            "form": form,
            "masked_email": links.mask_email(link.recipient_email),
            "sent": bool(request.session.get(sent_key)),
            "minutes": settings.LINK_CODE_VALIDITY_SECONDS // 60,
        },
        status=status,
    )


@dataclass(frozen=True)
class SharedStudy:
    study: Study
    series: list[Any]
    available: bool


@policy(PUBLIC)
@require_GET
@never_cache
def link_home(request: HttpRequest, link_id: uuid.UUID) -> HttpResponse:
    """The shared studies with their series: dates, descriptions, kinds, counts and the
    facility that sent them. No MRN and no DICOM UID: only opaque ids reach the page."""
    try:
        access = links.link_read_access(request, link_id)
    except LinkRefused as refused:
        return link_refused_response(request, refused)
    link = (
        ShareLink.objects.select_related("grant__patient", "recipient_facility")
        .filter(public_id=link_id)
        .get()
    )
    shared = []
    for study in link.studies.select_related("source_facility").order_by("-study_date", "-pk"):
        allowed = access.allows(study)
        series = (
            list(
                study.series.only(
                    "public_id",
                    "series_number",
                    "modality",
                    "body_part",
                    "description",
                    "number_of_instances",
                )
            )
            if allowed
            else []
        )
        shared.append(SharedStudy(study, series, allowed))
    if not any(item.available for item in shared):
        # Every study went (deleted, past retention): the link has nothing left to show.
        return link_refused_response(request, LinkRefused(links.EXPIRED, link))
    links.audit_link_studies_listed(request, link, sum(item.available for item in shared))
    return render(
        request,
        "sharing/link_home.html",
        {"link": link, "patient": link.grant.patient, "shared": shared},
    )
