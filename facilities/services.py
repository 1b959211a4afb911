"""Everything that changes a facility's staff, invitations and API tokens.

Views check who may act with `facilities.access` first; each service checks the actor's right
again, because services are also reached from receivers and the shell. Every change appends
one audit row naming the facility and the row it touched; `detail` holds codes and ids only.
Refused input raises `ValidationError` (keyed by form field where one fits) before anything
is written, so a refusal leaves no row, no audit entry and no e-mail.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, ActorKind, PurposeOfUse, TargetKind
from audit.services import audit_record
from facilities.access import API_TOKEN_PREFIX, secret_digest
from facilities.models import APIToken, Facility, Membership, Role, StaffInvitation

logger = logging.getLogger(__name__)

API_TOKEN_MIN_DAYS = 1
API_TOKEN_MAX_DAYS = 365
API_TOKEN_NAME_MAX_LENGTH = APIToken._meta.get_field("name").max_length or 100


def _audit_by(actor: User, *, action: str, request: HttpRequest | None, **fields: Any) -> None:
    """Audit a change a signed-in person made to a facility's staff or tokens."""
    audit_record(
        action=action, request=request, actor_kind=ActorKind.USER, actor_id=actor.pk, **fields
    )


def _require_facility_admin(actor: User, facility_id: int) -> None:
    """Refuse unless the actor is an active facility admin of this facility, or a platform
    admin (who invites a new facility's first admin)."""
    is_admin = actor.is_active and (
        actor.is_superuser
        or Membership.objects.filter(
            user=actor, facility_id=facility_id, role=Role.FACILITY_ADMIN
        ).exists()
    )
    if not is_admin:
        raise PermissionDenied("Only a facility admin of this facility may do this.")


def _lock_facility(facility_id: int) -> Facility:
    """Serialise staff changes of one facility: two admins acting at once cannot both invite
    the same address, or each remove the other and leave the facility with no admin."""
    return Facility.objects.select_for_update().get(pk=facility_id)


# --- Staff invitations --------------------------------------------------------------------------


@transaction.atomic
def staff_invitation_create(
    *,
    facility: Facility,
    email: str,
    role: str,
    actor: User,
    request: HttpRequest | None = None,
) -> tuple[StaffInvitation, str]:
    """Invite `email` to join `facility` in `role`; return the invitation and its raw token.

    Only the SHA-256 of the token is stored; the raw token travels only in the e-mail, which
    is sent once the transaction commits (a rolled-back invitation sends nothing). The link
    is built from `request`, so it names the host the admin used; without a request there is
    no trustworthy host and the service refuses. An address that is already on the staff, or
    already has a pending invitation there, is refused.
    """
    if request is None:
        raise ValueError("staff_invitation_create needs the request to build the link")
    _require_facility_admin(actor, facility.pk)
    if role not in Role.values:
        raise ValidationError({"role": "Choose one of the roles."})
    email = email.strip().lower()
    if not email:
        raise ValidationError({"email": "Enter the e-mail address to invite."})

    facility = _lock_facility(facility.pk)
    now = timezone.now()
    if Membership.objects.filter(facility=facility, user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already on the staff of {facility.name}."})
    pending = StaffInvitation.objects.filter(
        facility=facility,
        email__iexact=email,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__gt=now,
    )
    if pending.exists():
        raise ValidationError(
            {
                "email": f"{email} already has a pending invitation to {facility.name}. "
                "Withdraw it first if you want to send a new one."
            }
        )

    token = secrets.token_urlsafe(32)
    invitation = StaffInvitation.objects.create(
        facility=facility,
        email=email,
        role=role,
        token_hash=secret_digest(token),
        invited_by=actor,
        expires_at=now + settings.PORTAL_STAFF_INVITATION_LIFETIME,
    )
    _audit_by(
        actor,
        action=Action.STAFF_INVITED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.INVITATION,
        target_id=invitation.pk,
        detail={"role": role},
    )
    link = request.build_absolute_uri(reverse("facilities:invitation-accept", args=[token]))
    transaction.on_commit(lambda: _send_staff_invitation_email(invitation=invitation, link=link))
    return invitation, token


def _send_staff_invitation_email(*, invitation: StaffInvitation, link: str) -> None:
    """Send the invitation. A mail server that fails must not turn the admin's committed
    invitation into an error page; the failure is logged by id (never the link, which holds
    the token) and the admin can withdraw and invite again."""
    context = {
        "facility_name": invitation.facility.name,
        "role": invitation.get_role_display(),
        "link": link,
        "expires_at": invitation.expires_at,
    }
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "")
    subject = render_to_string("emails/staff_invitation_subject.txt", context)
    message = EmailMultiAlternatives(
        subject=prefix + " ".join(subject.split()),
        body=render_to_string("emails/staff_invitation_body.txt", context),
        to=[invitation.email],
    )
    message.attach_alternative(
        render_to_string("emails/staff_invitation_body.html", context), "text/html"
    )
    try:
        message.send()
    except Exception:
        logger.exception("The e-mail for staff invitation %s could not be sent", invitation.pk)


