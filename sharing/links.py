"""Share links: a patient (or the front desk for them) shares chosen studies with a named
clinician, who has no account.

How a link works, end to end:

- **Making it** (`create_share_link`): the link reads under a consent grant, which is reused
  when one in force already covers the recipient, the purpose and every chosen study, and is
  otherwise given through `consent.services.grant_consent` (grantee: the facility chosen from
  the directory, or the clinician's e-mail address). The link carries a random token of 256
  bits (`secrets.token_urlsafe(32)`); only its SHA-256 is stored, and the token is shown once
  and e-mailed to the recipient (`email_share_link`). It expires after `LINK_DEFAULT_DAYS`
  unless the patient chose otherwise, and never after its grant.
- **Opening it**: `/s/<token>` finds the link by the token's hash and remembers in the browser
  session that this session holds the token; the token never appears in a URL again. The
  recipient then proves they hold the e-mail address: `request_code` e-mails a 6-digit code
  (kept only as a keyed hash, valid `LINK_CODE_VALIDITY_SECONDS`, `LINK_CODE_MAX_ATTEMPTS`
  tries, used once) and `verify_code` checks it and binds the session to the link.
- **The session binding**: the Django session holds, under `SESSION_KEY`, the ids of the links
  it proved the code for, each with the time. It is a claim only: `link_read_access` checks the
  link row (revoked? expired? grant withdrawn?) on every request, and its `allows` asks the
  access decision again every time it is called, so revocation and withdrawal stop the next
  page, frame or segment.
- **Guessing**: refused tokens are counted per client address, wrong codes per link and per
  address, and codes sent per link and per address (cache counters; `LINK_*` settings). Past a
  limit the step is refused until the window ends. Every refusal is audited. A cache that is
  down refuses rather than lets guesses through.
- **Telling people**: the patient is e-mailed when a link is first opened and when images are
  downloaded (`notify_download`, at most once per link per `LINK_DOWNLOAD_NOTICE_MINUTES`), each
  as the patient chose; the recipient when a link is about to expire or was ended. E-mails carry
  no clinical details: no patient name, no exam, no study date. They are sent by tasks in
  `sharing.tasks`, except the code and the link itself, which the person waits for and which
  must never rest in the broker.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import smtplib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.guesses import address_key, count_guess, guesses
from accounts.models import User
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import audit_record
from consent.decision import LinkActor, decide, in_scope
from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from consent.selectors import grant_last_day, grant_preview
from consent.services import ConsentError, GrantRequest, grant_consent
from facilities.models import Facility, Membership
from sharing.access import ReadAccess
from sharing.models import ShareLink, ShareLinkCode
from sharing.services import Reader
from studies.access import RECONCILING_ROLES, patients_visible_to_facility, studies_of_patient
from studies.invitations import recent_verification
from studies.models import Patient, Study

logger = logging.getLogger(__name__)

# The purposes a link may be made for. Research and education need de-identified copies,
# which links do not serve.
LINK_PURPOSES = (
    Purpose.TREATMENT,
    Purpose.SECOND_OPINION,
    Purpose.TRANSFER_OF_CARE,
    Purpose.EMERGENCY,
)
# secrets.token_urlsafe(32): 256 random bits, always 43 characters of the URL-safe alphabet.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
CODE_LENGTH = 6
# Where the browser session keeps the links it holds the token of, and those it proved.
SESSION_KEY = "sharing_links"
# A session that presented the token has this long to ask for and enter a code.
TOKEN_SESSION_SECONDS = 3600
FACILITY_NAME_MAX_LENGTH = 200

# Why a link serves nothing (LinkRefused.reason), and how the recipient's pages answer.
UNKNOWN = "unknown"
EXPIRED = "expired"
REVOKED = "revoked"
WITHDRAWN = "withdrawn"
NOT_VERIFIED = "not_verified"


class ShareLinkError(Exception):
    """A link that cannot be made as asked; the message says why in plain words."""


class LinkRefused(Exception):
    """The link serves nothing to this request: `reason` is one of unknown, expired, revoked,
    withdrawn or not_verified (this browser has not proved the code, or no longer does)."""

    def __init__(self, reason: str, link: ShareLink | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link = link


class CodeNotSent(Exception):
    """No code was sent: too many asked for (`reason` "rate_limited") or the mail server
    failed ("mail_failed")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CodeCheck(enum.StrEnum):
    """What `verify_code` found."""

    OK = "ok"
    WRONG = "wrong"
    MALFORMED = "malformed"
    EXPIRED = "expired"  # the code's few minutes are over
    NO_CODE = "no_code"  # none was sent, or the newest was already used
    USED_UP = "used_up"  # the code's attempts are spent
    RATE_LIMITED = "rate_limited"  # too many wrong codes for this link or from this address


