"""Delete a study for good, for a deletion request: its data key is destroyed, its objects and
image rows deleted, and the study kept as a *Deleted* entry for the audit trail.

    python manage.py shred_study <study id from its page URL> --reason "request 2026-114" --yes
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.codes import ActorKind
from sharing.services import study_shred
from studies.models import Study


class Command(BaseCommand):
    help = "Crypto-shred one study (irreversible): destroy its key, delete its images."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("study", help="the study's public id (from its page's URL)")
        parser.add_argument("--reason", required=True, help="why, e.g. the request's number")
        parser.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    def handle(self, *args: Any, study: str, reason: str, yes: bool, **options: Any) -> None:
        if not reason.strip():
            raise CommandError("--reason must say why")
        try:
            found = Study.objects.filter(public_id=study).first()
        except ValidationError:
            found = None
        if found is None:
            raise CommandError("No study has that id")
        if found.legal_hold:
            raise CommandError("The study is under a legal hold; lift it first")
        if not yes:
            raise CommandError("This cannot be undone; add --yes to go ahead")
        report = study_shred(
            found, reason=reason.strip()[:200], actor_kind=ActorKind.SYSTEM, actor_id="shred_study"
        )
        left = f" ({report.objects_left} left for the orphan sweep)" if report.objects_left else ""
        self.stdout.write(self.style.SUCCESS(f"Deleted: {report.objects} objects{left}."))
