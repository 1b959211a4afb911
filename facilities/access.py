"""Who may act for a facility. Membership is part of every query, so strangers get 404."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from accounts.models import User
from facilities.models import Facility, Membership, Role


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
    return get_membership_for_user(user, facility_id, roles=roles).facility