# --- Making a link ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareLinkRequest:
    """What the patient (or the front desk for them) asks for."""

    patient: Patient
    studies: Sequence[Study]
    recipient_email: str
    purpose: str
    recipient_facility: Facility | None = None
    recipient_facility_name: str = ""
    days: int | None = None  # None: LINK_DEFAULT_DAYS
    notify_on_open: bool = True
    notify_on_download: bool = True


@dataclass(frozen=True)
class ShareLinkPreview:
    """What `create_share_link` would do, for the confirmation page."""

    studies: list[Study]
    recipient_email: str
    facility_label: str
    purpose_label: str
    expires_at: datetime
    # The link ends sooner than asked because its grant (or the studies) end sooner.
    capped: bool
    reused_grant: ConsentGrant | None
    # Who the grant names and its last day, for a grant that would be given now.
    grantee: str
    grant_last_day: date

    @property
    def new_grant(self) -> bool:
        return self.reused_grant is None

    @property
    def grantee_is_facility(self) -> bool:
        return self.grantee != self.recipient_email


@dataclass(frozen=True)
class _Checked:
    """A request's values once checked."""

    email: str
    facility_name: str
    days: int
    studies: list[Study]


def _checked(wanted: ShareLinkRequest, *, by: User, on_behalf_at: Facility | None) -> _Checked:
    """Check what was asked for; returns the cleaned values. Raises ShareLinkError (bad input)
    or PermissionDenied (an actor who may not share this patient's studies)."""
    _check_actor(wanted.patient, by=by, on_behalf_at=on_behalf_at)
    email = wanted.recipient_email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ShareLinkError("Enter the clinician's e-mail address.") from None
    if wanted.purpose not in LINK_PURPOSES:
        raise ShareLinkError(
            "Choose what the images are for: treatment, a second opinion, a transfer of care "
            "or emergency treatment."
        )
    facility_name = " ".join(wanted.recipient_facility_name.split())
    if (wanted.recipient_facility is None) == (not facility_name):
        raise ShareLinkError("Choose the clinician's facility, or type its name if not listed.")
    if len(facility_name) > FACILITY_NAME_MAX_LENGTH:
        raise ShareLinkError(
            f"Keep the facility's name to {FACILITY_NAME_MAX_LENGTH} characters or fewer."
        )
    days = settings.LINK_DEFAULT_DAYS if wanted.days is None else wanted.days
    if not 1 <= days <= settings.LINK_MAX_DAYS:
        raise ShareLinkError(f"A link lasts from 1 to {settings.LINK_MAX_DAYS} days.")
    studies = _check_studies(wanted, on_behalf_at=on_behalf_at)
    if on_behalf_at is not None and recent_verification(wanted.patient, on_behalf_at) is None:
        raise ShareLinkError("Check the patient's identity first, then make the link.")
    return _Checked(email=email, facility_name=facility_name, days=days, studies=studies)


def _check_actor(patient: Patient, *, by: User, on_behalf_at: Facility | None) -> None:
    if on_behalf_at is None:
        if not by.is_authenticated or patient.account_id != by.pk:
            raise PermissionDenied("Only the patient shares their own images.")
        return
    member = Membership.objects.filter(
        user=by, facility=on_behalf_at, role__in=RECONCILING_ROLES
    ).exists()
    if not (by.is_active and member):
        raise PermissionDenied("Only the front desk of this facility may do this.")
    if not patients_visible_to_facility(on_behalf_at).filter(pk=patient.pk).exists():
        raise PermissionDenied("This patient is not a patient of this facility.")


def shareable_studies(patient: Patient, *, held_by: Facility | None = None) -> QuerySet[Study]:
    """The patient's studies a link may name: filed under them, available, not past retention.
    The front desk shares only what its own facility holds."""
    today = timezone.localdate()
    studies = (
        studies_of_patient(patient)
        .filter(state=Study.State.AVAILABLE)
        .filter(Q(available_until__gte=today) | Q(legal_hold=True))
    )
    if held_by is not None:
        studies = studies.filter(source_facility=held_by)
    return studies.select_related("source_facility").order_by("-study_date", "-pk")


def _check_studies(wanted: ShareLinkRequest, *, on_behalf_at: Facility | None) -> list[Study]:
    chosen = {study.pk for study in wanted.studies}
    if not chosen:
        raise ShareLinkError("Choose at least one study to share.")
    studies = list(shareable_studies(wanted.patient, held_by=on_behalf_at).filter(pk__in=chosen))
    if len(studies) != len(chosen):
        raise ShareLinkError("Choose among the studies listed: one of them cannot be shared.")
    return studies


