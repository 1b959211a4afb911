"""Signed authorizations: the front desk captures a patient's written consent.

The patient signs on screen (a PNG drawn on a canvas) or on paper (a scanned PDF, JPEG or PNG).
`authorization_capture` then, in one transaction, gives one grant per facility and purpose chosen
(`grant_consent`, source SIGNED_AUTHORIZATION), renders the authorization as a PDF (letterhead,
patient, grants, statement, signature or scan, witness, time, and the SHA-256 of its content),
stores it encrypted through the document vault, records it and points the grants at it. If any
step fails nothing is kept: the transaction rolls back and the stored documents are discarded.

Uploaded bytes are judged by their content, never by a file name or a browser's content type:
the magic bytes say what a file is, images must decode, and sizes are bounded before decoding.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone
from fpdf import FPDF
from PIL import Image, UnidentifiedImageError

from accounts.models import User
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import audit_record
from consent.documents import DocumentUnavailable, StoredDocument, get_document_vault
from consent.models import ConsentGrant, SignedAuthorization
from consent.services import ConsentError, GrantRequest, grant_consent
from facilities.models import Facility, Role
from studies.models import Patient, Study

# Who captures authorizations: the people who register patients.
CAPTURE_ROLES = (Role.FRONT_DESK, Role.FACILITY_ADMIN)

PDF_MAGIC = b"%PDF-"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# A PDF ends with %%EOF, possibly followed by a line end or a little padding.
PDF_TAIL_BYTES = 1024

# A drawn signature: a small PNG. Larger than this is not a signature pad's output.
SIGNATURE_MAX_BYTES = 512 * 1024
SIGNATURE_MAX_SIZE = (2400, 1200)
SIGNATURE_MIN_SIZE = (100, 40)
# Pixels darker than this count as ink; a signature needs a few hundred of them.
INK_THRESHOLD = 160
SIGNATURE_MIN_INK_PIXELS = 150
# Scanned forms: 10 MB unless settings say otherwise (CONSENT_SCAN_MAX_BYTES).
DEFAULT_SCAN_MAX_BYTES = 10 * 1024 * 1024
SCAN_MAX_PIXELS = 12000 * 12000

STATEMENT = (
    "I authorize {capturing} to make my imaging studies described below available, through "
    "the Imaging Consent Portal, to the facilities and for the purposes listed, for the period "
    "shown. Studies shared for research or education are always de-identified first. I "
    "understand that I may withdraw this authorization at any time, online or at a front "
    "desk; a withdrawal stops all further access from that moment, but cannot undo access "
    "that happened before it. I confirm that the person named below is me, or that I am "
    "authorized to sign for them."
)


class AuthorizationError(Exception):
    """An authorization that cannot be recorded; the message says why in plain words."""


def scan_max_bytes() -> int:
    return int(getattr(settings, "CONSENT_SCAN_MAX_BYTES", DEFAULT_SCAN_MAX_BYTES))


@dataclass(frozen=True)
class Scan:
    """A scanned paper form whose content has been checked: `kind` is pdf, png or jpeg."""

    kind: str
    data: bytes


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the patient signed for: every (facility, purpose) pair becomes one grant."""

    patient: Patient
    facility: Facility  # the facility capturing it, whose staff witnesses
    grantee_facilities: Sequence[Facility]
    purposes: Sequence[str]
    scope: str
    studies: Sequence[Study] = ()
    rule_modalities: Sequence[str] = ()
    rule_date_from: date | None = None
    rule_date_to: date | None = None
    valid_until: date | None = None
    deidentify: bool = False
    signature_png: bytes | None = None
    scan: Scan | None = None

    @property
    def method(self) -> str:
        if self.signature_png is not None:
            return SignedAuthorization.Method.DRAWN
        return SignedAuthorization.Method.PAPER


# --- Checking what was uploaded ----------------------------------------------------------------


