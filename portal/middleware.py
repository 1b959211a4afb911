"""Session rules that hold on every page: idle timeout, absolute lifetime, MFA for staff."""

from __future__ import annotations

import time
from collections.abc import Callable

from allauth.mfa.utils import is_mfa_enabled
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from accounts.receivers import LOGIN_AT_SESSION_KEY as LOGIN_AT
from audit.codes import Action, TargetKind
from audit.services import audit_record
from facilities.access import request_is_staff

SEEN_AT = "portal_seen_at"
# Sent by scripts that poll on their own (progress bars): such requests are not activity.
BACKGROUND_HEADER = "X-Portal-Background"
# How often the last-seen time is written; finer precision would save the session every request.
SEEN_RESOLUTION_SECONDS = 30

# Pages a staff member without MFA may still reach: signing out, setting MFA up, and what
# those pages need (static files, the health check, e-mail verification, re-authentication).
MFA_SETUP_PREFIXES = (
    "/accounts/logout/",
    "/accounts/2fa/",
    "/accounts/reauthenticate/",
    "/accounts/confirm-email/",
    "/accounts/password/",
    "/static/",
    "/healthz",
)


class SessionLifetimeMiddleware:
    """Signs a person out after the idle timeout of their kind, or after the absolute lifetime."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            expired = self._expired(request)
            if expired:
                user = request.user
                audit_record(
                    action=Action.SESSION_EXPIRED,
                    request=request,
                    target_kind=TargetKind.USER,
                    target_id=str(user.pk),
                    detail={"reason": expired},
                )
                logout(request)
                messages.info(request, _EXPIRED_MESSAGES[expired])
                return redirect_to_login(request.get_full_path())
        return self.get_response(request)

    def _expired(self, request: HttpRequest) -> str | None:
        now = int(time.time())
        session = request.session
        login_at = session.setdefault(LOGIN_AT, now)
        seen_at = session.get(SEEN_AT, now)
        idle = (
            settings.PORTAL_STAFF_IDLE_TIMEOUT
            if request_is_staff(request)
            else settings.PORTAL_PATIENT_IDLE_TIMEOUT
        )
        if now - login_at > settings.PORTAL_SESSION_LIFETIME.total_seconds():
            return "lifetime"
        if now - seen_at > idle.total_seconds():
            return "idle"
        background = request.headers.get(BACKGROUND_HEADER) == "1"
        if not background and (now - seen_at >= SEEN_RESOLUTION_SECONDS or SEEN_AT not in session):
            session[SEEN_AT] = now
        return None


_EXPIRED_MESSAGES = {
    "idle": "You were signed out because the page was left unattended. Please sign in again.",
    "lifetime": "Your session reached its time limit. Please sign in again.",
}


class StaffMFARequiredMiddleware:
    """Staff and admins reach no page but MFA set-up until they have a second factor."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.user.is_authenticated
            and not request.path.startswith(MFA_SETUP_PREFIXES)
            and request_is_staff(request)
            and not is_mfa_enabled(request.user)
        ):
            messages.warning(
                request,
                "Staff accounts protect patients' data with two-factor authentication. "
                "Set up an authenticator app to continue.",
            )
            return redirect("mfa_activate_totp")
        return self.get_response(request)
