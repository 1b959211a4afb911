"""Publishing starts on its own: every instance ingest stores asks for a publish task. A consent
withdrawal tells the recipients of the share links it ended."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from consent.models import ConsentWithdrawal
from sharing.tasks import queue_withdrawn_links_notice, request_publish
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


@receiver(post_save, sender=ConsentWithdrawal, dispatch_uid="sharing.links_end_on_withdrawal")
def links_end_on_withdrawal(
    sender: type[ConsentWithdrawal], instance: ConsentWithdrawal, created: bool, **kwargs: Any
) -> None:
    # The links already serve nothing: the access decision denies a withdrawn grant from the
    # withdrawal's commit. This only tells their recipients, once that commit happened.
    if created:
        transaction.on_commit(partial(queue_withdrawn_links_notice, instance.pk))