def _grantee(wanted: ShareLinkRequest, email: str) -> dict[str, Any]:
    if wanted.recipient_facility is not None:
        return {"grantee_facility": wanted.recipient_facility}
    return {"grantee_email": email}


def _reusable_grant(
    wanted: ShareLinkRequest,
    studies: list[Study],
    email: str,
    *,
    until: datetime | None,
    now: datetime,
) -> ConsentGrant | None:
    """A grant in force for this recipient and purpose that covers every study, with its
    originals (not a de-identified grant), lasting at least `until` when given; the longest
    such grant otherwise."""
    grantee = _grantee(wanted, email)
    grants = (
        ConsentGrant.objects.select_related("withdrawal", "grantee_facility")
        .filter(
            patient=wanted.patient,
            purpose=wanted.purpose,
            deidentify=False,
            valid_from__lte=now,
            valid_until__gt=now,
            withdrawal__isnull=True,
            **grantee,
        )
        .order_by("-valid_until", "-pk")
    )
    if until is not None:
        grants = grants.filter(valid_until__gte=until)
    for grant in grants:
        if all(in_scope(grant, study) for study in studies):
            return grant
    return None


def share_link_preview(
    wanted: ShareLinkRequest,
    *,
    by: User,
    on_behalf_at: Facility | None = None,
    now: datetime | None = None,
) -> ShareLinkPreview:
    """What the link would be, read without writing, for the confirmation page. Raises what
    `create_share_link` raises; it checks everything again when it makes the link."""
    now = now or timezone.now()
    clean = _checked(wanted, by=by, on_behalf_at=on_behalf_at)
    asked_until = now + timedelta(days=clean.days)
    grant = _reusable_grant(wanted, clean.studies, clean.email, until=asked_until, now=now)
    if grant is None and on_behalf_at is not None:
        grant = _staff_grant(wanted, clean, now=now)
    if grant is not None:
        grantee = grant.grantee_facility.name if grant.grantee_facility else grant.grantee_email
        last_day, grant_end = grant_last_day(grant), grant.valid_until
    else:
        try:
            draft = grant_preview(_grant_request(wanted, clean), now=now)
        except ConsentError as error:
            raise ShareLinkError(str(error)) from error
        grantee, last_day = draft.grantee, draft.last_day
        grant_end = _day_end(last_day)
    return ShareLinkPreview(
        studies=clean.studies,
        recipient_email=clean.email,
        facility_label=wanted.recipient_facility.name
        if wanted.recipient_facility
        else clean.facility_name,
        purpose_label=Purpose(wanted.purpose).label,
        expires_at=min(asked_until, grant_end),
        capped=grant_end < asked_until,
        reused_grant=grant,
        grantee=grantee,
        grant_last_day=last_day,
    )


def _day_end(day: date) -> datetime:
    """The midnight after `day`, local time: when a grant whose last day it is ends."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.get_current_timezone())
    return start + timedelta(days=1)


def _staff_grant(wanted: ShareLinkRequest, clean: _Checked, *, now: datetime) -> ConsentGrant:
    """The front desk shares under a consent the patient already gave (online, or on a signed
    authorization): staff never give consent on a patient's word alone."""
    grant = _reusable_grant(wanted, clean.studies, clean.email, until=None, now=now)
    if grant is None:
        who = wanted.recipient_facility.name if wanted.recipient_facility else clean.email
        raise ShareLinkError(
            f"No consent in force lets {who} see these studies for "
            f"{Purpose(wanted.purpose).label.lower()}. Capture the patient's signed "
            "authorization first, then make the link."
        )
    return grant


def _grant_request(wanted: ShareLinkRequest, clean: _Checked) -> GrantRequest:
    return GrantRequest(
        patient=wanted.patient,
        purpose=wanted.purpose,
        scope=ConsentGrant.Scope.CHOSEN,
        studies=clean.studies,
        source=ConsentGrant.Source.PATIENT_ONLINE,
        **_grantee(wanted, clean.email),
    )


