from __future__ import annotations

from celery import shared_task

from studies.services import spool_sweep


@shared_task(name="studies.spool_sweep")
def spool_sweep_task() -> dict[str, int]:
    """Runs periodically on every node that receives DICOM (each has its own spool)."""
    report = spool_sweep()
    return {"stale_incoming": report.stale_incoming_removed, "orphans": report.orphans_removed}
