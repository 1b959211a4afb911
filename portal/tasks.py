from __future__ import annotations

from celery import shared_task


@shared_task(name="portal.ping")
def ping() -> str:
    """Answers 'pong' from whichever worker takes it: proves a worker is consuming the queue."""
    return "pong"