def create_share_link(
    wanted: ShareLinkRequest,
    *,
    by: User,
    on_behalf_at: Facility | None = None,
    request: HttpRequest | None = None,
) -> tuple[ShareLink, str]:
    """Make a link; returns it with its raw token, which is never stored and must be shown
    (or e-mailed, `email_share_link`) now or never.

    The patient (`by` is their account) shares under a grant that covers the recipient, the
    purpose and every study until the link's end, reused when one is in force and given now
    otherwise. The front desk (`on_behalf_at`: the facility where `by` registers patients, and
    which holds the studies) only reuses a grant in force, and the patient's identity must
    have been checked at that desk within the last day. The link ends after the days asked
    for, or with its grant if that comes first.
    """
    now = timezone.now()
    clean = _checked(wanted, by=by, on_behalf_at=on_behalf_at)
    asked_until = now + timedelta(days=clean.days)
    with transaction.atomic():
        grant = _reusable_grant(wanted, clean.studies, clean.email, until=asked_until, now=now)
        reused = grant is not None
        if grant is None and on_behalf_at is not None:
            grant = _staff_grant(wanted, clean, now=now)
            reused = True
        if grant is None:
            try:
                grant = grant_consent(_grant_request(wanted, clean), by=by, request=request)
            except ConsentError as error:
                raise ShareLinkError(str(error)) from error
        else:
            # withdraw_consent takes the grant's row lock: either a withdrawal racing this link
            # committed first and is seen here, or it waits and then ends this link too.
            ConsentGrant.objects.select_for_update().filter(pk=grant.pk).get()
            if ConsentWithdrawal.objects.filter(grant=grant).exists():
                raise ShareLinkError("That consent was just withdrawn. Start again.")
        token = secrets.token_urlsafe(32)
        link = ShareLink.objects.create(
            token_hash=token_digest(token),
            grant=grant,
            recipient_email=clean.email,
            recipient_facility=wanted.recipient_facility,
            recipient_facility_name=clean.facility_name,
            purpose=grant.purpose,
            created_by=by,
            created_at=now,
            expires_at=min(asked_until, grant.valid_until),
            notify_on_open=wanted.notify_on_open,
            notify_on_download=wanted.notify_on_download,
        )
        link.studies.set(clean.studies)
        audit_record(
            action=Action.LINK_CREATED,
            request=request,
            actor_kind=ActorKind.USER,
            actor_id=by.pk,
            facility_id=on_behalf_at.pk if on_behalf_at else link.recipient_facility_id,
            target_kind=TargetKind.SHARE_LINK,
            target_id=link.pk,
            patient_id=wanted.patient.pk,
            purpose=link.purpose,
            detail={
                "studies": len(clean.studies),
                "grant_id": grant.pk,
                "grant_reused": reused,
                "by": "front_desk" if on_behalf_at else "patient",
                "capped": link.expires_at < asked_until,
            },
        )
    return link, token


def token_digest(token: str) -> str:
    """SHA-256 hex of a link's token: the only form of it the database keeps. The token holds
    256 random bits, so a slow hash would add nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


def share_link_url(token: str, request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("links:open", args=[token]))


def email_share_link(
    link: ShareLink, token: str, *, request: HttpRequest, on_behalf_at: Facility | None = None
) -> bool:
    """E-mail the link to its recipient now (never through the broker: the token must not rest
    there). Returns False when the mail server failed, logged by link id only, so the page can
    tell the patient to copy the link instead. `on_behalf_at`: the front desk that made it."""
    context = {
        "link": share_link_url(token, request),
        "purpose": link.get_purpose_display().lower(),
        "expires_at": timezone.localtime(link.expires_at),
        "facility_label": link.facility_label,
        "made_at_desk": on_behalf_at.name if on_behalf_at else "",
        "code_minutes": settings.LINK_CODE_VALIDITY_SECONDS // 60,
    }
    try:
        _send_mail("share_link_invitation", context, link.recipient_email, html=True)
    except Exception as exc:
        # The kind of failure only: SMTP errors can quote the recipient's address.
        logger.warning("The e-mail for share link %s could not be sent (%s)", link.pk,
                       type(exc).__name__)  # fmt: skip
        return False
    return True


# --- Ending a link ------------------------------------------------------------------------------


def revoke_share_link(
    link: ShareLink, by: User, *, request: HttpRequest | None = None
) -> ShareLink:
    """End a link now. Ending it again changes nothing and returns it as it is.

    From the commit on, `link_read_access` refuses the link and every `allows` of a running
    view or stream says no. The recipient is told by e-mail (a task queued on commit) when the
    link was still live."""
    with transaction.atomic():
        locked = ShareLink.objects.select_for_update().select_related("grant").get(pk=link.pk)
        if locked.revoked_at is not None:
            return locked
        now = timezone.now()
        was_live = locked.refusal_at(now) is None
        locked.revoked_at = now
        locked.revoked_by = by
        locked.save(update_fields=["revoked_at", "revoked_by"])
        audit_record(
            action=Action.LINK_REVOKED,
            request=request,
            actor_kind=ActorKind.USER,
            actor_id=by.pk,
            facility_id=locked.recipient_facility_id,
            target_kind=TargetKind.SHARE_LINK,
            target_id=locked.pk,
            patient_id=locked.grant.patient_id,
            purpose=locked.purpose,
            detail={"was_live": was_live},
        )
        if was_live:
            from sharing.tasks import queue_link_ended_notice

            transaction.on_commit(partial(queue_link_ended_notice, locked.pk))
    return locked


# --- Opening a link: the token ------------------------------------------------------------------


def share_link_for_token(token: str) -> ShareLink | None:
    """The link a token names, in whatever state, or None. Input that cannot be a token is
    refused before the database is asked; the lookup is by the token's hash."""
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        return None
    return (
        ShareLink.objects.select_related("grant__withdrawal")
        .filter(token_hash=token_digest(token))
        .first()
    )


