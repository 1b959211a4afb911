"""The front desk's browser upload: files, a zip, or a whole CD folder, into the ingest service.

One endpoint, `studies:upload-receive`, two ways in:

- `static/js/upload.js` sends every file in a request of its own, as the raw body
  (`Content-Type: application/octet-stream`, the file's folder-relative name percent-encoded
  in `X-Upload-Name`, the CSRF token in `X-CSRFToken`, read from the page's form because the
  CSRF cookie is HttpOnly), and gets JSON back: one result per file, or per member of a zip.
  The body is copied into an incoming spool file in chunks; no request holds a file in memory.
- Without JavaScript the form posts the files as multipart and the results come back as a page.
  `SpoolUploadHandler` writes each part straight into an incoming spool file: plaintext images
  rest nowhere but the spool, so not in Django's temporary folder either.

Who may upload: front-desk staff and facility admins, for their facility (`?facility=<id>`,
or the one facility they have). No membership: 404 (platform admins included, who hold no
role at a facility); another role: 403. The studies themselves are matched by the service:
media carry no issuer for their patient IDs, so their studies wait for the front desk.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    UnreadablePostError,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils.formats import date_format
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET

from accounts.models import User
from accounts.policies import ROLE, policy
from facilities.access import get_membership_for_user
from facilities.models import Facility, Membership, Role
from facilities.selectors import memberships_for_user
from studies.media import (
    MediaReason,
    MediaResult,
    ResultOutcome,
    looks_like_zip,
    max_upload_bytes,
    media_ingest_received,
    media_refuse,
    safe_display_name,
)
from studies.models import Study
from studies.services import Channel, IngestSource
from studies.spool import COPY_CHUNK_BYTES, Spool, get_spool

logger = logging.getLogger(__name__)

UPLOAD_ROLES = (Role.FRONT_DESK, Role.FACILITY_ADMIN)
UPLOAD_NAME_HEADER = "X-Upload-Name"
# The file itself as the body. No type at all is taken as the same: an empty body has none.
RAW_CONTENT_TYPES = frozenset({"application/octet-stream", "application/dicom", ""})

# How each outcome is shown: a word on a badge and the badge's tone.
_LABELS: dict[str, tuple[str, str]] = {
    ResultOutcome.ACCEPTED: ("Received", "ok"),
    ResultOutcome.DUPLICATE: ("Already here", "ok"),
    ResultOutcome.REFUSED: ("Refused", "danger"),
    ResultOutcome.CONFLICT: ("Not stored", "danger"),
    ResultOutcome.FAILED: ("Failed", "danger"),
    ResultOutcome.SKIPPED: ("Set aside", ""),
}


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def _upload_memberships(request: HttpRequest) -> Membership | list[Membership]:
    """The membership to upload for, or the several a person must choose between.

    `?facility=<id>` names it; without one, the only facility where the person may upload.
    No membership at all, or none at the facility named: 404; only other roles: 403.
    """
    user = _user(request)
    requested = request.GET.get("facility")
    if requested is not None:
        try:
            facility_id = int(requested)
        except ValueError:
            raise Http404("No such facility") from None
        return get_membership_for_user(user, facility_id, roles=UPLOAD_ROLES)
    memberships = list(memberships_for_user(user))
    if not memberships:
        raise Http404("No such facility")
    uploaders = [membership for membership in memberships if membership.role in UPLOAD_ROLES]
    if not uploaders:
        raise PermissionDenied("Your role does not allow uploading images")
    return uploaders[0] if len(uploaders) == 1 else uploaders


def _receive_url(facility: Facility) -> str:
    return f"{reverse('studies:upload-receive')}?facility={facility.pk}"


# --- The page ----------------------------------------------------------------------------------


@policy(ROLE)
@require_GET
def upload(request: HttpRequest) -> HttpResponse:
    found = _upload_memberships(request)
    if isinstance(found, list):
        return render(request, "studies/upload.html", {"choices": found})
    return render(request, "studies/upload.html", _page_context(found.facility))


def _page_context(facility: Facility, report: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "facility": facility,
        "receive_url": _receive_url(facility),
        "reconciliation_url": reverse("studies:reconciliation"),
        "max_image": settings.INGEST_MAX_INSTANCE_BYTES,
        "max_archive": settings.INGEST_MAX_ARCHIVE_BYTES,
        "report": report,
    }


# --- Receiving ---------------------------------------------------------------------------------


@policy(ROLE)
@csrf_exempt  # checked by `csrf_protect` below, once the upload handler is in place
@never_cache
def upload_receive(request: HttpRequest) -> HttpResponse:
    """POST one raw file (JSON back) or a multipart form of files (a results page back)."""
    found = _upload_memberships(request)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if isinstance(found, list):
        return _json_error("Choose the facility these images are for, then try again.", 400)
    # Django's documented way to change upload handlers: before the CSRF check reads the form.
    handler = SpoolUploadHandler(request)
    request.upload_handlers = [handler]
    try:
        return _receive_checked(request, found.facility)
    finally:
        for path in handler.created:  # anything not handed to ingest (a refused CSRF check…)
            handler.spool.discard(path)


@csrf_protect
def _receive_checked(request: HttpRequest, facility: Facility) -> HttpResponse:
    source = IngestSource.for_user(
        facility=facility, channel=Channel.UPLOAD, user=_user(request), request=request
    )
    if request.content_type in RAW_CONTENT_TYPES:
        return _receive_raw(request, source)
    if request.content_type == "multipart/form-data":
        return _receive_form(request, source)
    return _json_error("Send the file itself (application/octet-stream) or a form of files.", 415)


def _receive_raw(request: HttpRequest, source: IngestSource) -> HttpResponse:
    name = safe_display_name(unquote(request.headers.get(UPLOAD_NAME_HEADER, "")))
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_upload_bytes():
        return _too_large(name, source, max_upload_bytes())
    spool = get_spool()
    try:
        # The first bytes say whether this is a zip, and so which limit applies.
        head = request.read(132)
        is_zip, limit = looks_like_zip(head), _limit_for(head)
        incoming = spool.receive(cast(IO[bytes], _Prefixed(head, request)), limit=limit)
    except UnreadablePostError:
        # The browser went away mid-file; whatever arrived was removed by `receive`.
        return _json_error("The file did not arrive completely; please send it again.", 400)
    except OSError:
        logger.exception("Writing an upload into the spool failed")
        return _json_error("The portal could not store this file just now; please try again.", 503)
    too_large = incoming.stat().st_size > limit
    if too_large and is_zip:
        spool.discard(incoming)
        return _too_large(name, source, limit)
    # An image over its limit goes on: the service refuses it, in its own words (and audits).
    results = media_ingest_received(incoming=incoming, name=name, source=source, spool=spool)
    return JsonResponse(_report(results, source.facility), status=413 if too_large else 200)


def _too_large(name: str, source: IngestSource, limit: int) -> JsonResponse:
    result = media_refuse(name=name, reason=MediaReason.TOO_LARGE, source=source, limit=limit)
    return JsonResponse(_report([result], source.facility), status=413)


def _limit_for(head: bytes) -> int:
    if looks_like_zip(head):
        return max_upload_bytes()
    return int(settings.INGEST_MAX_INSTANCE_BYTES)


def _receive_form(request: HttpRequest, source: IngestSource) -> HttpResponse:
    uploads = [upload for upload in request.FILES.getlist("files") if isinstance(upload, Spooled)]
    results: list[MediaResult] = []
    for spooled in uploads:
        name = safe_display_name(spooled.name or "")
        if spooled.too_large:
            results.append(
                media_refuse(
                    name=name, reason=MediaReason.TOO_LARGE, source=source, limit=spooled.limit
                )
            )
            continue
        results.extend(
            media_ingest_received(
                incoming=spooled.spool_path, name=name, source=source, spool=get_spool()
            )
        )
    context = _page_context(source.facility, _report(results, source.facility))
    status = 200 if uploads else 400
    if not uploads:
        context["form_error"] = "Choose at least one file to upload."
    return render(request, "studies/upload.html", context, status=status)


def _json_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message, "results": [], "studies": []}, status=status)


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: the bytes already read to sniff the type."""

    def __init__(self, head: bytes, stream: HttpRequest) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = size if size is not None and size >= 0 else COPY_CHUNK_BYTES
        if self._head:
            chunk, self._head = self._head[:wanted], self._head[wanted:]
            return chunk
        return self._stream.read(wanted)


