"""Who may act for a facility. Membership is part of every query, so strangers get 404."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpRequest
from django.utils import timezone

from accounts.models import User
from facilities.models import APIToken, Facility, Membership, Role, StaffInvitation

API_TOKEN_PREFIX = "icp_"  # noqa: S105 (the public prefix of every token, not a secret)
# `icp_` + secrets.token_hex(6) + `_` + secrets.token_urlsafe(32): 4 + 12 + 1 + 43 characters.
API_TOKEN_LENGTH = 60
_API_TOKEN_PATTERN = re.compile(r"icp_(?P<public_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")
# secrets.token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet.
_INVITATION_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
# Writing last_used_at on every DICOMweb request would turn each read into a write.
API_TOKEN_LAST_USED_RESOLUTION = timedelta(minutes=1)


def is_facility_staff(user: User) -> bool:
    """Staff: a platform admin, or anyone with a role at a facility. Staff must use MFA."""
    if not user.is_authenticated:
        return False
    return user.is_staff or user.is_superuser or user.memberships.exists()


def request_is_staff(request: HttpRequest) -> bool:
    """`is_facility_staff` for the request's user, asked once per request."""
    cached = getattr(request, "_portal_is_staff", None)
    if cached is None:
        cached = is_facility_staff(request.user)  # type: ignore[arg-type]
        request._portal_is_staff = cached  # type: ignore[attr-defined]
    return bool(cached)


def get_membership_for_user(
    user: User, facility_id: int, *, roles: Iterable[str] = tuple(Role.values)
) -> Membership:
    """The user's membership at a facility: 404 when they have none, 403 for another role."""
    membership = (
        Membership.objects.select_related("facility")
        .filter(user=user, facility_id=facility_id)
        .first()
    )
    if membership is None:
        raise Http404("No such facility")
    if membership.role not in set(roles):
        raise PermissionDenied("Your role at this facility does not allow this")
    return membership


def get_facility_for_user(
    user: User, facility_id: int, *, roles: Iterable[str] = tuple(Role.values)
) -> Facility:
    """A facility the user may act for in one of `roles`.

    Platform admins act as facility admin of every facility: someone has to invite a new
    facility's first admin. They hold no other role, so they see no patient's data this way.
    """
    if user.is_superuser and Role.FACILITY_ADMIN in set(roles):
        facility = Facility.objects.filter(pk=facility_id).first()
        if facility is None:
            raise Http404("No such facility")
        return facility
    return get_membership_for_user(user, facility_id, roles=roles).facility


def secret_digest(secret: str) -> str:
    """SHA-256 hex of a random secret: what the database keeps instead of the secret.

    The secrets carry 256 bits of randomness, so a slow password hash would add nothing.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def staff_invitation_for_token(token: str) -> StaffInvitation | None:
    """The invitation an e-mailed token names, in whatever state it is, or None.

    Input that cannot be a token is refused before the database is asked. The lookup is by
    the token's hash, so the comparison never sees the token itself.
    """
    if not isinstance(token, str) or not _INVITATION_TOKEN_PATTERN.fullmatch(token):
        return None
    return (
        StaffInvitation.objects.select_related("facility")
        .filter(token_hash=secret_digest(token))
        .first()
    )


@dataclass(frozen=True)
class APITokenCheck:
    """What a presented API token is: the active token, or why it was refused.

    `refusal` is "" when `token` may act, else one of malformed, unknown, wrong_secret, expired
    or revoked. `token` is the row its public id names, whenever there is one, so that the
    refusal's audit row can name the facility whose system still uses a bad token; only with
    an empty refusal may it act.
    """

    token: APIToken | None
    refusal: str

    @property
    def active_token(self) -> APIToken | None:
        return self.token if not self.refusal else None


def api_token_check(raw: str, *, now: datetime | None = None) -> APITokenCheck:
    """Check a presented token, `icp_<public_id>_<secret>`. It does not audit.

    Anything of the wrong shape (prefix, length, alphabet) is refused by its shape, without a
    query; overlong input is refused before the pattern even runs. The row is found by its
    public id and the secret checked by a constant-time comparison of hashes, so timing does
    not reveal how much of a guessed secret was right. Revoked and expired tokens are refused.
    `last_used_at` is written at most once per API_TOKEN_LAST_USED_RESOLUTION, by a
    conditional update so concurrent requests do not all write.
    """
    if not isinstance(raw, str) or len(raw) != API_TOKEN_LENGTH:
        return APITokenCheck(None, "malformed")
    if not raw.startswith(API_TOKEN_PREFIX):
        return APITokenCheck(None, "malformed")
    match = _API_TOKEN_PATTERN.fullmatch(raw)
    if match is None:
        return APITokenCheck(None, "malformed")
    token = APIToken.objects.select_related("facility").filter(public_id=match["public_id"]).first()
    if token is None:
        return APITokenCheck(None, "unknown")
    if not hmac.compare_digest(token.secret_hash, secret_digest(match["secret"])):
        return APITokenCheck(token, "wrong_secret")
    now = now or timezone.now()
    if not token.is_active_at(now):
        return APITokenCheck(token, token.state_at(now))
    stale_before = now - API_TOKEN_LAST_USED_RESOLUTION
    if token.last_used_at is None or token.last_used_at <= stale_before:
        APIToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale_before)
        ).update(last_used_at=now)
        token.last_used_at = now
    return APITokenCheck(token, "")


def api_token_authenticate(raw: str, *, now: datetime | None = None) -> APIToken | None:
    """The active facility API token that `raw` is, or None (see `api_token_check`)."""
    return api_token_check(raw, now=now).active_token
