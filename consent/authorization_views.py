"""The front desk captures signed authorizations; staff and the patient download them.

    /consent/authorizations/                        pick the facility, find the patient (staff)
    /consent/authorizations/new/<facility>/<patient>/  the form, signed on screen or on paper
    /consent/authorizations/<id>/                   the confirmation, with the PDF to print
    /consent/authorizations/<id>/pdf/               the PDF (staff of its facility, the patient)
    /consent/authorizations/<id>/scan/              the scanned paper PDF, when there is one

Who: front desk and facility admins of a facility capture, for patients their facility knows
(`get_patient_for_facility`); anyone else gets 404, another role 403. Documents are served only
through the vault, decrypted in the portal, audited, as attachments named by the opaque id.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods

from accounts.models import User
from accounts.policies import LOGIN, ROLE, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import audit_record
from consent.authorization_forms import AuthorizationForm
from consent.authorizations import (
    CAPTURE_ROLES,
    STATEMENT,
    AuthorizationError,
    AuthorizationRequest,
    authorization_capture,
    authorization_read,
    get_authorization_for_user,
    scan_max_bytes,
)
from consent.documents import DocumentIntegrityError, DocumentUnavailable
from facilities.access import get_membership_for_user
from facilities.models import Facility, Membership
from studies.access import get_patient_for_facility
from studies.models import Patient
from studies.selectors import patient_search


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def _capture_memberships(user: User) -> list[Membership]:
    return list(
        Membership.objects.filter(user=user, role__in=CAPTURE_ROLES)
        .select_related("facility")
        .order_by("facility__name")
    )


@policy(ROLE)
@require_GET
def authorization_start(request: HttpRequest) -> HttpResponse:
    memberships = _capture_memberships(_user(request))
    if not memberships:
        raise PermissionDenied("Your role does not capture authorizations")
    facility = memberships[0].facility
    chosen = request.GET.get("facility", "")
    if chosen:
        facility = next((m.facility for m in memberships if str(m.facility.pk) == chosen), None)
        if facility is None:
            raise Http404("No such facility")
    query = request.GET.get("q", "")[:100]
    results = patient_search(facility, query) if query else []
    return render(
        request,
        "consent/authorization_start.html",
        {
            "memberships": memberships,
            "facility": facility,
            "query": query,
            "results": results,
            "searched": bool(query),
        },
    )


class MemoryUploadHandler(FileUploadHandler):
    """Keeps an uploaded form in memory, never in a temporary file (plaintext PHI rests nowhere
    outside the gateway spool), and stops keeping it past the size limit: the form then says
    the file is too large instead of the request failing."""

    def __init__(self, request: HttpRequest | None = None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.buffer = io.BytesIO()
        self.too_large = False

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.buffer = io.BytesIO()
        self.too_large = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if not self.too_large and self.buffer.tell() + len(raw_data) <= self.limit:
            self.buffer.write(raw_data)
        else:
            self.too_large = True
            self.buffer = io.BytesIO()
        return None

    def file_complete(self, file_size: int) -> InMemoryUploadedFile:
        self.buffer.seek(0)
        upload = InMemoryUploadedFile(
            file=self.buffer,
            field_name=self.field_name,
            name=self.file_name or "upload",
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )
        upload.too_large = self.too_large  # type: ignore[attr-defined]
        return upload


@policy(ROLE)
@csrf_exempt  # checked by `csrf_protect` below, once the upload handler is in place
@never_cache
@require_http_methods(["GET", "POST"])
def authorization_new(request: HttpRequest, facility_id: int, patient_id: str) -> HttpResponse:
    facility = get_membership_for_user(_user(request), facility_id, roles=CAPTURE_ROLES).facility
    patient = _patient_or_404(request, facility, patient_id)
    request.upload_handlers = [MemoryUploadHandler(request, limit=scan_max_bytes())]
    return _authorization_form(request, facility, patient)


def _patient_or_404(request: HttpRequest, facility: Facility, patient_id: str) -> Patient:
    try:
        return get_patient_for_facility(facility, patient_id)
    except (Http404, ValidationError):
        other = Patient.objects.filter(public_id=patient_id).first()
        if other is not None:
            # Staff reaching for a patient their facility does not know: someone else's data.
            audit_record(
                action=Action.AUTHORIZATION_REFUSED,
                outcome=Outcome.DENIED,
                request=request,
                facility_id=facility.pk,
                target_kind=TargetKind.PATIENT,
                target_id=other.pk,
                patient_id=other.pk,
                detail={"reason": "patient_not_at_facility"},
            )
        raise Http404("No such patient") from None


@csrf_protect
def _authorization_form(request: HttpRequest, facility: Facility, patient: Patient) -> HttpResponse:
    if request.method == "POST":
        form = AuthorizationForm(request.POST, request.FILES, facility=facility, patient=patient)
        if form.is_valid():
            data = form.cleaned_data
            wanted = AuthorizationRequest(
                patient=patient,
                facility=facility,
                grantee_facilities=list(data["grantee_facilities"]),
                purposes=list(data["purposes"]),
                scope=data["scope"],
                studies=list(data["studies"]),
                rule_modalities=data["rule_modalities"],
                rule_date_from=data["rule_date_from"],
                rule_date_to=data["rule_date_to"],
                valid_until=data["valid_until"],
                deidentify=data["deidentify"],
                signature_png=data.get("signature_png"),
                scan=form.scan_checked,
            )
            try:
                authorization = authorization_capture(
                    wanted=wanted, witness=_user(request), request=request
                )
            except AuthorizationError as error:
                form.add_error(None, str(error))
            else:
                messages.success(
                    request,
                    f"The authorization of {patient.display_name} is recorded: "
                    f"{authorization.grants.count()} consent(s) given.",
                )
                return redirect("consent:authorization", authorization_id=authorization.public_id)
        status = 400
    else:
        form = AuthorizationForm(facility=facility, patient=patient)
        status = 200
    return render(
        request,
        "consent/authorization_form.html",
        {
            "form": form,
            "facility": facility,
            "patient": patient,
            "statement": STATEMENT.format(capturing=facility.name),
        },
        status=status,
    )


@policy(LOGIN)
@require_GET
def authorization_detail(request: HttpRequest, authorization_id: str) -> HttpResponse:
    authorization = get_authorization_for_user(_user(request), authorization_id, request=request)
    grants = list(authorization.grants.select_related("grantee_facility").order_by("pk"))
    for grant in grants:
        # A grant ends at midnight after its last day; people read the last day.
        grant.last_day = timezone.localtime(grant.valid_until).date() - timedelta(days=1)  # type: ignore[attr-defined]
    return render(
        request,
        "consent/authorization_detail.html",
        {"authorization": authorization, "grants": grants},
    )


def _document_response(request: HttpRequest, authorization_id: str, document: str) -> HttpResponse:
    authorization = get_authorization_for_user(_user(request), authorization_id, request=request)
    try:
        data = authorization_read(
            authorization=authorization, document=document, actor=_user(request), request=request
        )
    except DocumentUnavailable:
        return render(request, "consent/authorization_unavailable.html", status=503)
    except DocumentIntegrityError:
        return render(request, "consent/authorization_unavailable.html", status=500)
    suffix = "scan" if document == "scan" else "authorization"
    response = HttpResponse(data, content_type="application/pdf")
    response["Content-Disposition"] = (
        f'attachment; filename="{suffix}-{authorization.public_id}.pdf"'
    )
    response["Cache-Control"] = "no-store"
    return response


@policy(LOGIN)
@require_GET
def authorization_pdf(request: HttpRequest, authorization_id: str) -> HttpResponse:
    return _document_response(request, authorization_id, "pdf")


@policy(LOGIN)
@require_GET
def authorization_scan(request: HttpRequest, authorization_id: str) -> HttpResponse:
    return _document_response(request, authorization_id, "scan")