@transaction.atomic
def staff_invitation_revoke(
    *, invitation: StaffInvitation, actor: User, request: HttpRequest | None = None
) -> StaffInvitation:
    """Withdraw an invitation so its link stops working. Withdrawing twice changes nothing;
    an accepted invitation cannot be withdrawn (remove the staff member instead)."""
    _require_facility_admin(actor, invitation.facility_id)
    locked = StaffInvitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is not None:
        raise ValidationError(
            "This invitation was already accepted. Remove the staff member instead."
        )
    if locked.revoked_at is not None:
        return locked
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    _audit_by(
        actor,
        action=Action.STAFF_INVITATION_REVOKED,
        request=request,
        facility_id=locked.facility_id,
        target_kind=TargetKind.INVITATION,
        target_id=locked.pk,
        detail={"role": locked.role},
    )
    return locked


@transaction.atomic
def staff_invitation_accept(
    *, invitation: StaffInvitation, user: User, request: HttpRequest | None = None
) -> Membership:
    """Make `user` a member of the invitation's facility in its role, and mark it accepted.

    The invitation row is locked, so two tabs (or a sign-up and a confirm page) racing each
    other make one membership; accepting again as the same person returns that membership.
    The invitation must still be pending and the user's address must be the invited one.
    """
    locked = StaffInvitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is not None and locked.accepted_by_id == user.pk:
        existing = Membership.objects.filter(user=user, facility_id=locked.facility_id).first()
        if existing is not None:
            return existing
    now = timezone.now()
    if not locked.is_pending_at(now):
        raise ValidationError("This invitation is no longer valid.")
    if user.email.strip().lower() != locked.email.strip().lower():
        raise ValidationError("This invitation was sent to a different e-mail address.")
    facility = _lock_facility(locked.facility_id)
    if Membership.objects.filter(user=user, facility=facility).exists():
        raise ValidationError(f"You are already on the staff of {facility.name}.")

    membership = Membership.objects.create(user=user, facility=facility, role=locked.role)
    locked.accepted_at = now
    locked.accepted_by = user
    locked.save(update_fields=["accepted_at", "accepted_by"])
    _audit_by(
        user,
        action=Action.STAFF_JOINED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.MEMBERSHIP,
        target_id=membership.pk,
        detail={"role": membership.role, "invitation_id": locked.pk},
    )
    return membership


# --- Memberships -------------------------------------------------------------------------------


@transaction.atomic
def membership_remove(
    *, membership: Membership, actor: User, request: HttpRequest | None = None
) -> None:
    """Take a person off a facility's staff. From the commit on, they reach none of its pages.

    A facility always keeps at least one facility admin: removing the last one is refused,
    because nobody could then manage its staff or tokens. Removing someone already gone
    changes nothing.
    """
    _require_facility_admin(actor, membership.facility_id)
    facility = _lock_facility(membership.facility_id)
    locked = Membership.objects.filter(pk=membership.pk).select_related("user").first()
    if locked is None:
        return
    if locked.role == Role.FACILITY_ADMIN:
        admins = Membership.objects.filter(facility=facility, role=Role.FACILITY_ADMIN)
        if admins.count() <= 1:
            raise ValidationError(
                f"{locked.user} is the last facility admin of {facility.name}. Invite another "
                "facility admin first, so that someone can still manage its staff."
            )
    membership_id, removed_user_id, role = locked.pk, locked.user_id, locked.role
    locked.delete()
    _audit_by(
        actor,
        action=Action.STAFF_REMOVED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.MEMBERSHIP,
        target_id=membership_id,
        detail={"role": role, "user_id": removed_user_id},
    )