def check_signature(data: bytes) -> bytes:
    """A drawn signature as a clean PNG (re-encoded, no metadata), or AuthorizationError."""
    if not data:
        raise AuthorizationError("The patient has not signed yet: ask them to sign in the box.")
    if len(data) > SIGNATURE_MAX_BYTES:
        raise AuthorizationError("The signature image is too large. Clear the box and sign again.")
    if not data.startswith(PNG_MAGIC):
        raise AuthorizationError("The signature was not received as an image. Sign again.")
    image = _decoded_image(data, "PNG", max_size=SIGNATURE_MAX_SIZE)
    if image is None:
        raise AuthorizationError("The signature image is damaged. Clear the box and sign again.")
    width, height = image.size
    if width < SIGNATURE_MIN_SIZE[0] or height < SIGNATURE_MIN_SIZE[1]:
        raise AuthorizationError("The signature image is too small. Sign again.")
    gray = _on_white(image).convert("L")
    ink = sum(gray.histogram()[:INK_THRESHOLD])
    low, high = gray.getextrema()
    if low == high or ink < SIGNATURE_MIN_INK_PIXELS:
        raise AuthorizationError(
            "The signature box is blank or nearly blank: ask the patient to sign in the box."
        )
    clean = io.BytesIO()
    gray.save(clean, format="PNG", optimize=True)
    return clean.getvalue()


def check_scan(data: bytes) -> Scan:
    """A scanned paper form whose type is known from its content, or AuthorizationError."""
    limit = scan_max_bytes()
    if not data:
        raise AuthorizationError("The scanned form is empty. Scan it again.")
    if len(data) > limit:
        raise AuthorizationError(
            f"The scanned form is larger than {limit // (1024 * 1024)} MB. Scan it at a lower "
            "resolution, or in black and white."
        )
    if data.startswith(PDF_MAGIC):
        if b"%%EOF" not in data[-PDF_TAIL_BYTES:]:
            raise AuthorizationError("This PDF is incomplete or damaged. Scan the form again.")
        return Scan("pdf", data)
    for magic, kind, image_format in ((PNG_MAGIC, "png", "PNG"), (JPEG_MAGIC, "jpeg", "JPEG")):
        if data.startswith(magic):
            if _decoded_image(data, image_format, max_pixels=SCAN_MAX_PIXELS) is None:
                raise AuthorizationError(
                    "This image is damaged or too large to read. Scan the form again."
                )
            return Scan(kind, data)
    raise AuthorizationError(
        "The scanned form must be a PDF, JPEG or PNG file; this file is none of those."
    )


