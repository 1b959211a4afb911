"""How allauth fits the portal: sign-up only by invitation; e-mails carry no clinical detail."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from django.conf import settings
from django.forms import ValidationError
from django.http import HttpRequest

from accounts.sealing import seal, unseal
from facilities.selectors import staff_invitation_in_session

MFA_SEALING_PURPOSE = "mfa-secret"


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        """Public sign-up is closed: a person joins through an invitation they opened."""
        return staff_invitation_in_session(request.session) is not None

    def clean_email(self, email: str) -> str:
        email = super().clean_email(email)
        request = getattr(self, "request", None)
        invitation = staff_invitation_in_session(request.session) if request else None
        if invitation is not None and invitation.email.lower() != email.lower():
            raise ValidationError("Please use the e-mail address the invitation was sent to.")
        return email


class MFAAdapter(DefaultMFAAdapter):
    """TOTP keys rest sealed (AES-GCM), so a copy of the database alone cannot make codes."""

    def encrypt(self, text: str) -> str:
        return seal(text, site_key=settings.SECRET_KEY, purpose=MFA_SEALING_PURPOSE)

    def decrypt(self, encrypted_text: str) -> str:
        keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
        return unseal(encrypted_text, site_keys=keys, purpose=MFA_SEALING_PURPOSE)

    def get_totp_label(self, user: object) -> str:
        # Shown in the person's authenticator app; an e-mail address is enough to tell accounts
        # apart and says nothing clinical.
        return str(getattr(user, "email", ""))
