"""Patients join by invitation: front-desk staff check who is in front of them, then invite
them by e-mail or link the account they already have.

Views check who may act with `studies.access` first; each service checks the actor's role
again, because services are also reached from receivers and the shell. Every change appends
one audit row naming the patient; `detail` holds codes and ids only (never an e-mail address,
a name or an MRN). Refused input raises `ValidationError` before anything is written, so a
refusal leaves no row, no audit entry and no e-mail.

One person, one account: a patient seen at several facilities may have a record at each. When
an account that is already linked to one record is linked to another (by the front desk, or
by accepting a second invitation), the second record's identifiers and studies move to the
first, so the person signs in once and sees everything.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.codes import Action, ActorKind, TargetKind
from audit.services import audit_record
from facilities.access import secret_digest
from facilities.models import Facility, Membership
from studies.access import RECONCILING_ROLES, patients_visible_to_facility
from studies.models import (
    IdentityVerification,
    Patient,
    PatientIdentifier,
    PatientInvitation,
    Study,
)

logger = logging.getLogger(__name__)

# How long an e-mailed link works. Long enough for a patient to find the e-mail at home.
PATIENT_INVITATION_LIFETIME = timedelta(days=7)
# An invitation or a link must follow an identity check at the same desk within this time.
VERIFICATION_VALID_FOR = timedelta(hours=24)
# The patient invitation a visitor opened; it opens the patient sign-up (studies.receivers).
PATIENT_INVITATION_SESSION_KEY = "studies_patient_invitation_id"
# secrets.token_urlsafe(32): 256 random bits, always 43 characters of the URL-safe alphabet.
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def _require_front_desk(actor: User, facility_id: int) -> None:
    """Refuse unless the actor registers patients at this facility (front desk or admin).
    Platform admins hold no membership and so may not: they see no patient's data."""
    allowed = (
        actor.is_active
        and Membership.objects.filter(
            user=actor, facility_id=facility_id, role__in=RECONCILING_ROLES
        ).exists()
    )
    if not allowed:
        raise PermissionDenied("Only the front desk of this facility may do this.")


def _require_visible(patient: Patient, facility: Facility) -> None:
    if not patients_visible_to_facility(facility).filter(pk=patient.pk).exists():
        raise PermissionDenied("This patient is not a patient of this facility.")


