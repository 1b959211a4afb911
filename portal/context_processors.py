from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from facilities.access import request_is_staff
from facilities.models import Role
from facilities.selectors import memberships_for_user


def navigation(request: HttpRequest) -> dict[str, Any]:
    """What the header shows: the person's kind and the facilities they administer."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_kind": "anonymous"}
    if not request_is_staff(request):
        return {"nav_kind": "patient"}
    memberships = list(memberships_for_user(user))
    return {
        "nav_kind": "staff",
        "nav_memberships": memberships,
        "nav_admin_facilities": [m.facility for m in memberships if m.role == Role.FACILITY_ADMIN],
        "nav_is_platform_admin": user.is_superuser,
    }
