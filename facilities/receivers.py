"""A person who signs up through an invitation joins the facility as they finish signing up."""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.signals import user_signed_up
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.dispatch import receiver
from django.http import HttpRequest

from accounts.models import User
from facilities.selectors import INVITATION_SESSION_KEY, staff_invitation_in_session
from facilities.services import staff_invitation_accept

logger = logging.getLogger(__name__)


@receiver(user_signed_up)
def _accept_invitation_on_sign_up(
    sender: Any, request: HttpRequest | None, user: User, **kwargs: Any
) -> None:
    if request is None:
        return
    invitation = staff_invitation_in_session(request.session)
    # The key only opens sign-up; once used it must not open it again in this browser.
    request.session.pop(INVITATION_SESSION_KEY, None)
    if invitation is None:
        return
    try:
        membership = staff_invitation_accept(invitation=invitation, user=user, request=request)
    except ValidationError:
        # Withdrawn or used in the moments between opening the link and signing up: the
        # account stays, with no role, and an admin can invite it again.
        logger.warning("Invitation %s was no longer valid at sign-up", invitation.pk)
        messages.warning(
            request,
            "Your account was created, but the invitation was no longer valid. "
            "Ask your facility admin to invite you again.",
        )
        return
    messages.success(
        request,
        f"Welcome to {membership.facility.name}. You joined as {membership.get_role_display()}.",
    )
