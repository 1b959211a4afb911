"""Sign-ins, sign-outs and changes of credentials are audited from the first day."""

from __future__ import annotations

import time
from typing import Any

from allauth.account.signals import password_changed, password_reset
from allauth.mfa.signals import (
    authentication_failed,
    authenticator_added,
    authenticator_removed,
    authenticator_reset,
)
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from accounts.models import User
from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.services import audit_record

# Shared with portal.middleware, which measures the absolute session lifetime from it.
LOGIN_AT_SESSION_KEY = "portal_login_at"


def _record_for_user(action: str, request: HttpRequest | None, user: User, **extra: Any) -> None:
    audit_record(
        action=action,
        request=request,
        actor_kind=ActorKind.USER,
        actor_id=user.pk,
        target_kind=TargetKind.USER,
        target_id=user.pk,
        **extra,
    )


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    if request is not None:
        request.session[LOGIN_AT_SESSION_KEY] = int(time.time())
    _record_for_user(Action.LOGIN, request, user)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    if user is not None:
        _record_for_user(Action.LOGOUT, request, user)


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # The attempted address is not written down: it may not belong to anyone here. The
    # account it names, when there is one, is what breach monitoring needs.
    email = str(credentials.get("email") or credentials.get("username") or "").lower()
    user_id = (
        User.objects.filter(email=email).values_list("pk", flat=True).first() if email else None
    )
    audit_record(
        action=Action.LOGIN_FAILED,
        outcome=Outcome.DENIED,
        request=request,
        actor_kind=ActorKind.ANONYMOUS,
        target_kind=TargetKind.USER if user_id else "",
        target_id=user_id or "",
        detail={"known_account": user_id is not None},
    )


@receiver(authentication_failed)
def _mfa_failed(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    audit_record(
        action=Action.LOGIN_FAILED,
        outcome=Outcome.DENIED,
        request=request,
        actor_kind=ActorKind.ANONYMOUS,
        target_kind=TargetKind.USER,
        target_id=user.pk,
        detail={"known_account": True, "step": "mfa", "type": authenticator.type},
    )


@receiver(authenticator_added)
def _mfa_added(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    _record_for_user(Action.MFA_ADDED, request, user, detail={"type": authenticator.type})


@receiver(authenticator_removed)
def _mfa_removed(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    _record_for_user(Action.MFA_REMOVED, request, user, detail={"type": authenticator.type})


@receiver(authenticator_reset)
def _mfa_reset(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    _record_for_user(Action.MFA_RECOVERY_CODES_RESET, request, user)


@receiver(password_changed)
def _password_changed(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    _record_for_user(Action.PASSWORD_CHANGED, request, user)


@receiver(password_reset)
def _password_reset(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    _record_for_user(Action.PASSWORD_RESET, request, user)
