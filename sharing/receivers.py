"""Publishing starts on its own: every instance ingest stores asks for a publish task."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.dispatch import receiver

from sharing.tasks import request_publish
from studies.models import Instance
from studies.services import instance_received

logger = logging.getLogger(__name__)


@receiver(instance_received, sender=Instance, dispatch_uid="sharing.publish_on_receive")
def publish_on_receive(**kwargs: Any) -> None:
    # The instance is safe in the spool whatever happens here: a broker that is down only
    # delays publishing until the sweeper's next run.
    try:
        request_publish(settings.PORTAL_NODE)
    except Exception:
        logger.warning("Could not queue publishing; the publish sweeper will", exc_info=True)