def _audit_patient(
    *,
    action: str,
    actor: User,
    patient: Patient,
    facility_id: int | None,
    request: HttpRequest | None,
    target_kind: str = TargetKind.PATIENT,
    target_id: int | str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    audit_record(
        action=action,
        request=request,
        actor_kind=ActorKind.USER,
        actor_id=actor.pk,
        facility_id=facility_id,
        target_kind=target_kind,
        target_id=target_id or patient.pk,
        patient_id=patient.pk,
        detail=detail,
    )


def recent_verification(
    patient: Patient, facility: Facility, *, now: Any = None
) -> IdentityVerification | None:
    """The latest identity check of this patient at this facility that still vouches for an
    invitation or a link, if any."""
    now = now or timezone.now()
    return (
        IdentityVerification.objects.filter(
            patient=patient, facility=facility, verified_at__gt=now - VERIFICATION_VALID_FOR
        )
        .order_by("-verified_at", "-pk")
        .first()
    )


# --- Identity checks ----------------------------------------------------------------------------


@transaction.atomic
def identity_verification_record(
    *,
    patient: Patient,
    facility: Facility,
    method: str,
    document_type: str,
    actor: User,
    request: HttpRequest | None = None,
) -> IdentityVerification:
    """Write down that `actor` checked this patient's identity at `facility`, and how."""
    _require_front_desk(actor, facility.pk)
    _require_visible(patient, facility)
    errors = {}
    if method not in IdentityVerification.Method.values:
        errors["method"] = "Choose how you checked who the patient is."
    if document_type not in IdentityVerification.Document.values:
        errors["document_type"] = "Choose the document you looked at."
    elif (
        document_type == IdentityVerification.Document.NONE
        and method == IdentityVerification.Method.IN_PERSON
    ):
        errors["document_type"] = "At the desk, look at a photo ID."
    if errors:
        raise ValidationError(errors)
    verification = IdentityVerification.objects.create(
        patient=patient,
        facility=facility,
        method=method,
        document_type=document_type,
        verified_by=actor,
    )
    _audit_patient(
        action=Action.PATIENT_IDENTITY_VERIFIED,
        actor=actor,
        patient=patient,
        facility_id=facility.pk,
        request=request,
        detail={
            "method": method,
            "document_type": document_type,
            "verification_id": verification.pk,
        },
    )
    return verification


# --- Invitations ---------------------------------------------------------------------------------


def patient_invitation_for_token(token: str) -> PatientInvitation | None:
    """The invitation an e-mailed token names, in whatever state, or None. Input that cannot
    be a token is refused before the database is asked; the lookup is by the token's hash."""
    if not isinstance(token, str) or not _TOKEN_PATTERN.fullmatch(token):
        return None
    return (
        PatientInvitation.objects.select_related("facility", "patient")
        .filter(token_hash=secret_digest(token))
        .first()
    )


def patient_invitation_in_session(session: SessionBase) -> PatientInvitation | None:
    """The still-pending patient invitation this browser session opened, if any."""
    invitation_id = session.get(PATIENT_INVITATION_SESSION_KEY)
    if invitation_id is None:
        return None
    invitation = (
        PatientInvitation.objects.select_related("facility", "patient")
        .filter(pk=invitation_id)
        .first()
    )
    if invitation is None or not invitation.is_pending_at(timezone.now()):
        return None
    return invitation


@transaction.atomic
def patient_invitation_create(
    *,
    patient: Patient,
    facility: Facility,
    email: str,
    actor: User,
    request: HttpRequest | None = None,
) -> tuple[PatientInvitation, str]:
    """Invite `email` to see `patient`'s records; return the invitation and its raw token.

    Needs an identity check of the patient at this facility within VERIFICATION_VALID_FOR.
    A pending invitation of the same patient is withdrawn by the new one, so only the latest
    link works. Only the SHA-256 of the token is stored; the raw token travels only in the
    e-mail, sent once the transaction commits. The link is built from `request` (the host
    the front desk used), so the service refuses to run without one.
    """
    if request is None:
        raise ValueError("patient_invitation_create needs the request to build the link")
    _require_front_desk(actor, facility.pk)
    _require_visible(patient, facility)
    email = email.strip().lower()
    if not email:
        raise ValidationError({"email": "Enter the patient's e-mail address."})
    patient = Patient.objects.select_for_update().get(pk=patient.pk)
    if patient.account_id is not None:
        raise ValidationError(
            {"email": "This patient already has an account: they can sign in and see their images."}
        )
    now = timezone.now()
    verification = recent_verification(patient, facility, now=now)
    if verification is None:
        raise ValidationError(
            {"email": "Check the patient's identity first, then send the invitation."}
        )
    superseded = PatientInvitation.objects.filter(
        patient=patient, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
    ).update(revoked_at=now)

    token = secrets.token_urlsafe(32)
    invitation = PatientInvitation.objects.create(
        patient=patient,
        facility=facility,
        verification=verification,
        email=email,
        token_hash=secret_digest(token),
        invited_by=actor,
        expires_at=now + PATIENT_INVITATION_LIFETIME,
    )
    _audit_patient(
        action=Action.PATIENT_INVITED,
        actor=actor,
        patient=patient,
        facility_id=facility.pk,
        request=request,
        target_kind=TargetKind.INVITATION,
        target_id=invitation.pk,
        detail={"verification_id": verification.pk, "superseded": superseded},
    )
    link = request.build_absolute_uri(reverse("studies:patient-invitation", args=[token]))
    transaction.on_commit(lambda: _send_patient_invitation_email(invitation=invitation, link=link))
    return invitation, token


def _send_patient_invitation_email(*, invitation: PatientInvitation, link: str) -> None:
    """Send the invitation. It names the facility and nothing clinical: no name, no date of
    birth, no MRN, no study. A failing mail server is logged by id (never the link, which
    holds the token); the front desk can send a new invitation."""
    context = {
        "facility_name": invitation.facility.name,
        "link": link,
        "expires_at": invitation.expires_at,
    }
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "")
    subject = render_to_string("studies/invitation_email_subject.txt", context)
    message = EmailMultiAlternatives(
        subject=prefix + " ".join(subject.split()),
        body=render_to_string("studies/invitation_email_body.txt", context),
        to=[invitation.email],
    )
    message.attach_alternative(
        render_to_string("studies/invitation_email_body.html", context), "text/html"
    )
    try:
        message.send()
    except Exception as exc:
        # The kind of failure only: SMTP errors can quote the patient's address.
        logger.warning("The e-mail for patient invitation %s could not be sent (%s)",
                       invitation.pk, type(exc).__name__)  # fmt: skip


