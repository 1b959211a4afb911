"""What follows a withdrawal once it is committed: tell the people concerned, and tidy up.

Access ends at the withdrawal's commit, not here: every read calls the access decision, which
denies a withdrawn grant from that moment. This task only informs (the patient, and the named
clinician of a share-link grant) and removes what the grant left behind, so a task that runs
late or twice never widens access. (The share links made under the grant end with it: the
decision denies them, and `sharing.receivers` tells their recipients.)

`consent.receivers` queues it on commit for every new withdrawal, whoever recorded it.
"""

from __future__ import annotations

import logging
import random
import smtplib

from celery import Task, shared_task
from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import timezone

from consent.models import ConsentGrant, ConsentWithdrawal

logger = logging.getLogger(__name__)

# A change (consent.services.change_consent) withdraws the old grant with this reason; the
# patient is told about the change where they made it, not by a "withdrawn" e-mail.
CHANGE_REASON = "changed"
MAX_RETRIES = 8
RETRY_MAX_SECONDS = 600
# How long a sent confirmation is remembered, so a retried task does not send it again.
SENT_MARKER_SECONDS = 7 * 24 * 3600


def queue_withdrawal_followup(withdrawal_id: int) -> None:
    """Queue the task; called on commit. A broker that is down must not turn the patient's
    committed withdrawal into an error page: access has already ended, only the e-mails wait."""
    try:
        consent_withdrawal_followup_task.delay(withdrawal_id)
    except Exception:
        logger.exception("Could not queue the follow-up of consent withdrawal %s", withdrawal_id)


@shared_task(bind=True, name="consent.withdrawal_followup", max_retries=MAX_RETRIES)
def consent_withdrawal_followup_task(self: Task, withdrawal_id: int) -> dict[str, int]:
    withdrawal = (
        ConsentWithdrawal.objects.select_related(
            "grant", "grant__patient__account", "grant__grantee_facility"
        )
        .filter(pk=withdrawal_id)
        .first()
    )
    if withdrawal is None:
        return {"sent": 0}
    grant = withdrawal.grant
    removed = remove_derived_copies_for_grant(grant)
    try:
        sent = send_withdrawal_confirmations(withdrawal)
    except (smtplib.SMTPException, OSError) as exc:
        if self.request.is_eager or self.request.retries >= MAX_RETRIES:
            logger.warning(
                "Withdrawal %s: confirmation e-mail not sent (%s)",
                withdrawal_id,
                type(exc).__name__,
            )
            return {"sent": 0, "copies_removed": removed}
        delay = min(30 * 2**self.request.retries, RETRY_MAX_SECONDS)
        raise self.retry(exc=exc, countdown=delay * random.uniform(0.8, 1.2)) from exc  # noqa: S311
    return {"sent": sent, "copies_removed": removed}


# --- Hooks for what a grant leaves behind ------------------------------------------------------


def remove_derived_copies_for_grant(grant: ConsentGrant) -> int:
    """Remove copies derived for `grant` (de-identified copies made for research or
    education); returns how many were removed.

    The portal makes no derived copies yet, so there is nothing to remove and this returns 0.
    When it does, delete the grant's copies from the object store here, idempotently.
    """
    return 0


# --- The confirmation e-mails ------------------------------------------------------------------


def send_withdrawal_confirmations(withdrawal: ConsentWithdrawal) -> int:
    """E-mail the patient (and a named clinician grantee) that the consent was withdrawn.

    No clinical details and no patient identity: who may no longer see the images, for what,
    and since when. Each recipient is claimed in the cache before sending and released if the
    send fails, so a retried task sends what is missing and nothing twice."""
    if withdrawal.reason == CHANGE_REASON:
        return 0
    grant = withdrawal.grant
    grantee = grant.grantee_facility.name if grant.grantee_facility else grant.grantee_email
    context = {
        "grantee": grantee,
        "is_facility": grant.grantee_facility is not None,
        "purpose": grant.get_purpose_display().lower(),
        "withdrawn_at": timezone.localtime(withdrawal.withdrawn_at),
    }
    recipients: list[tuple[str, str]] = []
    account = grant.patient.account
    if account is not None and account.email:
        recipients.append(("patient", account.email))
    if grant.grantee_email:
        recipients.append(("recipient", grant.grantee_email))
    sent = 0
    for role, address in recipients:
        marker = f"consent:withdrawal-mail:{withdrawal.pk}:{role}"
        if not cache.add(marker, 1, timeout=SENT_MARKER_SECONDS):
            continue
        try:
            _send(f"consent_withdrawn_{role}", context, address)
        except Exception:
            cache.delete(marker)
            raise
        sent += 1
    return sent


def _send(template: str, context: dict[str, object], address: str) -> None:
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "")
    subject = render_to_string(f"consent/emails/{template}_subject.txt", context)
    message = EmailMultiAlternatives(
        subject=prefix + " ".join(subject.split()),
        body=render_to_string(f"consent/emails/{template}_body.txt", context),
        to=[address],
    )
    message.send()
