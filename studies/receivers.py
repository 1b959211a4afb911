"""A patient who signs up through an invitation sees their records as they finish signing up."""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.signals import user_signed_up
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.dispatch import receiver
from django.http import HttpRequest

from accounts.models import User
from studies.invitations import (
    PATIENT_INVITATION_SESSION_KEY,
    patient_invitation_accept,
    patient_invitation_in_session,
)

logger = logging.getLogger(__name__)


@receiver(user_signed_up)
def _accept_patient_invitation_on_sign_up(
    sender: Any, request: HttpRequest | None, user: User, **kwargs: Any
) -> None:
    if request is None:
        return
    invitation = patient_invitation_in_session(request.session)
    # The key only opens sign-up; once used it must not open it again in this browser.
    request.session.pop(PATIENT_INVITATION_SESSION_KEY, None)
    if invitation is None:
        return
    try:
        patient_invitation_accept(invitation=invitation, user=user, request=request)
    except ValidationError:
        # Withdrawn or used in the moments between opening the link and signing up: the
        # account stays, linked to nothing, and the front desk can invite or link it again.
        logger.warning("Patient invitation %s was no longer valid at sign-up", invitation.pk)
        messages.warning(
            request,
            "Your account was created, but the invitation was no longer valid. "
            "Ask the front desk to link your account.",
        )
        return
    messages.success(request, "Welcome. Your account now shows your images.")