def token_guesses_exhausted(request: HttpRequest) -> bool:
    refused = guesses(_address_key("token-guesses", request))
    return refused >= settings.LINK_TOKEN_GUESSES_PER_ADDRESS


def count_token_guess(request: HttpRequest) -> None:
    _hit(_address_key("token-guesses", request))


def _links_in_session(request: HttpRequest) -> dict[str, dict[str, int]]:
    value = request.session.get(SESSION_KEY)
    return value if isinstance(value, dict) else {}


def remember_token(request: HttpRequest, link: ShareLink) -> None:
    """This session presented the link's token: it may ask for a code and enter it."""
    links = _links_in_session(request)
    entry = links.get(str(link.public_id), {})
    entry["token_at"] = int(time.time())
    links[str(link.public_id)] = entry
    request.session[SESSION_KEY] = links


def token_presented(request: HttpRequest, link: ShareLink) -> bool:
    entry = _links_in_session(request).get(str(link.public_id), {})
    token_at = entry.get("token_at")
    return isinstance(token_at, int) and time.time() - token_at <= TOKEN_SESSION_SECONDS


def session_verified(request: HttpRequest, link: ShareLink) -> bool:
    """Whether this session proved the link's code, within LINK_SESSION_HOURS."""
    entry = _links_in_session(request).get(str(link.public_id), {})
    verified_at = entry.get("verified_at")
    return (
        isinstance(verified_at, int)
        and time.time() - verified_at <= settings.LINK_SESSION_HOURS * 3600
    )


def _bind_session(request: HttpRequest, link: ShareLink) -> None:
    # A new session key: whoever planted or saw the old one does not inherit the proof.
    request.session.cycle_key()
    links = _links_in_session(request)
    entry = links.get(str(link.public_id), {})
    entry["verified_at"] = int(time.time())
    links[str(link.public_id)] = entry
    request.session[SESSION_KEY] = links