def _decoded_image(
    data: bytes,
    image_format: str,
    *,
    max_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> Image.Image | None:
    """The image, fully decoded, if it is of `image_format` and within the bounds; the size is
    checked from the header before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
        width, height = image.size
        if max_size is not None and (width > max_size[0] or height > max_size[1]):
            raise AuthorizationError(
                "The signature image is too large. Clear the box and sign again."
            )
        if max_pixels is not None and width * height > max_pixels:
            return None
        image.load()
    except AuthorizationError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return image


def _on_white(image: Image.Image) -> Image.Image:
    """Transparent parts of a canvas drawing read as paper, not as black."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# --- Capturing ----------------------------------------------------------------------------------


def authorization_capture(
    *, wanted: AuthorizationRequest, witness: User, request: HttpRequest | None = None
) -> SignedAuthorization:
    """Record a signed authorization and the grants it gives, all or nothing.

    The documents are written to the vault inside the transaction, once the grants are known;
    if anything fails afterwards (or the commit does) they are discarded again. A refusal is
    audited after the rollback, so the log shows the attempt and nothing else remains.
    """
    if (wanted.signature_png is None) == (wanted.scan is None):
        raise AuthorizationError("Either the patient signs on screen, or upload the signed form.")
    if not wanted.grantee_facilities:
        raise AuthorizationError("Choose at least one facility.")
    if not wanted.purposes:
        raise AuthorizationError("Choose at least one purpose.")
    vault = get_document_vault()
    stored: list[str] = []
    try:
        with transaction.atomic():
            authorization = _capture(wanted, witness=witness, request=request, stored=stored)
    except (ConsentError, AuthorizationError, DocumentUnavailable) as error:
        for name in stored:
            vault.discard(name)
        audit_record(
            action=Action.AUTHORIZATION_REFUSED,
            outcome=Outcome.DENIED,
            request=request,
            facility_id=wanted.facility.pk,
            target_kind=TargetKind.PATIENT,
            target_id=wanted.patient.pk,
            patient_id=wanted.patient.pk,
            detail={"method": wanted.method, "reason": type(error).__name__},
        )
        if isinstance(error, DocumentUnavailable):
            raise AuthorizationError(
                "The signed form could not be stored just now, so nothing was saved. "
                "Try again in a minute."
            ) from error
        raise AuthorizationError(str(error)) from error
    except BaseException:
        for name in stored:
            vault.discard(name)
        raise
    return authorization


def _capture(
    wanted: AuthorizationRequest, *, witness: User, request: HttpRequest | None, stored: list[str]
) -> SignedAuthorization:
    vault = get_document_vault()
    grants = [
        grant_consent(
            GrantRequest(
                patient=wanted.patient,
                purpose=purpose,
                scope=wanted.scope,
                grantee_facility=facility,
                studies=wanted.studies,
                rule_modalities=wanted.rule_modalities,
                rule_date_from=wanted.rule_date_from,
                rule_date_to=wanted.rule_date_to,
                valid_until=wanted.valid_until,
                deidentify=wanted.deidentify,
                source=ConsentGrant.Source.SIGNED_AUTHORIZATION,
            ),
            by=witness,
            request=request,
        )
        for facility in wanted.grantee_facilities
        for purpose in wanted.purposes
    ]
    scan_document: StoredDocument | None = None
    if wanted.scan is not None and wanted.scan.kind == "pdf":
        scan_document = vault.put(wanted.scan.data)
        stored.append(scan_document.object_name)
    public_id = uuid.uuid4()
    signed_at = timezone.now()
    statement = STATEMENT.format(capturing=wanted.facility.name)
    content = authorization_content(
        public_id=public_id,
        wanted=wanted,
        grants=grants,
        statement=statement,
        witness=witness,
        signed_at=signed_at,
    )
    content_sha256 = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    pdf = render_authorization_pdf(
        content=content,
        content_sha256=content_sha256,
        signature_png=wanted.signature_png,
        scan=wanted.scan,
        signed_at=signed_at,
    )
    pdf_document = vault.put(pdf)
    stored.append(pdf_document.object_name)
    authorization = SignedAuthorization.objects.create(
        public_id=public_id,
        patient=wanted.patient,
        facility=wanted.facility,
        witnessed_by=witness,
        signed_at=signed_at,
        method=wanted.method,
        statement=statement,
        content_sha256=content_sha256,
        pdf_object_name=pdf_document.object_name,
        pdf_kek_id=pdf_document.kek_id,
        pdf_wrapped_key=pdf_document.wrapped_key,
        pdf_object_id=pdf_document.object_id,
        pdf_sha256=pdf_document.sha256,
        pdf_size=pdf_document.size,
        **(_scan_fields(scan_document) if scan_document else {}),
    )
    # Set in the transaction that creates the grants: no one ever sees them without it.
    ConsentGrant.objects.filter(pk__in=[grant.pk for grant in grants]).update(
        authorization=authorization
    )
    audit_record(
        action=Action.AUTHORIZATION_SIGNED,
        request=request,
        facility_id=wanted.facility.pk,
        target_kind=TargetKind.PATIENT,
        target_id=wanted.patient.pk,
        patient_id=wanted.patient.pk,
        detail={
            "authorization": str(public_id),
            "method": authorization.method,
            "grants": len(grants),
            "content_sha256": content_sha256,
        },
    )
    return authorization


def _scan_fields(document: StoredDocument) -> dict[str, Any]:
    return {
        "scan_object_name": document.object_name,
        "scan_kek_id": document.kek_id,
        "scan_wrapped_key": document.wrapped_key,
        "scan_object_id": document.object_id,
        "scan_sha256": document.sha256,
        "scan_size": document.size,
    }


def authorization_content(
    *,
    public_id: uuid.UUID,
    wanted: AuthorizationRequest,
    grants: Sequence[ConsentGrant],
    statement: str,
    witness: User,
    signed_at: datetime,
) -> dict[str, Any]:
    """Everything the authorization says, as plain values: hashed, and printed on the PDF."""
    patient = wanted.patient
    if wanted.signature_png is not None:
        signature = {"method": "drawn", "sha256": hashlib.sha256(wanted.signature_png).hexdigest()}
    else:
        assert wanted.scan is not None  # noqa: S101 (authorization_capture checked it)
        signature = {
            "method": "paper",
            "kind": wanted.scan.kind,
            "sha256": hashlib.sha256(wanted.scan.data).hexdigest(),
        }
    return {
        "authorization": str(public_id),
        "facility": {"name": wanted.facility.name, "npi": wanted.facility.npi},
        "patient": {
            "name": patient.display_name,
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else "",
            "identifiers": sorted(
                f"{identifier.value} ({identifier.issuer})"
                for identifier in patient.identifiers.filter(facility=wanted.facility)
            ),
        },
        "grants": [_grant_content(grant) for grant in grants],
        "statement": statement,
        "signature": signature,
        "witness": {
            "name": witness.get_full_name() or witness.email,
            "email": witness.email,
            "facility": wanted.facility.name,
        },
        "signed_at": signed_at.astimezone(ZoneInfo("UTC")).isoformat(),
    }


def _study_label(study: Study) -> str:
    parts = (study.study_date or "no date", study.modalities_in_study, study.description)
    return " ".join(str(part) for part in parts if part)


def _grant_content(grant: ConsentGrant) -> dict[str, Any]:
    if grant.scope == ConsentGrant.Scope.CHOSEN:
        studies = grant.studies.order_by("study_date", "pk")
        scope = "Chosen studies: " + "; ".join(_study_label(study) for study in studies)
    elif grant.scope == ConsentGrant.Scope.RULES:
        parts = []
        if grant.modalities:
            parts.append("modalities " + ", ".join(grant.modalities))
        if grant.rule_date_from or grant.rule_date_to:
            parts.append(
                f"dated {grant.rule_date_from or 'any time'} to {grant.rule_date_to or 'any time'}"
            )
        scope = "Studies matching: " + ("; ".join(parts) or "any study")
    else:
        scope = grant.get_scope_display()
    last_day = timezone.localtime(grant.valid_until).date().toordinal() - 1
    return {
        "grant": str(grant.public_id),
        "facility": grant.grantee_facility.name if grant.grantee_facility else grant.grantee_email,
        "purpose": grant.get_purpose_display(),
        "purpose_code": grant.purpose,
        "scope": scope,
        "from": timezone.localtime(grant.valid_from).date().isoformat(),
        "until": date.fromordinal(last_day).isoformat(),
        "deidentified": grant.deidentify,
    }


# --- The PDF ------------------------------------------------------------------------------------


def _latin(text: str) -> str:
    """The PDF's built-in fonts speak Latin-1; anything else is reduced to its closest letters
    (accents dropped) or a question mark, rather than failing the whole authorization."""
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("\u2019", "'")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
        text = text.encode("latin-1", errors="replace").decode("latin-1")
    return text


class _AuthorizationPDF(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(format="Letter")
        self.footer_text = footer_text

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=7)
        self.set_text_color(90, 90, 90)
        self.cell(0, 5, _latin(self.footer_text), align="L")
        self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="R")


