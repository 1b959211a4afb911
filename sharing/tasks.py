"""Celery tasks of the encrypted store: publishing, its sweeper, and retention."""

from __future__ import annotations

import logging
import random

from celery import Task, shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError

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
