"""Downloads of a study, or one series, as a zip of the DICOM files with a DICOMDIR.

A thin layer over `sharing.archive`: resolve who reads (a `ReadAccess`), then hand everything
to `download_response`, which checks, plans, audits and streams. The signed-in routes here
resolve the access with `signed_in_access`; a share-link route resolves it from the link's
verified session and reuses the rest unchanged:

    link_study_download = policy(PUBLIC)(require_GET(make_download_view(resolve_link_access)))

where `resolve_link_access(request, study, **route_kwargs)` gets the URL's other arguments
(the link's id) and returns a `ReadAccess`, None (404, audited here) or a response of its own
(e.g. "access was withdrawn").

What the person sees: a zip whose size the browser knows from the start; a plain error page
(no zip) when images are still being stored or an object is missing; and, when access ends
while the download runs, a download that fails rather than a smaller zip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.policies import LOGIN, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import DetailValue, audit_record
from sharing.access import AccessResolver, ReadAccess, signed_in_resolver
from sharing.archive import (
    AccessEnded,
    ArchiveError,
    ArchiveNotReady,
    ObjectsMissing,
    StudyArchive,
    archive_file_name,
    plan_study_archive,
)
from sharing.crypto import IntegrityError
from sharing.services import ObjectUnavailable
from sharing.store import ObjectMissing, StoreUnavailable
from studies.models import Series, Study

logger = logging.getLogger(__name__)


# Who may read `study` in this request, called as `resolve(request, study, **route_kwargs)` with
# the URL's other arguments (a share link's id): a ReadAccess, None (not found: the view answers
# 404 and audits it) or a response to send instead (a page saying access was withdrawn). Any
# signature that accepts that call will do, hence `...`.


def make_download_view(resolve: AccessResolver) -> Callable[..., HttpResponseBase]:
    """A download view `(request, study_id, series_id=None, **route_kwargs)` that resolves the
    access with `resolve`; decorate it with its policy and `require_GET` where it is routed."""

    def view(
        request: HttpRequest, study_id: str, series_id: str | None = None, **route_kwargs: Any
    ) -> HttpResponseBase:
        study = Study.objects.filter(public_id=study_id).exclude(state=Study.State.SHREDDED).first()
        if study is None:
            raise Http404("No such study")
        resolved = resolve(request, study, **route_kwargs)
        if isinstance(resolved, HttpResponseBase):
            return resolved
        if resolved is None:
            _audit_download(request, None, study, None, Outcome.DENIED)
            raise Http404("No such study")
        series = None
        if series_id is not None:
            series = Series.objects.filter(public_id=series_id, study=study).first()
            if series is None:
                _audit_download(
                    request, resolved, study, None, Outcome.DENIED, {"reason": "no_such_series"}
                )
                raise Http404("No such series")
        return download_response(request, study, resolved, series=series)

    return view


def download_response(
    request: HttpRequest, study: Study, access: ReadAccess, *, series: Series | None = None
) -> HttpResponseBase:
    """The zip of `study` (or of `series`, one of its series) for a reader already allowed,
    or the error page that says why it cannot be had now; audited either way."""
    if not access.allows(study):  # whatever resolved the access, the decision has the last word
        _audit_download(request, access, study, series, Outcome.DENIED)
        raise Http404("No such study")
    try:
        archive = plan_study_archive(study, series=series)
    except ArchiveNotReady as exc:
        return _unavailable(request, str(exc), status=503, retry_after=60)
    except ObjectsMissing as exc:
        logger.critical(
            "ALERT: download of study %s refused: no stored object for instances %s",
            study.pk,
            ",".join(str(pk) for pk in exc.instance_ids[:20]),
        )
        _audit_download(
            request, access, study, series, Outcome.ERROR, {"missing": len(exc.instance_ids)}
        )
        return _unavailable(request, MISSING_MESSAGE, status=500)
    except StoreUnavailable:
        logger.error("Download of study %s refused: the object store is unavailable", study.pk)
        _audit_download(request, access, study, series, Outcome.ERROR, {"reason": "store"})
        return _unavailable(request, STORE_DOWN_MESSAGE, status=503, retry_after=60)
    except ArchiveError as exc:
        return _unavailable(request, str(exc), status=500)
    _audit_download(
        request,
        access,
        study,
        series,
        Outcome.ALLOWED,
        {"instances": len(archive.instances), "bytes": archive.content_length},
    )
    response = StreamingHttpResponse(
        _guarded(request, access, archive), content_type="application/zip"
    )
    response["Content-Length"] = str(archive.content_length)
    response["Content-Disposition"] = f'attachment; filename="{archive_file_name(study, series)}"'
    # Images of a person: no cache, proxy or browser history keeps a copy. nginx would
    # otherwise buffer a fast response in its temporary files: decrypted images on its disk,
    # and a withdrawal that no longer stops what the client receives.
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


MISSING_MESSAGE = (
    "Some of these images cannot be read from storage, so no download was started: it would "
    "be incomplete. The problem has been reported to the portal's operators."
)
STORE_DOWN_MESSAGE = "The image storage is not answering just now. Please try again in a minute."


def _guarded(request: HttpRequest, access: ReadAccess, archive: StudyArchive) -> Iterator[bytes]:
    """The archive's bytes; a stop is logged and audited, then raised on, so that the server
    breaks the response off before the central directory (never a valid, smaller zip)."""
    study, series = archive.study, archive.series
    sent = 0
    try:
        for chunk in archive.stream(access):
            sent += len(chunk)
            yield chunk
    except AccessEnded as exc:
        logger.info("Download of study %s stopped: access ended", study.pk)
        _audit_download(
            request,
            access,
            study,
            series,
            Outcome.DENIED,
            {"stopped": True, "instance": exc.instance.pk, "sent_bytes": sent},
        )
        raise
    except (StoreUnavailable, ObjectMissing, ObjectUnavailable, IntegrityError) as exc:
        # IntegrityError was already raised as an alert by read_instance; the others mean an
        # object went away or the store failed after the check before the first byte.
        logger.critical("ALERT: download of study %s broke off: %s", study.pk, type(exc).__name__)
        _audit_download(
            request,
            access,
            study,
            series,
            Outcome.ERROR,
            {"stopped": True, "reason": type(exc).__name__, "sent_bytes": sent},
        )
        raise


def _audit_download(
    request: HttpRequest,
    access: ReadAccess | None,
    study: Study,
    series: Series | None,
    outcome: str,
    detail: dict[str, DetailValue] | None = None,
) -> None:
    """THE place where a download is audited as a whole (each instance read is audited by
    `read_instance` besides): allowed when it starts, denied (refused, or stopped because
    access ended), error (an object missing, the store failing). The patient's access log and
    the download e-mail read these rows."""
    if outcome == Outcome.ERROR:
        action = Action.DOWNLOAD_FAILED
    elif series is not None:
        action = Action.SERIES_DOWNLOADED
    else:
        action = Action.STUDY_DOWNLOADED
    reader = access.reader if access is not None else None
    audit_record(
        action=action,
        outcome=outcome,
        request=request,
        actor_kind=reader.actor_kind if reader else None,
        actor_id=reader.actor_id if reader else "",
        facility_id=reader.facility_id if reader else None,
        target_kind=TargetKind.SERIES if series is not None else TargetKind.STUDY,
        target_id=series.pk if series is not None else study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
        purpose=reader.purpose if reader else "",
        detail=detail,
    )


def _unavailable(
    request: HttpRequest, message: str, *, status: int, retry_after: int | None = None
) -> HttpResponse:
    response = render(
        request, "sharing/download_unavailable.html", {"message": message}, status=status
    )
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    return response


# --- Signed-in people: the patient, and staff for their facility ---------------------------------


_signed_in_download = make_download_view(signed_in_resolver)


@policy(LOGIN)
@require_GET
def study_download(request: HttpRequest, study_id: str) -> HttpResponseBase:
    return _signed_in_download(request, study_id)


@policy(LOGIN)
@require_GET
def series_download(request: HttpRequest, study_id: str, series_id: str) -> HttpResponseBase:
    return _signed_in_download(request, study_id, series_id)
