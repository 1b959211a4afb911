"""Run the DIMSE receiver (C-STORE and C-ECHO SCP) until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from facilities.models import AETitle
from studies.scp import DicomListener


class Command(BaseCommand):
    help = (
        "Receive DICOM instances over DIMSE (C-STORE, C-ECHO) from the facilities' registered "
        "AE titles, until interrupted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.DICOM_LISTENER_HOST)
        parser.add_argument(
            "--port",
            type=int,
            default=settings.DICOM_LISTENER_PORT,
            help="0 picks a free port (printed when listening).",
        )
        parser.add_argument("--ae-title", default=settings.DICOM_LISTENER_AE_TITLE)
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="Log associations and messages (pynetdicom at INFO; never UIDs or patient data).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = threading.Event()
        # Installed before listening, so a signal that arrives at once still stops cleanly.
        previous = {
            number: signal.signal(number, lambda *_: stopping.set())
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._warn_when_no_one_may_call()
            listener = DicomListener(ae_title=options["ae_title"], verbose=options["verbose"])
            host, port = listener.start(options["host"], options["port"])
            self.stdout.write(
                f"DICOM listener {listener.ae_title} listening on {host}:{port} "
                f"(at most {listener.max_associations} associations)"
            )
            self.stdout.flush()
            # A timeout, so the main thread wakes up to run the signal handler promptly.
            while not stopping.wait(timeout=0.5):
                pass
            listener.stop()
            self.stdout.write("DICOM listener stopped")
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _warn_when_no_one_may_call(self) -> None:
        if not AETitle.objects.exists():
            self.stderr.write(
                "No calling AE titles are registered: every association will be refused. "
                "Add a facility's AE titles in the admin."
            )
        # Association threads open their own connections; the main thread needs none.
        connections.close_all()