def mask_email(address: str) -> str:
    """`j***@example.org`: enough for the recipient to recognise their address, too little
    to learn it from the page."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


# --- Opening a link: the code -------------------------------------------------------------------


def _code_digest(link: ShareLink, code: str) -> str:
    # Keyed (SECRET_KEY) and bound to the link: a million possible codes would fall to a plain
    # hash at once, were the table ever read.
    return salted_hmac("sharing.links.code", f"{link.pk}:{code}", algorithm="sha256").hexdigest()


def request_code(link: ShareLink, request: HttpRequest) -> ShareLinkCode:
    """E-mail a new one-time code to the link's recipient; older codes stop counting.

    Raises CodeNotSent when too many were asked for (per link, per address), or when the mail
    server failed (nothing is kept then). The caller has checked that the link is live and
    that this session presented its token."""
    link_key, per_address = _link_key("code-sends", link), _address_key("code-sends", request)
    if (
        guesses(link_key) >= settings.LINK_CODE_SENDS_PER_LINK
        or guesses(per_address) >= settings.LINK_CODE_SENDS_PER_ADDRESS
    ):
        _audit_link(Action.LINK_REFUSED, request, link, Outcome.DENIED, reason="codes_rate_limited")
        raise CodeNotSent("rate_limited")
    code = f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"
    now = timezone.now()
    try:
        # The row and its audit entry roll back with a failed send: no code exists that
        # nobody received.
        with transaction.atomic():
            row = ShareLinkCode.objects.create(
                link=link,
                code_hash=_code_digest(link, code),
                created_at=now,
                expires_at=now + timedelta(seconds=settings.LINK_CODE_VALIDITY_SECONDS),
            )
            _audit_link(Action.LINK_CODE_SENT, request, link, Outcome.ALLOWED)
            context = {"code": code, "minutes": settings.LINK_CODE_VALIDITY_SECONDS // 60}
            _send_mail("share_link_code", context, link.recipient_email)
    except (smtplib.SMTPException, OSError) as error:
        logger.warning("The code for share link %s could not be sent (%s)", link.pk,
                       type(error).__name__)  # fmt: skip
        raise CodeNotSent("mail_failed") from error
    _hit(link_key)
    _hit(per_address)
    return row


def verify_code(link: ShareLink, code: str, request: HttpRequest) -> CodeCheck:
    """Check a code the visitor typed; on success bind this session to the link.

    Only the link's newest code counts, within its validity and attempts. Wrong codes count
    against the link and the address; past either limit no code is even compared until the
    window ends. Every failure and every success is audited; the first success marks the link
    opened and, if the patient asked for it, tells them."""
    link_key, per_address = _link_key("code-failures", link), _address_key("code-failures", request)
    if (
        guesses(link_key) >= settings.LINK_CODE_FAILURES_PER_LINK
        or guesses(per_address) >= settings.LINK_CODE_FAILURES_PER_ADDRESS
    ):
        _audit_link(Action.LINK_CODE_FAILED, request, link, Outcome.DENIED, reason="rate_limited")
        return CodeCheck.RATE_LIMITED
    typed = re.sub(r"[\s-]", "", code or "")
    if not re.fullmatch(rf"\d{{{CODE_LENGTH}}}", typed):
        return CodeCheck.MALFORMED
    now = timezone.now()
    with transaction.atomic():
        newest = (
            ShareLinkCode.objects.select_for_update()
            .filter(link=link)
            .order_by("-created_at", "-pk")
            .first()
        )
        if newest is None or newest.used_at is not None:
            result = CodeCheck.NO_CODE
        elif newest.expires_at <= now:
            result = CodeCheck.EXPIRED
        elif newest.attempts >= settings.LINK_CODE_MAX_ATTEMPTS:
            result = CodeCheck.USED_UP
        else:
            newest.attempts += 1
            if constant_time_compare(newest.code_hash, _code_digest(link, typed)):
                newest.used_at = now
                result = CodeCheck.OK
            else:
                result = CodeCheck.WRONG
            newest.save(update_fields=["attempts", "used_at"])
        if result is not CodeCheck.OK:
            _audit_link(Action.LINK_CODE_FAILED, request, link, Outcome.DENIED, reason=result.value)
        else:
            first = (
                ShareLink.objects.filter(pk=link.pk, first_opened_at__isnull=True).update(
                    first_opened_at=now
                )
                == 1
            )
            if first:
                link.first_opened_at = now
            _audit_link(Action.LINK_OPENED, request, link, Outcome.ALLOWED, first=first)
            if first and link.notify_on_open:
                from sharing.tasks import queue_patient_notice

                transaction.on_commit(partial(queue_patient_notice, link.pk, "opened"))
    if result is CodeCheck.OK:
        _bind_session(request, link)
    elif result is CodeCheck.WRONG:
        _hit(link_key)
        _hit(per_address)
    return result


def code_attempts_left(link: ShareLink) -> int:
    newest = ShareLinkCode.objects.filter(link=link).order_by("-created_at", "-pk").first()
    if newest is None:
        return 0
    return max(settings.LINK_CODE_MAX_ATTEMPTS - newest.attempts, 0)


# --- Reading through a link ---------------------------------------------------------------------


def link_read_access(request: HttpRequest, link_id: uuid.UUID) -> ReadAccess:
    """The access of a verified share-link session, for every recipient page, frame and
    download. Raises LinkRefused (audited) when the link is unknown, revoked, expired, its
    grant withdrawn, or this session has not proved the code.

    `allows(study)` reads the link row again and asks `consent.decision.decide` every time it
    is called: nothing is cached, so a revocation or a withdrawal committed a moment ago stops
    the next frame or segment."""
    link = _live_link(request, link_id)
    if not session_verified(request, link):
        _audit_link(Action.LINK_REFUSED, request, link, Outcome.DENIED, reason=NOT_VERIFIED)
        raise LinkRefused(NOT_VERIFIED, link)
    actor = LinkActor(link.grant_id, frozenset(link.studies.values_list("pk", flat=True)))
    reader = Reader(
        ActorKind.SHARE_LINK, link.pk, request, link.recipient_facility_id, link.purpose
    )
    link_pk, purpose = link.pk, link.purpose

    def allows(study: Study) -> bool:
        now = timezone.now()
        live = ShareLink.objects.filter(
            pk=link_pk, revoked_at__isnull=True, expires_at__gt=now
        ).exists()
        return live and bool(decide(actor, study, purpose, now))

    return ReadAccess(reader, allows)


def live_link(request: HttpRequest, link_id: uuid.UUID | str) -> ShareLink:
    """The link by its public id when it still serves (whether or not this session proved its
    code); raises LinkRefused, audited, otherwise."""
    return _live_link(request, link_id)


def _live_link(request: HttpRequest, link_id: uuid.UUID | str) -> ShareLink:
    link = None
    try:
        public_id = uuid.UUID(str(link_id))
    except ValueError:
        pass
    else:
        link = (
            ShareLink.objects.select_related(
                "grant__withdrawal", "grant__patient", "recipient_facility"
            )
            .filter(public_id=public_id)
            .first()
        )
    if link is None:
        audit_record(
            action=Action.LINK_REFUSED,
            outcome=Outcome.DENIED,
            request=request,
            actor_kind=ActorKind.ANONYMOUS,
            target_kind=TargetKind.SHARE_LINK,
            detail={"reason": UNKNOWN},
        )
        raise LinkRefused(UNKNOWN)
    refusal = link.refusal_at(timezone.now())
    if refusal is not None:
        _audit_link(Action.LINK_REFUSED, request, link, Outcome.DENIED, reason=refusal)
        raise LinkRefused(refusal, link)
    return link


def _audit_link(
    action: str,
    request: HttpRequest | None,
    link: ShareLink,
    outcome: str,
    **detail: str | int | bool,
) -> None:
    """Who holds the link acts as the link: the patient's access log names it by recipient."""
    audit_record(
        action=action,
        outcome=outcome,
        request=request,
        actor_kind=ActorKind.SHARE_LINK,
        actor_id=link.pk,
        facility_id=link.recipient_facility_id,
        target_kind=TargetKind.SHARE_LINK,
        target_id=link.pk,
        patient_id=link.grant.patient_id,
        purpose=link.purpose,
        detail=detail or None,
    )


