"""Bulk import: folders, zips and files of DICOM into a facility, through the ingest service.

    python manage.py import_dicom /archive/2019 /exports/cd-0042.zip --facility "Riverside"

Everything goes through `studies.media` (so zip bombs, unsafe names and links leaving a folder
are refused exactly as in the browser upload) and `study_ingest_instance` on the IMPORT
channel: the facility's own archive, so PatientIDs without an issuer take the facility's.

Output names only the paths the operator gave and paths within them, never anything read
from a DICOM header. Exit status: 0 when every file was stored (or was already held, or was a
CD index), 1 when any was refused, conflicted or failed, 2 when nothing could start.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from audit.codes import ActorKind
from facilities.models import Facility
from studies.media import (
    MediaResult,
    ResultOutcome,
    is_dicomdir_name,
    media_ingest,
    media_items,
)
from studies.models import Study
from studies.services import Channel, IngestSource

ACTOR_ID = "import_dicom"
_NOT_IMPORTED = (ResultOutcome.REFUSED, ResultOutcome.CONFLICT, ResultOutcome.FAILED)


class ProgressBar:
    """`[#######.............]  35/100 files` on one line, redrawn at most every tenth of a
    second (a terminal is slow to redraw); a plain counter line when not on a terminal."""

    WIDTH = 30

    def __init__(self, stream: OutputWrapper, total: int, *, enabled: bool) -> None:
        self.stream, self.total, self.enabled = stream, total, enabled
        self.done = 0
        self.drawn_at = 0.0
        self.interactive = enabled and stream.isatty()

    def _write(self, text: str) -> None:
        self.stream.write(text, style_func=str, ending="")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.drawn_at >= 0.1:
            self.drawn_at = now
            self.draw()

    def draw(self) -> None:
        if not self.enabled or self.total == 0:
            return
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"[{bar}] {self.done:>{len(str(self.total))}}/{self.total} files"
        if self.interactive:
            self._write("\r" + line + ("\n" if self.done == self.total else ""))
        elif self.done == self.total or self.done % max(self.total // 10, 1) == 0:
            self._write(line + "\n")

    def note(self, text: str) -> None:
        """A line of its own, without breaking the bar."""
        if self.interactive and 0 < self.done < self.total:
            self._write("\r" + " " * (self.WIDTH + 20) + "\r")
        self._write(text + "\n")


class Command(BaseCommand):
    help = (
        "Import DICOM files, folders (e.g. copied CDs, with or without a DICOMDIR) and zip "
        "files into a facility. Exit status 1 when anything was not imported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument(
            "--facility", required=True, help="The facility's id, or its exact name."
        )
        parser.add_argument(
            "--quiet", action="store_true", help="No progress bar and no per-file lines."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        facility = _facility(options["facility"])
        # `import_dicom /media/cdrom/DICOMDIR` means the CD, not its index.
        paths = [
            path.parent if path.is_file() and is_dicomdir_name(path.name) else path
            for path in options["paths"]
        ]
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise CommandError(f"Not found: {', '.join(missing)}", returncode=2)
        quiet = options["quiet"] or options["verbosity"] == 0
        source = IngestSource(facility, Channel.IMPORT, ActorKind.SYSTEM, ACTOR_ID)

        # Counting first costs a walk of the folders and a read of the zips' tables of
        # contents: little next to ingesting, and it makes the bar honest.
        total = 0 if quiet else sum(sum(1 for _ in media_items(path)) for path in paths)
        progress = ProgressBar(self.stderr, total, enabled=not quiet)
        outcomes: Counter[str] = Counter()
        study_ids: set[int] = set()
        for path in paths:
            for result in media_ingest(path=path, source=source):
                outcomes[result.outcome] += 1
                if result.study_id is not None:
                    study_ids.add(result.study_id)
                if not quiet and _worth_a_line(result, options["verbosity"]):
                    progress.note(f"{result.outcome}: {result.name}: {result.message}")
                progress.advance()

        self.stdout.write(_summary(outcomes, study_ids, facility))
        not_imported = sum(outcomes[outcome] for outcome in _NOT_IMPORTED)
        if not_imported:
            raise CommandError(
                f"{not_imported} of {sum(outcomes.values())} files were not imported.",
                returncode=1,
            )


def _facility(wanted: str) -> Facility:
    facility = None
    if wanted.isdigit():
        facility = Facility.objects.filter(pk=int(wanted)).first()
    if facility is None:
        facility = Facility.objects.filter(name=wanted).first()
    if facility is None:
        raise CommandError(f"No facility has the id or exact name {wanted!r}.", returncode=2)
    return facility


def _worth_a_line(result: MediaResult, verbosity: int) -> bool:
    return verbosity >= 2 or result.outcome in _NOT_IMPORTED


def _summary(outcomes: Counter[str], study_ids: set[int], facility: Facility) -> str:
    counts = ", ".join(f"{outcomes[outcome]} {outcome}" for outcome in ResultOutcome)
    studies = Study.objects.filter(pk__in=study_ids, source_facility=facility)
    waiting = studies.exclude(match=Study.Match.MATCHED).count()
    return (
        f"{sum(outcomes.values())} files: {counts}; {len(study_ids)} studies, "
        f"{waiting} waiting to be matched to a patient."
    )
