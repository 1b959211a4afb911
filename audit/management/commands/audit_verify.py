from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.codes import Action, Outcome
from audit.services import audit_chain_verify, audit_record


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit non-zero naming the first altered row."

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_chain_verify()
        if report.first_break is None:
            self.stdout.write(f"Audit log intact: {report.rows} rows, head {report.head_hash}")
            return
        bad = report.first_break
        audit_record(
            action=Action.AUDIT_CHAIN_BROKEN,
            outcome=Outcome.ERROR,
            detail={"first_bad_sequence": bad.sequence, "rows_intact": report.rows},
        )
        raise CommandError(f"Audit log altered at row {bad.sequence}: {bad.reason}")