@transaction.atomic
def patient_invitation_accept(
    *, invitation: PatientInvitation, user: User, request: HttpRequest | None = None
) -> Patient:
    """Link `user`'s account to the invitation's patient, and mark the invitation accepted.

    The invitation row is locked, so two tabs racing make one link; accepting again as the
    same person returns the linked record. The invitation must still be pending and the
    account's address must be the invited one (the link proves only that address). Staff
    accounts are refused: a patient account is for the patient alone. Returns the record the
    account is linked to (an earlier record of this person, when records were merged).
    """
    locked = PatientInvitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is not None and locked.accepted_by_id == user.pk:
        linked = Patient.objects.filter(account=user).first()
        if linked is not None:
            return linked
    now = timezone.now()
    if not locked.is_pending_at(now):
        raise ValidationError("This invitation is no longer valid.")
    if user.email.strip().lower() != locked.email.strip().lower():
        raise ValidationError("This invitation was sent to a different e-mail address.")
    if user.is_staff or user.is_superuser or user.memberships.exists():
        raise ValidationError(
            "Staff accounts cannot be patient accounts. Sign up with your personal address."
        )
    patient = Patient.objects.select_for_update().get(pk=locked.patient_id)
    record = _link_account(
        patient=patient, user=user, actor=user, facility_id=locked.facility_id, request=request
    )
    locked.accepted_at = now
    locked.accepted_by = user
    locked.save(update_fields=["accepted_at", "accepted_by"])
    _audit_patient(
        action=Action.PATIENT_INVITATION_ACCEPTED,
        actor=user,
        patient=record,
        facility_id=locked.facility_id,
        request=request,
        target_kind=TargetKind.INVITATION,
        target_id=locked.pk,
    )
    return record


# --- Linking accounts --------------------------------------------------------------------------


@transaction.atomic
def patient_account_link(
    *,
    patient: Patient,
    facility: Facility,
    email: str,
    actor: User,
    request: HttpRequest | None = None,
) -> Patient:
    """Link the existing account with this address to `patient`, after an identity check.

    For a patient who already signed up (at another facility, say): instead of a second
    account, the front desk links this record to the one they have. Staff accounts, unknown
    addresses and records linked to another account are refused. Returns the record the
    account is linked to afterwards.
    """
    _require_front_desk(actor, facility.pk)
    _require_visible(patient, facility)
    email = email.strip().lower()
    user = User.objects.filter(email__iexact=email, is_active=True).first() if email else None
    if user is None:
        raise ValidationError(
            {"email": "No account uses this address. Send an invitation instead."}
        )
    if user.is_staff or user.is_superuser or user.memberships.exists():
        raise ValidationError({"email": "This is a staff account; it cannot see patient records."})
    patient = Patient.objects.select_for_update().get(pk=patient.pk)
    if recent_verification(patient, facility) is None:
        raise ValidationError(
            {"email": "Check the patient's identity first, then link the account."}
        )
    return _link_account(
        patient=patient, user=user, actor=actor, facility_id=facility.pk, request=request
    )


def _link_account(
    *,
    patient: Patient,
    user: User,
    actor: User,
    facility_id: int,
    request: HttpRequest | None,
) -> Patient:
    """Link (in the caller's transaction, `patient` locked): set the account, or merge this
    record into the one the account already has."""
    if patient.account_id == user.pk:
        return patient
    if patient.account_id is not None:
        raise ValidationError(
            {"email": "This record is linked to another account. Ask a platform admin."}
        )
    existing = Patient.objects.select_for_update().filter(account=user).first()
    if existing is None:
        patient.account = user
        patient.save(update_fields=["account"])
        _audit_patient(
            action=Action.PATIENT_ACCOUNT_LINKED,
            actor=actor,
            patient=patient,
            facility_id=facility_id,
            request=request,
            target_kind=TargetKind.USER,
            target_id=user.pk,
        )
        return patient
    _merge_records(
        source=patient, into=existing, actor=actor, facility_id=facility_id, request=request
    )
    return existing


def _merge_records(
    *,
    source: Patient,
    into: Patient,
    actor: User,
    facility_id: int,
    request: HttpRequest | None,
) -> None:
    """Move `source`'s identifiers and studies to `into`: two records of one person.

    Refused when `source` carries consent of its own: the ledger is never rewritten, so a
    person has to decide those again (or a platform admin merges by hand). `source` stays, with
    nothing left on it, so audit rows that name it still point at a row.
    """
    if source.grants.exists():
        raise ValidationError(
            {
                "email": "This record has consents of its own, so it cannot be joined to the "
                "account's records automatically. Ask a platform admin."
            }
        )
    identifiers = PatientIdentifier.objects.filter(patient=source).update(patient=into)
    studies = Study.objects.filter(patient=source).update(patient=into)
    Study.objects.filter(candidate_patient=source).update(candidate_patient=into)
    IdentityVerification.objects.filter(patient=source).update(patient=into)
    PatientInvitation.objects.filter(patient=source).update(patient=into)
    _audit_patient(
        action=Action.PATIENT_RECORDS_MERGED,
        actor=actor,
        patient=into,
        facility_id=facility_id,
        request=request,
        detail={"merged_patient_id": source.pk, "identifiers": identifiers, "studies": studies},
    )
