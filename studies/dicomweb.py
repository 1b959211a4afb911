"""DICOMweb STOW-RS (PS3.18 10.5): facility systems push instances in with an API token.

`POST /dicomweb/studies` and `POST /dicomweb/studies/{StudyInstanceUID}` take a
`multipart/related; type="application/dicom"` body of DICOM Part 10 files. Every part ends in
`study_ingest_instance` like any other way in; this module only does HTTP: the token, the
media types, reading the body, and the Store Instances Response (PS3.18 Annex I, as
`application/dicom+json`).

How a request is handled, and why:

1. The token comes first, before the method or anything in the body is looked at, so that
   nothing about the endpoint leaks to callers without one. Every refusal is audited.
2. The body is streamed: read in 1 MiB chunks from the WSGI input, cut into parts by
   `iter_multipart_related`, each part written straight into its own incoming spool file. A
   300-image CT study is 150 MB; holding it in memory per request would cap the portal at a
   few concurrent senders. A part larger than INGEST_MAX_INSTANCE_BYTES stops being written
   at one byte over the limit (the rest is read and dropped), so the ingest service refuses
   it as too large without any process ever holding it.
3. Parts are ingested only once the closing boundary has arrived. A body that breaks off
   (the sender crashed, the connection dropped, the boundary is wrong) is answered 400 with
   *nothing* stored, not even the complete parts before the break: PS3.18 defines 400 as
   "unable to store any Instances due to bad syntax", and a sender that sees 400 will resend
   the whole request, which is then stored exactly once instead of half twice.
4. The response status follows PS3.18 Table 10.5.3-1: 200 when every instance is held
   (re-sent identical instances count as held), 202 when some failed, 409 when none is held.
   Each failed instance is in FailedSOPSequence with its Failure Reason; the same reasons in
   words, for people reading logs, are in a `Warning` header: PS3.18 writes its warnings as
   `Warning: 299 <service>: <text>` (e.g. 11.7.3.2); here they are RFC 7234 warning-values
   whose text starts with the DICOM code, as PS3.18 13.4.3.2 recommends.

Decisions a sender may need to know (they belong in the conformance statement):

- `type` in the request Content-Type may be quoted or not, and may be left out (some hand-made
  and older clients do; every part is checked as DICOM anyway). Any other `type` is 415.
- The media type of each part is not checked: the bytes are, by the same validation every
  way in uses. So `application/octet-stream` parts holding Part 10 files are stored.
- Chunked request bodies are read when the WSGI server says it has de-chunked and will end the
  stream (`wsgi.input_terminated`, as gunicorn does); otherwise (Django's development server)
  the request must carry Content-Length, or it is answered 411.
- An instance of another study than the one in the URL is not stored; Failure Reason A900
  (PS3.18 Table I.2-2 "Data Set does not match", the code the A9xx class gives to an
  instance that does not fit what the request says it is; PS3.18 names "Study Instance UID
  mismatch" as the typical 409). The check parses the instance once more before ingest,
  which costs a little time only when the URL names a study.
- A part that cannot be read as DICOM has no UIDs to name it by: its FailedSOPSequence item
  carries empty ReferencedSOPClassUID/ReferencedSOPInstanceUID, and the Warning header
  names it by its position in the body ("part 3").
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.http import parse_header_parameters
from django.views.decorators.csrf import csrf_exempt

from accounts.guesses import address_key, count_guess, guesses
from accounts.policies import TOKEN, policy
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import audit_record
from facilities.access import api_token_check
from facilities.models import APIToken
from studies.dicom import is_valid_uid
from studies.models import Instance
from studies.services import Channel, IngestResult, IngestSource, study_ingest_instance
from studies.spool import Spool, get_spool

logger = logging.getLogger(__name__)

# --- A streaming multipart/related parser ----------------------------------------------------

# RFC 2046 5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY_LENGTH = 70
# The header block of one part (Content-Type, Content-Length, Content-Location...). Real ones
# are under 200 bytes; the cap keeps a body without a blank line from being buffered whole.
MAX_PART_HEADER_BYTES = 16 * 1024
# Bytes before the first boundary (the preamble, RFC 2046) or after the last (the epilogue).
# Clients send none or a line; more means the boundary in Content-Type is not the one used.
MAX_PREAMBLE_BYTES = 64 * 1024
# Whitespace allowed between a boundary and its CRLF ("transport padding", RFC 2046).
MAX_TRANSPORT_PADDING = 64

_DELIMITER_LINE_END = re.compile(rb"[ \t]*\r\n")
_DELIMITER_LINE_END_SO_FAR = re.compile(rb"[ \t]*\r?")


class MultipartError(ValueError):
    """The body is not a well-formed multipart body. The message says where, for people."""


@dataclass(frozen=True, slots=True)
class PartStart:
    number: int  # 1-based, as people count parts
    headers: dict[str, str]  # names in lower case


@dataclass(frozen=True, slots=True)
class PartData:
    data: memoryview  # a view into an immutable chunk: valid for as long as it is kept


@dataclass(frozen=True, slots=True)
class PartEnd:
    number: int


MultipartEvent = PartStart | PartData | PartEnd


class _Delimiter(enum.Enum):
    NEXT_PART = "next part"
    CLOSE = "close"
    INCOMPLETE = "need more bytes to tell"
    NOT_A_DELIMITER = "data that looks like a delimiter"


def _what_follows(data: bytes, end: int) -> tuple[_Delimiter, int]:
    """Classify a delimiter candidate ending at `end`, and where what follows it starts.

    `--` closes the body; optional padding and CRLF start the next part. Anything else is
    data that only looks like a delimiter (a delimiter must end its line, RFC 2046 5.1.1):
    pixel bytes that happen to hold the boundary followed by something else are no reason to
    refuse an image.
    """
    if len(data) - end < 2:
        return _Delimiter.INCOMPLETE, end
    if data.startswith(b"--", end):
        return _Delimiter.CLOSE, end + 2
    line_end = _DELIMITER_LINE_END.match(data, end, end + MAX_TRANSPORT_PADDING + 2)
    if line_end is not None:
        return _Delimiter.NEXT_PART, line_end.end()
    if len(data) - end <= MAX_TRANSPORT_PADDING + 1 and _DELIMITER_LINE_END_SO_FAR.fullmatch(
        data, end
    ):
        return _Delimiter.INCOMPLETE, end
    return _Delimiter.NOT_A_DELIMITER, end


class _Window:
    """The input not consumed yet, as one immutable `bytes`, and the rest of the chunks.

    Each chunk is copied once, appended to the few bytes kept from the previous one (the tail
    that might begin a delimiter); parts are handed out as memoryviews of that `bytes`, which
    stay valid after the window moves on because `bytes` never changes.
    """

    __slots__ = ("_source", "data")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._source = iter(chunks)
        # The first boundary of a body usually has no CRLF in front of it, unlike every later
        # one; starting with a CRLF lets one search find both.
        self.data = b"\r\n"

    def advance(self, keep_from: int) -> bool:
        """Drop `data[:keep_from]` and append the next chunk; False at the end of the input."""
        for chunk in self._source:
            if chunk:
                self.data = self.data[keep_from:] + chunk
                return True
        self.data = self.data[keep_from:]
        return False

    def drain(self, limit: int) -> None:
        """Read and drop what is left, up to `limit` bytes (the epilogue)."""
        for chunk in self._source:
            limit -= len(chunk)
            if limit < 0:
                return


def iter_multipart_related(
    chunks: Iterable[bytes],
    boundary: bytes,
    *,
    max_header_bytes: int = MAX_PART_HEADER_BYTES,
) -> Iterator[MultipartEvent]:
    """Cut a multipart body (RFC 2046) arriving as `chunks` into parts, without holding any.

    Yields `PartStart`, then the part's bytes as zero or more `PartData`, then `PartEnd`, for
    each part in order, and returns after the closing boundary. Raises `MultipartError` when
    the body is malformed or ends before the closing boundary; events already yielded stand,
    so a caller that must not keep half a body discards what it wrote.

    Why a parser of our own: Django's parses only multipart/form-data and the email package
    reads whole messages into memory. Speed comes from `bytes.find` over whole chunks (C,
    no Python loop per byte); memory stays at one chunk plus a delimiter's length.
    """
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise MultipartError("The boundary must be 1 to 70 characters long.")
    delimiter = b"\r\n--" + boundary
    # A delimiter that starts in the last len-1 bytes may end in the next chunk: keep those.
    tail = len(delimiter) - 1
    window = _Window(chunks)
    ended_early = "The request body ended before its closing boundary"

    # The preamble, before the first delimiter, means nothing (RFC 2046) and is dropped.
    search_from = 0
    dropped = 0
    while True:
        found = window.data.find(delimiter, search_from)
        if found == -1:
            keep_from = max(len(window.data) - tail, 0)
            dropped += keep_from
            if dropped > MAX_PREAMBLE_BYTES or not window.advance(keep_from):
                raise MultipartError(
                    "The request body does not contain the boundary named in its Content-Type."
                )
            search_from = 0
            continue
        kind, position = _what_follows(window.data, found + len(delimiter))
        if kind is _Delimiter.NOT_A_DELIMITER:
            search_from = found + 1
        elif kind is _Delimiter.INCOMPLETE:
            if not window.advance(found):
                raise MultipartError(f"{ended_early}.")
            search_from = 0
        elif kind is _Delimiter.CLOSE:
            window.drain(MAX_PREAMBLE_BYTES)
            return
        else:
            break

    number = 0
    while True:
        number += 1
        # The part's header fields, up to the blank line; there may be none at all.
        while True:
            data = window.data
            if data.startswith(b"\r\n", position):
                headers_end, body_start = position, position + 2
                break
            blank_line = data.find(b"\r\n\r\n", position)
            if blank_line != -1:
                headers_end, body_start = blank_line, blank_line + 4
                break
            if len(data) - position > max_header_bytes:
                raise MultipartError(f"The headers of part {number} are too long.")
            if not window.advance(position):
                raise MultipartError(f"{ended_early}, in the headers of part {number}.")
            position = 0
        yield PartStart(number, _parse_part_headers(window.data[position:headers_end], number))

        # The part's bytes, up to the next delimiter.
        position = search_from = body_start
        while True:
            data = window.data
            found = data.find(delimiter, search_from)
            if found == -1:
                safe_end = max(position, len(data) - tail)
                if safe_end > position:
                    yield PartData(memoryview(data)[position:safe_end])
                if not window.advance(safe_end):
                    raise MultipartError(f"{ended_early}: part {number} is incomplete.")
                position = search_from = 0
                continue
            kind, after = _what_follows(data, found + len(delimiter))
            if kind is _Delimiter.NOT_A_DELIMITER:
                search_from = found + 1
                continue
            if found > position:
                yield PartData(memoryview(data)[position:found])
            if kind is _Delimiter.INCOMPLETE:
                if not window.advance(found):
                    raise MultipartError(f"{ended_early}: part {number} is incomplete.")
                position = search_from = 0
                continue
            yield PartEnd(number)
            position = after
            break

        if kind is _Delimiter.CLOSE:
            window.drain(MAX_PREAMBLE_BYTES)
            return


def _parse_part_headers(block: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise MultipartError(f"Part {number} has a header line that is not `Name: value`.")
        headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
    return headers


# --- Who is calling --------------------------------------------------------------------------

# Refused tokens per client address and window before the address is answered 429. A token's
# secret has 256 random bits, so this is not what makes guessing hopeless; it keeps a guesser
# (or a misconfigured system hammering with a revoked token) from filling the audit log.
TOKEN_GUESS_LIMIT = 20
TOKEN_GUESS_WINDOW_SECONDS = 600
_REALM = 'Bearer realm="DICOMweb"'


def _guess_key(request: HttpRequest) -> str:
    return address_key("dicomweb:token-guesses", request)


def _refuse_token(request: HttpRequest, reason: str, token: APIToken | None) -> HttpResponse:
    proven = token is not None and reason in ("expired", "revoked")
    audit_record(
        action=Action.API_TOKEN_REJECTED,
        outcome=Outcome.DENIED,
        request=request,
        actor_kind=ActorKind.API_TOKEN if proven else None,
        actor_id=token.public_id if proven and token else "",
        facility_id=token.facility_id if token else None,
        target_kind=TargetKind.API_TOKEN if token else "",
        target_id=token.pk if token else "",
        detail={"reason": reason, "method": request.method or ""},
    )
    if reason == "missing":
        message = "Send a facility API token: `Authorization: Bearer icp_...`."
        challenge = _REALM
    else:
        message = "The API token is not valid: it may be mistyped, expired or revoked."
        challenge = f'{_REALM}, error="invalid_token"'
    response = _text(message, 401)
    response["WWW-Authenticate"] = challenge
    return response


def authenticate_api_token(request: HttpRequest) -> APIToken | HttpResponse:
    """The active API token of `Authorization: Bearer ...`, or the refusal to answer with.

    Refusals are audited (without the presented token) and answered 401 with a Bearer
    challenge (RFC 6750); an address that keeps presenting bad tokens gets 429 for a while.
    """
    if guesses(_guess_key(request)) >= TOKEN_GUESS_LIMIT:
        response = _text("Too many refused API tokens from this address; try again later.", 429)
        response["Retry-After"] = str(TOKEN_GUESS_WINDOW_SECONDS)
        return response
    header = request.headers.get("Authorization", "").strip()
    if not header:
        return _refuse_token(request, "missing", None)
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        count_guess(_guess_key(request), TOKEN_GUESS_WINDOW_SECONDS)
        return _refuse_token(request, "not_bearer", None)
    check = api_token_check(raw)
    if check.active_token is not None:
        return check.active_token
    count_guess(_guess_key(request), TOKEN_GUESS_WINDOW_SECONDS)
    return _refuse_token(request, check.refusal, check.token)


def _refuse_scope(request: HttpRequest, token: APIToken, scope: str) -> HttpResponse:
    audit_record(
        action=Action.API_TOKEN_REJECTED,
        outcome=Outcome.DENIED,
        request=request,
        actor_kind=ActorKind.API_TOKEN,
        actor_id=token.public_id,
        facility_id=token.facility_id,
        target_kind=TargetKind.API_TOKEN,
        target_id=token.pk,
        detail={"reason": "scope", "scope": scope, "method": request.method or ""},
    )
    response = _text(f"This API token does not have the {scope} scope.", 403)
    response["WWW-Authenticate"] = f'{_REALM}, error="insufficient_scope", scope="{scope}"'
    return response


# --- The Store transaction -------------------------------------------------------------------

READ_CHUNK_BYTES = 1024 * 1024
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class _ReceivedPart:
    number: int
    path: Path


@dataclass(frozen=True)
class _PartOutcome:
    number: int
    ok: bool
    sop_class_uid: str
    sop_instance_uid: str
    instance_id: int | None = None
    failure_reason: int | None = None
    message: str = ""


class _IncomingPart:
    """One part being written into its incoming spool file, at most `limit` + 1 bytes of it.

    Why + 1: the ingest service then sees a file over the limit and refuses it as too large
    with the message and audit every way in gives, while no more than that is ever written.
    """

    def __init__(self, spool: Spool, number: int, limit: int) -> None:
        self.number = number
        self.path = spool.new_incoming()
        self._spool = spool
        self._room = limit + 1
        self._file = self.path.open("wb")

    def write(self, data: memoryview) -> None:
        if self._room <= 0:
            return
        if len(data) > self._room:
            data = data[: self._room]
        self._file.write(data)
        self._room -= len(data)

    def finish(self) -> _ReceivedPart:
        self._file.close()
        return _ReceivedPart(self.number, self.path)

    def abandon(self) -> None:
        self._file.close()
        self._spool.discard(self.path)


@policy(TOKEN)
@csrf_exempt  # a token in a header, never a cookie: there is no session to forge requests with
def stow(request: HttpRequest, study_instance_uid: str | None = None) -> HttpResponse:
    """STOW-RS: store the DICOM instances of a multipart/related body; see the module doc."""
    token = authenticate_api_token(request)
    if isinstance(token, HttpResponse):
        return token
    if request.method != "POST":
        # Search (QIDO-RS) on these URLs is still to come; until then only storing is here.
        response = _text("Only POST (STOW-RS) is served here.", 405)
        response["Allow"] = "POST"
        return response
    if not token.can_store:
        return _refuse_scope(request, token, "store")

    response_type = request.get_preferred_type([DICOM_JSON, "application/json"])
    if response_type is None:
        return _text(f"The response is {DICOM_JSON}, which the Accept header does not allow.", 406)
    boundary = _boundary_or_refusal(request)
    if isinstance(boundary, HttpResponse):
        return boundary
    if study_instance_uid is not None and not is_valid_uid(study_instance_uid):
        return _text("The study in the URL is not a valid Study Instance UID.", 400)
    stream = _body_stream(request)
    if stream is None:
        return _text("Send the body with Content-Length (or to a server that de-chunks).", 411)

    spool = get_spool()
    try:
        parts = _receive(stream, boundary, spool)
    except MultipartError as error:
        message = f"{error} Nothing from this request was stored; please send it again."
        return _text(message, 400, warning=_warning(request, message))
    if not parts:
        return _text("The request holds no instances.", 400)

    source = IngestSource(
        token.facility, Channel.STOW, ActorKind.API_TOKEN, token.public_id, request=request
    )
    outcomes = _ingest(parts, source, study_instance_uid, spool)
    stored = sum(outcome.ok for outcome in outcomes)
    logger.info("STOW-RS: %d of %d instances held", stored, len(outcomes))
    return _store_instances_response(request, outcomes, study_instance_uid, response_type)


def _boundary_or_refusal(request: HttpRequest) -> bytes | HttpResponse:
    media_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    part_type = params.get("type", "application/dicom").strip().lower()
    if media_type != "multipart/related" or part_type != "application/dicom":
        return _text(
            'Send instances as multipart/related; type="application/dicom" (DICOM Part 10 files).',
            415,
        )
    boundary = params.get("boundary", "")
    if not boundary:
        return _text("The Content-Type has no boundary parameter.", 400)
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        return _text("The boundary in the Content-Type is not plain ASCII.", 400)


def _body_stream(request: HttpRequest) -> IO[bytes] | HttpRequest | None:
    """Where to read the body from, or None when its end could not be told.

    With Content-Length, Django's request stream stops there. A chunked body has none; it
    can be read to its end only when the WSGI server de-chunks it and says so.
    """
    if request.META.get("CONTENT_LENGTH"):
        return request
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and request.META.get("wsgi.input_terminated"):
        wsgi_input: IO[bytes] = request.META["wsgi.input"]
        return wsgi_input
    return None


def _chunks(stream: IO[bytes] | HttpRequest) -> Iterator[bytes]:
    try:
        while chunk := stream.read(READ_CHUNK_BYTES):
            yield chunk
    except OSError as error:  # the client went away, or sent a broken chunked encoding
        raise MultipartError("The connection broke while the body was being received.") from error


def _receive(stream: IO[bytes] | HttpRequest, boundary: bytes, spool: Spool) -> list[_ReceivedPart]:
    """Write every part of the body into an incoming spool file; all or none of them."""
    limit = settings.INGEST_MAX_INSTANCE_BYTES
    received: list[_ReceivedPart] = []
    current: _IncomingPart | None = None
    try:
        for event in iter_multipart_related(_chunks(stream), boundary):
            match event:
                case PartData(data=data) if current is not None:
                    current.write(data)
                case PartStart(number=number):
                    current = _IncomingPart(spool, number, limit)
                case PartEnd() if current is not None:
                    received.append(current.finish())
                    current = None
    except BaseException:
        if current is not None:
            current.abandon()
        for part in received:
            spool.discard(part.path)
        raise
    return received


def _ingest(
    parts: list[_ReceivedPart], source: IngestSource, study_instance_uid: str | None, spool: Spool
) -> list[_PartOutcome]:
    outcomes: list[_PartOutcome] = []
    try:
        for part in parts:
            result = study_ingest_instance(
                path=part.path,
                source=source,
                spool=spool,
                expected_study_instance_uid=study_instance_uid,
            )
            outcomes.append(_outcome(part.number, result))
    finally:
        # Only after an unexpected error are there files left; they were not stored.
        for part in parts[len(outcomes) :]:
            spool.discard(part.path)
    return outcomes


def _outcome(number: int, result: IngestResult) -> _PartOutcome:
    return _PartOutcome(
        number=number,
        ok=result.ok,
        sop_class_uid=result.sop_class_uid,
        sop_instance_uid=result.sop_instance_uid,
        instance_id=result.instance.pk if result.ok and result.instance else None,
        failure_reason=result.stow_failure_reason,
        message=result.message,
    )


# --- The Store Instances Response (PS3.18 Annex I, in the JSON of PS3.18 Annex F) -------------


def _attribute(vr: str, value: str | int | list[Any] | None) -> dict[str, Any]:
    """One attribute in DICOM JSON; an empty value has no "Value" (PS3.18 F.2.5)."""
    if value in (None, "", []):
        return {"vr": vr}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def _store_instances_response(
    request: HttpRequest,
    outcomes: list[_PartOutcome],
    study_instance_uid: str | None,
    response_type: str,
) -> HttpResponse:
    held = [outcome for outcome in outcomes if outcome.ok]
    failed = [outcome for outcome in outcomes if not outcome.ok]
    # One query for the series and study of every held instance (new or re-sent alike).
    where = {
        pk: (series_uid, study_uid)
        for pk, series_uid, study_uid in Instance.objects.filter(
            pk__in=[outcome.instance_id for outcome in held]
        ).values_list("pk", "series__series_instance_uid", "study__study_instance_uid")
    }

    study_urls: dict[str, str] = {}

    def study_url(study_uid: str) -> str:
        if study_uid not in study_urls:
            path = reverse("dicomweb:study", kwargs={"study_instance_uid": study_uid})
            study_urls[study_uid] = request.build_absolute_uri(path)
        return study_urls[study_uid]

    referenced = []
    for outcome in held:
        series_uid, study_uid = where.get(outcome.instance_id or 0, ("", ""))
        instance_url = (
            f"{study_url(study_uid)}/series/{series_uid}/instances/{outcome.sop_instance_uid}"
        )
        referenced.append(
            {
                "00081150": _attribute("UI", outcome.sop_class_uid),
                "00081155": _attribute("UI", outcome.sop_instance_uid),
                "00081190": _attribute("UR", instance_url),
            }
        )
    studies = {study_uid for _series_uid, study_uid in where.values()}
    the_study = study_instance_uid or (studies.pop() if len(studies) == 1 else None)

    # Retrieve URL (Type 2) names the study when there is one; the two sequences are Type 1C,
    # present only when they have items.
    body: dict[str, Any] = {
        "00081190": _attribute("UR", study_url(the_study) if the_study else None)
    }
    if failed:
        body["00081198"] = _attribute(
            "SQ",
            [
                {
                    "00081150": _attribute("UI", outcome.sop_class_uid),
                    "00081155": _attribute("UI", outcome.sop_instance_uid),
                    "00081197": _attribute("US", outcome.failure_reason),
                }
                for outcome in failed
            ],
        )
    if referenced:
        body["00081199"] = _attribute("SQ", referenced)

    status = 200 if not failed else 202 if held else 409
    response = HttpResponse(json.dumps(body), status=status, content_type=response_type)
    if failed:
        response["Warning"] = _failure_warnings(request, failed)
    return response


def _failure_warnings(request: HttpRequest, failed: list[_PartOutcome]) -> str:
    """One warning per distinct reason, naming the parts: `A700 (parts 2, 5): The file is...`."""
    by_reason: dict[tuple[int | None, str], list[int]] = {}
    for outcome in failed:
        by_reason.setdefault((outcome.failure_reason, outcome.message), []).append(outcome.number)
    warnings = []
    for (code, message), numbers in by_reason.items():
        shown = ", ".join(str(number) for number in numbers[:10])
        more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
        which = f"part{'s' if len(numbers) > 1 else ''} {shown}{more}"
        warnings.append(_warning(request, f"{code or 0:04X} ({which}): {message}"))
    return ", ".join(warnings)


_TYPOGRAPHY = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": "'", "\u201d": "'"}
)


def _warning(request: HttpRequest, text: str) -> str:
    """An RFC 7234 warning-value with code 299 ("miscellaneous persistent warning")."""
    ascii_text = text.translate(_TYPOGRAPHY).encode("ascii", "replace").decode("ascii")
    quoted = ascii_text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {request.get_host()} "{quoted}"'


def _text(message: str, status: int, *, warning: str | None = None) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    if warning:
        response["Warning"] = warning
    return response