def audit_link_studies_listed(request: HttpRequest, link: ShareLink, studies: int) -> None:
    _audit_link(Action.LINK_STUDIES_LISTED, request, link, Outcome.ALLOWED, studies=studies)


def audit_refused_token(request: HttpRequest, link: ShareLink | None, reason: str) -> None:
    if link is None:
        audit_record(
            action=Action.LINK_REFUSED,
            outcome=Outcome.DENIED,
            request=request,
            actor_kind=ActorKind.ANONYMOUS,
            target_kind=TargetKind.SHARE_LINK,
            detail={"reason": reason},
        )
    else:
        _audit_link(Action.LINK_REFUSED, request, link, Outcome.DENIED, reason=reason)


# --- Rate-limit counters ------------------------------------------------------------------------


def _link_key(kind: str, link: ShareLink) -> str:
    return f"sharing:link:{kind}:link:{link.pk}"


def _address_key(kind: str, request: HttpRequest) -> str:
    return address_key(f"sharing:link:{kind}:address", request)


def _hit(key: str) -> None:
    count_guess(key, settings.LINK_GUESS_WINDOW_SECONDS)


# --- What the patient sees ----------------------------------------------------------------------


def links_for_patient(patient: Patient) -> QuerySet[ShareLink]:
    """The patient's links, newest first, with what their list shows."""
    return (
        ShareLink.objects.filter(grant__patient=patient)
        .select_related("grant__withdrawal", "recipient_facility")
        .prefetch_related("studies")
        .order_by("-created_at", "-pk")
    )


