from __future__ import annotations

from django.contrib.sessions.backends.base import SessionBase
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from facilities.models import APIToken, Facility, Membership, StaffInvitation

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
    return (
        Membership.objects.filter(user=user).select_related("facility").order_by("facility__name")
    )


def members_of_facility(facility: Facility) -> QuerySet[Membership]:
    """Everyone with a role at the facility, by e-mail address."""
    return (
        Membership.objects.filter(facility=facility).select_related("user").order_by("user__email")
    )


def staff_invitations_open_for_facility(facility: Facility) -> QuerySet[StaffInvitation]:
    """Invitations neither accepted nor withdrawn: pending ones, and expired ones to tidy up."""
    return StaffInvitation.objects.filter(
        facility=facility, accepted_at__isnull=True, revoked_at__isnull=True
    ).order_by("-created_at")


def api_tokens_for_facility(facility: Facility) -> QuerySet[APIToken]:
    return (
        APIToken.objects.filter(facility=facility)
        .select_related("created_by")
        .order_by("-created_at")
    )
