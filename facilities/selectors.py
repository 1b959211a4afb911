from __future__ import annotations

from django.contrib.sessions.backends.base import SessionBase
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from facilities.models import Membership, StaffInvitation

# The invitation a visitor opened; it is what lets them sign up (portal.adapters).
INVITATION_SESSION_KEY = "facilities_invitation_id"


def staff_invitation_in_session(session: SessionBase) -> StaffInvitation | None:
    """The still-pending invitation this browser session opened, if any."""
    invitation_id = session.get(INVITATION_SESSION_KEY)
    if invitation_id is None:
        return None
    invitation = StaffInvitation.objects.select_related("facility").filter(pk=invitation_id).first()
    if invitation is None or not invitation.is_pending_at(timezone.now()):
        return None
    return invitation


def memberships_for_user(user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("facility").order_by("facility__name")