def get_link_for_patient(patient: Patient, public_id: uuid.UUID | str) -> ShareLink | None:
    """One of the patient's own links; None for anyone else's, so the caller answers 404."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return links_for_patient(patient).filter(public_id=public_id).first()


# --- Telling people -----------------------------------------------------------------------------


def notify_download(link: ShareLink) -> bool:
    """Tell the patient that images were downloaded through `link`, if they asked to be told,
    at most once per link in LINK_DOWNLOAD_NOTICE_MINUTES. Called by the download view; the
    e-mail goes from a task queued on commit. Returns whether a notice was queued."""
    if not link.notify_on_download:
        return False
    now = timezone.now()
    quiet_since = now - timedelta(minutes=settings.LINK_DOWNLOAD_NOTICE_MINUTES)
    claimed = (
        ShareLink.objects.filter(pk=link.pk)
        .filter(
            Q(download_notice_sent_at__isnull=True) | Q(download_notice_sent_at__lte=quiet_since)
        )
        .update(download_notice_sent_at=now)
    )
    if not claimed:
        return False
    from sharing.tasks import queue_patient_notice

    transaction.on_commit(partial(queue_patient_notice, link.pk, "downloaded"))
    return True


PATIENT_NOTICES = ("opened", "downloaded")


def send_patient_notice(link: ShareLink, event: str) -> bool:
    """E-mail the patient that their link was first opened, or used to download images. Names
    the recipient and the time, nothing clinical. False when there is nobody to tell."""
    if event not in PATIENT_NOTICES:
        raise ValueError(f"unknown share-link notice {event!r}")
    account = link.grant.patient.account
    if account is None or not account.email:
        return False
    context = {
        "recipient": link.recipient_email,
        "facility_label": link.facility_label,
        "created_at": timezone.localtime(link.created_at),
        "when": timezone.localtime(
            link.first_opened_at if event == "opened" and link.first_opened_at else timezone.now()
        ),
    }
    _send_mail(f"share_link_{event}", context, account.email)
    return True


def send_ended_notice(link: ShareLink, *, why: str) -> bool:
    """Tell the recipient the link no longer works (`why`: revoked or withdrawn), once: the
    link is claimed by a conditional update first and released if the send fails."""
    now = timezone.now()
    claimed = ShareLink.objects.filter(pk=link.pk, ended_notice_sent_at__isnull=True).update(
        ended_notice_sent_at=now
    )
    if not claimed:
        return False
    context = {
        "why": why,
        "created_at": timezone.localtime(link.created_at),
        "ended_at": timezone.localtime(link.ended_at or now),
    }
    try:
        _send_mail("share_link_ended", context, link.recipient_email)
    except Exception:
        ShareLink.objects.filter(pk=link.pk).update(ended_notice_sent_at=None)
        raise
    return True


def end_links_of_withdrawal(withdrawal: ConsentWithdrawal) -> int:
    """After a withdrawal: tell the recipient of every link of the grant that was still live
    that it ended. A named clinician who is the grant's own grantee already hears from
    consent's follow-up (unless the withdrawal was a change), and is not told twice. Returns
    how many were e-mailed."""
    from consent.tasks import CHANGE_REASON

    grant = withdrawal.grant
    when = withdrawal.withdrawn_at
    links = (
        ShareLink.objects.select_related("grant__withdrawal")
        .filter(grant=grant, expires_at__gt=when, ended_notice_sent_at__isnull=True)
        .filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=when))
    )
    told_by_consent = withdrawal.reason != CHANGE_REASON and grant.grantee_email
    sent = 0
    for link in links:
        if told_by_consent and link.recipient_email == grant.grantee_email:
            ShareLink.objects.filter(pk=link.pk, ended_notice_sent_at__isnull=True).update(
                ended_notice_sent_at=timezone.now()
            )
            continue
        sent += send_ended_notice(link, why=WITHDRAWN)
    return sent


def warn_expiring_links(*, now: datetime | None = None) -> int:
    """E-mail the recipient of every live link that expires within LINK_EXPIRY_WARNING_DAYS,
    once. Links made for less than that are not warned: their e-mail said when they end.
    A send that fails is released and tried at the next run. Returns how many were sent."""
    now = now or timezone.now()
    window = timedelta(days=settings.LINK_EXPIRY_WARNING_DAYS)
    candidates = (
        ShareLink.objects.select_related("grant__withdrawal")
        .filter(
            revoked_at__isnull=True,
            expiry_warning_sent_at__isnull=True,
            expires_at__gt=now,
            expires_at__lte=now + window,
            grant__withdrawal__isnull=True,
        )
        .exclude(created_at__gt=F("expires_at") - window)
        .order_by("expires_at")
    )
    sent = 0
    for link in candidates:
        if link.refusal_at(now) is not None:
            continue
        claimed = ShareLink.objects.filter(pk=link.pk, expiry_warning_sent_at__isnull=True).update(
            expiry_warning_sent_at=now
        )
        if not claimed:
            continue
        context = {
            "expires_at": timezone.localtime(link.expires_at),
            "created_at": timezone.localtime(link.created_at),
        }
        try:
            _send_mail("share_link_expiring", context, link.recipient_email)
        except Exception as exc:
            ShareLink.objects.filter(pk=link.pk).update(expiry_warning_sent_at=None)
            logger.warning("Expiry warning for share link %s not sent (%s)", link.pk,
                           type(exc).__name__)  # fmt: skip
            continue
        sent += 1
    return sent


def _send_mail(template: str, context: dict[str, Any], address: str, *, html: bool = False) -> None:
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "")
    subject = render_to_string(f"emails/{template}_subject.txt", context)
    message = EmailMultiAlternatives(
        subject=prefix + " ".join(subject.split()),
        body=render_to_string(f"emails/{template}_body.txt", context),
        to=[address],
    )
    if html:
        message.attach_alternative(
            render_to_string(f"emails/{template}_body.html", context), "text/html"
        )
    message.send()
