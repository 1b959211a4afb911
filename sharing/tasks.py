"""Celery tasks of the encrypted store (publishing, its sweeper, and retention) and the e-mails
about share links."""

from __future__ import annotations

import logging
import random
import smtplib

from celery import Task, shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError

from consent.models import ConsentWithdrawal
from sharing.links import (
    REVOKED,
    end_links_of_withdrawal,
    send_ended_notice,
    send_patient_notice,
    warn_expiring_links,
)
from sharing.models import ShareLink
from sharing.services import (
    publish_queue,
    publish_spooled,
    publish_sweep,
    remove_orphan_objects,
    retention_sweep,
)
from sharing.store import StoreUnavailable

logger = logging.getLogger(__name__)


def _pending_key(node: str) -> str:
    return f"sharing:publish-pending:{node}"


def request_publish(node: str, *, force: bool = False) -> None:
    """Queue a publish task for `node` unless one is already waiting to start.

    Ingest calls this once per instance; the marker keeps a burst of thousands of instances to
    a few tasks, each taking a batch. The marker expires, and the sweeper forces a task, so a
    queue lost with its marker (Redis restarted) only delays publishing.
    """
    if not force and not cache.add(_pending_key(node), 1, timeout=settings.PUBLISH_PENDING_TTL):
        return
    publish_spooled_task.apply_async(args=[node], queue=publish_queue(node))


@shared_task(bind=True, name="sharing.publish_spooled", max_retries=None)
def publish_spooled_task(self: Task, node: str) -> dict[str, int]:
    # Cleared first: an instance that arrives while this batch runs queues the next task. A
    # cache that is down leaves the marker to expire; publishing goes on regardless.
    try:
        cache.delete(_pending_key(node))
    except Exception:
        logger.warning("Could not clear the publish marker", exc_info=True)

    def queue_next_batch() -> None:
        try:
            request_publish(node, force=True)
        except Exception:  # the broker is down: the sweeper requeues what waits
            logger.warning("Could not queue the next publish batch", exc_info=True)

    # In-process (make run) the next batch would run inside this one: it follows it instead.
    parallel = None if self.request.is_eager else queue_next_batch
    try:
        report = publish_spooled(node, claim_token=self.request.id, on_full_batch=parallel)
    except (StoreUnavailable, DatabaseError) as exc:
        if self.request.is_eager:  # in-process (make run): the next instance or a sweep retries
            logger.warning("Publishing stopped: %s", type(exc).__name__)
            return {"published": 0}
        if self.request.retries >= settings.PUBLISH_MAX_RETRIES:
            raise  # the sweeper takes over after the claim lease
        delay = min(2**self.request.retries, settings.PUBLISH_RETRY_MAX_SECONDS)
        logger.warning("Publishing paused (%s); retrying in %s s", type(exc).__name__, delay)
        raise self.retry(exc=exc, countdown=delay * random.uniform(0.8, 1.2)) from exc  # noqa: S311
    if report.more and self.request.is_eager:
        queue_next_batch()
    return {"published": report.published, "released": report.released}


@shared_task(name="sharing.publish_sweep")
def publish_sweep_task() -> dict[str, int]:
    """Every minute, from beat: release stale claims and requeue instances nobody publishes."""
    report = publish_sweep()
    for node in sorted(report.nodes_to_kick):
        request_publish(node, force=True)
    return {"released": report.released, "nodes": len(report.nodes_to_kick)}


@shared_task(name="sharing.retention_sweep")
def retention_sweep_task() -> dict[str, int]:
    """Daily, from beat: crypto-shred studies past retention, then remove orphan objects."""
    return {"shredded": retention_sweep(), "orphans": remove_orphan_objects()}


# --- Share links: telling the patient and the recipient ----------------------------------------
# Access never waits for these: a link ends at its revocation's or withdrawal's commit. The tasks
# only inform, each claim-once (sharing.links), so a task that runs late or twice sends nothing
# twice and never widens access.

LINK_MAIL_MAX_RETRIES = 8
LINK_MAIL_RETRY_MAX_SECONDS = 600


def _queue(task: Task, *args: object) -> None:
    """Queue on commit. A broker that is down must not turn the committed change into an error
    page: access has already changed, only an e-mail waits."""
    try:
        task.delay(*args)
    except Exception:
        logger.exception("Could not queue %s", task.name)


def queue_patient_notice(link_id: int, event: str) -> None:
    _queue(share_link_patient_notice_task, link_id, event)


def queue_link_ended_notice(link_id: int) -> None:
    _queue(share_link_ended_task, link_id)


def queue_withdrawn_links_notice(withdrawal_id: int) -> None:
    # Most grants have no link: no task for them.
    if ShareLink.objects.filter(grant__withdrawal__pk=withdrawal_id).exists():
        _queue(share_links_withdrawn_task, withdrawal_id)


def _retry_mail(task: Task, exc: Exception, what: str) -> None:
    if task.request.is_eager or task.request.retries >= LINK_MAIL_MAX_RETRIES:
        logger.warning("%s: e-mail not sent (%s)", what, type(exc).__name__)
        return
    delay = min(30 * 2**task.request.retries, LINK_MAIL_RETRY_MAX_SECONDS)
    raise task.retry(exc=exc, countdown=delay * random.uniform(0.8, 1.2)) from exc  # noqa: S311


@shared_task(bind=True, name="sharing.share_link_patient_notice", max_retries=LINK_MAIL_MAX_RETRIES)
def share_link_patient_notice_task(self: Task, link_id: int, event: str) -> dict[str, int]:
    """The patient hears that their link was first opened, or used to download images."""
    link = ShareLink.objects.select_related("grant__patient__account").filter(pk=link_id).first()
    if link is None:
        return {"sent": 0}
    try:
        return {"sent": int(send_patient_notice(link, event))}
    except (smtplib.SMTPException, OSError) as exc:
        _retry_mail(self, exc, f"Share link {link_id} {event} notice")
        return {"sent": 0}


@shared_task(bind=True, name="sharing.share_link_ended", max_retries=LINK_MAIL_MAX_RETRIES)
def share_link_ended_task(self: Task, link_id: int) -> dict[str, int]:
    """The recipient hears that the patient ended the link."""
    link = ShareLink.objects.select_related("grant__withdrawal").filter(pk=link_id).first()
    if link is None:
        return {"sent": 0}
    try:
        return {"sent": int(send_ended_notice(link, why=REVOKED))}
    except (smtplib.SMTPException, OSError) as exc:
        _retry_mail(self, exc, f"Share link {link_id} ended notice")
        return {"sent": 0}


@shared_task(bind=True, name="sharing.share_links_withdrawn", max_retries=LINK_MAIL_MAX_RETRIES)
def share_links_withdrawn_task(self: Task, withdrawal_id: int) -> dict[str, int]:
    """The recipients of the links of a withdrawn grant hear that their links ended."""
    withdrawal = ConsentWithdrawal.objects.select_related("grant").filter(pk=withdrawal_id).first()
    if withdrawal is None:
        return {"sent": 0}
    try:
        return {"sent": end_links_of_withdrawal(withdrawal)}
    except (smtplib.SMTPException, OSError) as exc:
        _retry_mail(self, exc, f"Links of withdrawal {withdrawal_id}")
        return {"sent": 0}


@shared_task(name="sharing.share_link_expiry_warnings")
def share_link_expiry_warnings_task() -> dict[str, int]:
    """Hourly, from beat: warn recipients of links that expire within LINK_EXPIRY_WARNING_DAYS."""
    return {"sent": warn_expiring_links()}
