"""The Celery app. Workers: `celery -A portal worker`; beat: `celery -A portal beat`.

Every worker also consumes its node's publish queue (`publish.<PORTAL_NODE>`), where the
publish tasks for the files in that node's ingest spool go.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@celeryd_after_setup.connect
def consume_node_queue(sender: str, instance: Any, **kwargs: Any) -> None:
    from django.conf import settings

    instance.app.amqp.queues.select_add(f"publish.{settings.PORTAL_NODE}")