def render_authorization_pdf(
    *,
    content: dict[str, Any],
    content_sha256: str,
    signature_png: bytes | None,
    scan: Scan | None,
    signed_at: datetime,
) -> bytes:
    """The authorization as a PDF: what the patient keeps and what staff print."""
    local_zone = timezone.get_current_timezone()
    pdf = _AuthorizationPDF(f"Authorization {content['authorization']} - SHA-256 {content_sha256}")
    pdf.set_title("Authorization to share imaging studies")
    pdf.set_author(_latin(content["facility"]["name"]))
    pdf.set_creation_date(signed_at)
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.add_page()
    width = pdf.epw

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(width, 7, _latin(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10)

    def line(label: str, value: str) -> None:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(45, 6, _latin(label))
        pdf.set_font("Helvetica", size=10)
        pdf.multi_cell(width - 45, 6, _latin(value), new_x="LMARGIN", new_y="NEXT")

    # Letterhead
    facility = content["facility"]
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(width, 9, _latin(facility["name"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    subtitle = "Imaging Consent Portal" + (f" - NPI {facility['npi']}" if facility["npi"] else "")
    pdf.cell(width, 5, _latin(subtitle), new_x="LMARGIN", new_y="NEXT")
    pdf.set_draw_color(40, 80, 140)
    pdf.set_line_width(0.6)
    pdf.line(pdf.l_margin, pdf.get_y() + 2, pdf.l_margin + width, pdf.get_y() + 2)
    pdf.ln(6)
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(width, 8, "Authorization to share imaging studies", new_x="LMARGIN", new_y="NEXT")

    heading("Patient")
    patient = content["patient"]
    line("Name", patient["name"])
    line("Date of birth", patient["birth_date"] or "not recorded")
    if patient["identifiers"]:
        line("Patient ID", ", ".join(patient["identifiers"]))

    heading("What is shared, with whom, for what, until when")
    for number, grant in enumerate(content["grants"], start=1):
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(width, 6, _latin(f"{number}. {grant['facility']}"), new_x="LMARGIN", new_y="NEXT")
        line("Purpose", f"{grant['purpose']} ({grant['purpose_code']})")
        line("Studies", grant["scope"])
        line("Period", f"{grant['from']} to {grant['until']} (inclusive)")
        line("De-identified", "Yes" if grant["deidentified"] else "No")

    heading("Statement")
    pdf.multi_cell(width, 5.5, _latin(content["statement"]), new_x="LMARGIN", new_y="NEXT")

    heading("Signature")
    if signature_png is not None:
        with Image.open(io.BytesIO(signature_png)) as image:
            ratio = image.height / image.width
        sign_width = 80.0
        if pdf.get_y() + sign_width * ratio > pdf.page_break_trigger:
            pdf.add_page()
        pdf.image(io.BytesIO(signature_png), w=sign_width, h=sign_width * ratio)
        pdf.set_font("Helvetica", size=9)
        pdf.cell(width, 5, "Signed on screen by the patient.", new_x="LMARGIN", new_y="NEXT")
    else:
        assert scan is not None  # noqa: S101 (one of the two is always given)
        if scan.kind == "pdf":
            text = (
                "Paper form attached: the patient signed on paper; the scanned form is kept with "
                "this authorization as a separate encrypted PDF, SHA-256 "
                f"{content['signature']['sha256']}."
            )
        else:
            text = (
                "Paper form attached: the patient signed on paper; the scanned form follows on "
                f"the next page (SHA-256 {content['signature']['sha256']})."
            )
        pdf.multi_cell(width, 5.5, _latin(text), new_x="LMARGIN", new_y="NEXT")

    heading("Witness")
    witness = content["witness"]
    line("Staff member", f"{witness['name']} <{witness['email']}>")
    line("Facility", witness["facility"])
    utc = signed_at.astimezone(ZoneInfo("UTC"))
    local = signed_at.astimezone(local_zone)
    line("Signed at", f"{utc:%Y-%m-%d %H:%M:%S} UTC")
    line("Local time", f"{local:%Y-%m-%d %H:%M:%S %Z} ({local_zone.key})")

    heading("Verification")
    line("Authorization", content["authorization"])
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(45, 6, "Content SHA-256")
    pdf.set_font("Courier", size=8)
    pdf.multi_cell(width - 45, 6, content_sha256, new_x="LMARGIN", new_y="NEXT")

    if scan is not None and scan.kind != "pdf":
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(width, 7, "Scanned paper form", new_x="LMARGIN", new_y="NEXT")
        with Image.open(io.BytesIO(scan.data)) as image:
            page = _on_white(image)
        available_height = pdf.page_break_trigger - pdf.get_y()
        scale = min(width / page.width, available_height / page.height)
        pdf.image(page, w=page.width * scale, h=page.height * scale)

    return bytes(pdf.output())


# --- Reading ------------------------------------------------------------------------------------


def authorizations_for_patient(patient: Patient) -> QuerySet[SignedAuthorization]:
    """A patient's signed authorizations, newest first, for their consent page."""
    return SignedAuthorization.objects.filter(patient=patient).select_related("facility")


def get_authorization_for_user(
    user: User, public_id: str | uuid.UUID, *, request: HttpRequest | None = None
) -> SignedAuthorization:
    """An authorization the user may read: the patient's own, or one captured at a facility
    where the user is staff. Anyone else gets 404, and a real authorization asked for by
    someone else is audited as denied."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        raise Http404("No such authorization") from None
    found = (
        SignedAuthorization.objects.select_related("facility", "patient", "witnessed_by")
        .filter(public_id=public_id)
        .filter(Q(patient__account=user) | Q(facility__memberships__user=user))
        .distinct()
        .first()
    )
    if found is None:
        other = SignedAuthorization.objects.filter(public_id=public_id).first()
        if other is not None:
            audit_record(
                action=Action.AUTHORIZATION_DOWNLOADED,
                outcome=Outcome.DENIED,
                request=request,
                facility_id=other.facility_id,
                target_kind=TargetKind.PATIENT,
                target_id=other.patient_id,
                patient_id=other.patient_id,
                detail={"authorization": str(public_id)},
            )
        raise Http404("No such authorization")
    return found


def authorization_read(
    *,
    authorization: SignedAuthorization,
    document: str = "pdf",
    actor: User,
    request: HttpRequest | None = None,
) -> bytes:
    """The decrypted PDF (or the scanned form, `document="scan"`), audited as read by `actor`.

    DocumentUnavailable when the store is down, DocumentIntegrityError when what is stored is
    not what was written; either way the attempt is audited as an error.
    """
    if document == "scan":
        if not authorization.has_scan_document:
            raise Http404("No scanned form")
        stored = StoredDocument(
            object_name=authorization.scan_object_name,
            kek_id=authorization.scan_kek_id,
            wrapped_key=bytes(authorization.scan_wrapped_key or b""),
            object_id=bytes(authorization.scan_object_id or b""),
            sha256=authorization.scan_sha256,
            size=authorization.scan_size or 0,
        )
    else:
        stored = StoredDocument(
            object_name=authorization.pdf_object_name,
            kek_id=authorization.pdf_kek_id,
            wrapped_key=bytes(authorization.pdf_wrapped_key),
            object_id=bytes(authorization.pdf_object_id),
            sha256=authorization.pdf_sha256,
            size=authorization.pdf_size,
        )
    outcome, data = Outcome.ALLOWED, b""
    try:
        data = get_document_vault().open(stored)
    except Exception:
        outcome = Outcome.ERROR
        raise
    finally:
        audit_record(
            action=Action.AUTHORIZATION_DOWNLOADED,
            outcome=outcome,
            request=request,
            actor_kind=ActorKind.USER,
            actor_id=actor.pk,
            facility_id=authorization.facility_id,
            target_kind=TargetKind.PATIENT,
            target_id=authorization.patient_id,
            patient_id=authorization.patient_id,
            detail={"authorization": str(authorization.public_id), "document": document},
        )
    return data