# --- API tokens --------------------------------------------------------------------------------


@transaction.atomic
def api_token_create(
    *,
    facility: Facility,
    name: str,
    scopes: Iterable[str],
    purpose_of_use: str,
    expires_in_days: int,
    actor: User,
    request: HttpRequest | None = None,
) -> tuple[APIToken, str]:
    """Create a facility API token; return it and the raw token, which is never seen again.

    The raw token is `icp_<public_id>_<secret>`: `public_id` (48 random bits, not secret)
    finds the row, and the secret (256 random bits) is stored only as its SHA-256. A token
    needs at least one scope, lasts 1 to 365 days, and only a facility that holds studies may
    send studies in with one.
    """
    _require_facility_admin(actor, facility.pk)
    name = name.strip()
    chosen = set(scopes)
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Give the token a name that says what uses it."
    elif len(name) > API_TOKEN_NAME_MAX_LENGTH:
        errors["name"] = f"Keep the name to {API_TOKEN_NAME_MAX_LENGTH} characters or fewer."
    if not chosen:
        errors["scopes"] = "Choose at least one thing the token may do."
    elif chosen - set(APIToken.SCOPES):
        errors["scopes"] = "Choose only from the listed scopes."
    elif "store" in chosen and not facility.holds_studies:
        errors["scopes"] = (
            f"{facility.name} is a receiving facility, so it does not send studies in."
        )
    if purpose_of_use not in PurposeOfUse.values:
        errors["purpose_of_use"] = "Choose one of the purposes of use."
    if (
        isinstance(expires_in_days, bool)
        or not isinstance(expires_in_days, int)
        or not API_TOKEN_MIN_DAYS <= expires_in_days <= API_TOKEN_MAX_DAYS
    ):
        errors["expires_in_days"] = (
            f"A token lasts from {API_TOKEN_MIN_DAYS} to {API_TOKEN_MAX_DAYS} days."
        )
    if errors:
        raise ValidationError(errors)

    public_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = APIToken.objects.create(
        facility=facility,
        name=name,
        public_id=public_id,
        secret_hash=secret_digest(secret),
        can_search="search" in chosen,
        can_retrieve="retrieve" in chosen,
        can_store="store" in chosen,
        purpose_of_use=purpose_of_use,
        created_by=actor,
        expires_at=timezone.now() + timedelta(days=expires_in_days),
    )
    _audit_by(
        actor,
        action=Action.API_TOKEN_CREATED,
        request=request,
        facility_id=facility.pk,
        target_kind=TargetKind.API_TOKEN,
        target_id=token.pk,
        detail={
            "scopes": ",".join(token.scopes),
            "purpose_of_use": purpose_of_use,
            "expires_in_days": expires_in_days,
        },
    )
    return token, f"{API_TOKEN_PREFIX}{public_id}_{secret}"


@transaction.atomic
def api_token_revoke(
    *, token: APIToken, actor: User, request: HttpRequest | None = None
) -> APIToken:
    """Revoke a token: from the commit on, `api_token_authenticate` refuses it. Revoking
    twice changes nothing."""
    _require_facility_admin(actor, token.facility_id)
    locked = APIToken.objects.select_for_update().get(pk=token.pk)
    if locked.revoked_at is not None:
        return locked
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    _audit_by(
        actor,
        action=Action.API_TOKEN_REVOKED,
        request=request,
        facility_id=locked.facility_id,
        target_kind=TargetKind.API_TOKEN,
        target_id=locked.pk,
    )
    return locked