# --- Multipart into the spool ------------------------------------------------------------------


class Spooled(UploadedFile):
    """A form-uploaded file already written to an incoming spool file."""

    def __init__(
        self, spool_path: Path, name: str, size: int, *, too_large: bool, limit: int
    ) -> None:
        super().__init__(file=None, name=name, size=size)
        self.spool_path = spool_path
        self.too_large = too_large
        self.limit = limit

    def close(self) -> None:
        """Nothing is open: the bytes are in the spool file, which ingest consumes."""


class SpoolUploadHandler(FileUploadHandler):
    """Writes each multipart file into an incoming spool file as it arrives.

    A file over its limit (an image's, or a zip's once its first bytes show it is one) stops
    being written and is reported as too large; the rest of the form is still read.
    """

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(request)
        self.spool: Spool = get_spool()
        self.created: list[Path] = []
        self._file: IO[bytes] | None = None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.path = self.spool.new_incoming()
        self.created.append(self.path)
        self._file = self.path.open("wb")
        self.written = 0
        self.limit = max_upload_bytes()
        self.too_large = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if start == 0:
            self.limit = _limit_for(raw_data[:132])
        if self.too_large or self._file is None:
            return None
        if self.written + len(raw_data) > self.limit:
            self.too_large = True
            self._close()
            self.spool.discard(self.path)
            return None
        self._file.write(raw_data)
        self.written += len(raw_data)
        return None

    def file_complete(self, file_size: int) -> Spooled:
        self._close()
        return Spooled(
            self.path, self.file_name or "", file_size, too_large=self.too_large, limit=self.limit
        )

    def upload_interrupted(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- What to tell the person -------------------------------------------------------------------


def _report(results: Iterable[MediaResult], facility: Facility) -> dict[str, Any]:
    """Per-file results and the studies they went to, for JSON and for the results page.

    Only studies of the uploading facility are described: an image already held for another
    facility is "already here" and nothing more is said about it.
    """
    results = list(results)
    study_ids = {result.study_id for result in results if result.study_id is not None}
    studies = {
        study.pk: study
        for study in Study.objects.filter(pk__in=study_ids, source_facility=facility).order_by(
            "received_at"
        )
    }
    images_per_study: Counter[int] = Counter(
        result.study_id for result in results if result.study_id in studies
    )
    report: dict[str, Any] = {
        "results": [_result_json(result, studies) for result in results],
        "studies": [_study_json(study, images_per_study[study.pk]) for study in studies.values()],
    }
    groups = Counter(result["group"] for result in report["results"])
    report["counts"] = {group: groups[group] for group in ("problem", "ok", "other")}
    report["waiting"] = sum(study["waiting"] for study in report["studies"])
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> list[str]:
    """The results in a few plain sentences (the page's script writes the same ones)."""
    outcomes = Counter(result["outcome"] for result in report["results"])
    groups = Counter(result["group"] for result in report["results"])
    studies, waiting = len(report["studies"]), sum(s["waiting"] for s in report["studies"])
    lines = []
    received = outcomes[ResultOutcome.ACCEPTED]
    if received or not (outcomes[ResultOutcome.DUPLICATE] or groups["problem"]):
        where = f" in {_count(studies, 'study', 'studies')}" if received and studies else ""
        lines.append(f"{_count(received, 'image')} received{where}.")
    if outcomes[ResultOutcome.DUPLICATE]:
        lines.append(
            f"{_count(outcomes[ResultOutcome.DUPLICATE], 'image was', 'images were')} already "
            "here; nothing changed."
        )
    if groups["problem"]:
        lines.append(
            f"{_count(groups['problem'], 'file')} could not be stored; the reasons are below."
        )
    if groups["other"]:
        lines.append(
            f"{_count(groups['other'], 'other file')} set aside: not images (for example the "
            "disc's index or its viewer program)."
        )
    if waiting == 1:
        lines.append("1 study needs matching to a patient before it can be shared.")
    elif waiting:
        lines.append(f"{waiting} studies need matching to a patient before they can be shared.")
    return lines


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _result_json(result: MediaResult, studies: dict[int, Study]) -> dict[str, Any]:
    label, tone = _LABELS[result.outcome]
    if result.reason == MediaReason.CD_INDEX:
        label = "CD index"
    elif result.is_other_file and result.outcome == ResultOutcome.REFUSED:
        label, tone = "Not an image", ""
    study = studies.get(result.study_id) if result.study_id is not None else None
    return {
        "name": result.name,
        "outcome": result.outcome.value,
        "message": result.message,
        "reason": result.reason,
        "label": label,
        "tone": tone,
        "group": "other" if result.is_other_file else "problem" if result.is_problem else "ok",
        "study": str(study.public_id) if study is not None else None,
    }


def _study_json(study: Study, images: int) -> dict[str, Any]:
    parts = ["/".join(study.modalities) or "Study"]
    if study.study_date:
        parts.append(date_format(study.study_date, "DATE_FORMAT"))
    if study.description:
        parts.append(study.description)
    waiting = study.match != Study.Match.MATCHED
    return {
        "id": str(study.public_id),
        "label": " · ".join(parts),
        "images": images,
        "waiting": waiting,
        "why": study.match_reason if waiting else "",
        "status": (
            "Needs matching to a patient" if waiting else "Filed under the patient's record"
        ),
    }
