"""Every new withdrawal, whoever records it (the patient online, the front desk, a change),
queues its follow-up once committed: e-mails and the tidying of what the grant left behind."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from consent.models import ConsentWithdrawal
from consent.tasks import queue_withdrawal_followup


@receiver(post_save, sender=ConsentWithdrawal, dispatch_uid="consent_withdrawal_followup")
def _follow_up_withdrawal(
    sender: type[ConsentWithdrawal], instance: ConsentWithdrawal, created: bool, **kwargs: Any
) -> None:
    # Queued on commit: a withdrawal rolled back sends nothing, and the task never runs
    # before the row it loads is visible.
    if created:
        transaction.on_commit(partial(queue_withdrawal_followup, instance.pk))
