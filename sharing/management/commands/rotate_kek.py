"""Rotate the key-encryption key: a new KEK version, and every study's data key re-wrapped
under it. Objects are untouched (they are encrypted under the data keys, not the KEK).

    python manage.py rotate_kek                 # add a version to the keyring file, re-wrap
    python manage.py rotate_kek --rewrap-only   # the new version was added to the secret

Resumable: a run that stops half-way leaves every key usable, and running the command again
finishes the re-wrapping before it would add another version. Restart the web and worker
processes afterwards so that new studies' keys are wrapped under the new version; a later run
re-wraps any they made meanwhile. Keep old versions in the keyring until a run reports that
nothing is left under them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.codes import Action, ActorKind
from audit.services import audit_record
from sharing.crypto import KeyringError
from sharing.keys import add_key_version, get_keyring, keys_not_under_current_kek, rewrap_data_keys


class Command(BaseCommand):
    help = "Add a new KEK version and re-wrap every study's data key under it (resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rewrap-only",
            action="store_true",
            help="Do not add a version; re-wrap under the keyring's current KEK.",
        )

    def handle(self, *args: Any, rewrap_only: bool = False, **options: Any) -> None:
        try:
            left = keys_not_under_current_kek()
            if left:
                self.stdout.write(f"Resuming: {left} data keys are not yet under the current KEK.")
            elif not rewrap_only:
                kek_id = add_key_version()
                self.stdout.write(f"Added KEK version {kek_id}.")
            current = get_keyring().current_kek_id()
            rewrapped = 0
            for count in rewrap_data_keys():
                rewrapped += count
                self.stdout.write(f"  re-wrapped {rewrapped}")
        except KeyringError as exc:
            raise CommandError(str(exc)) from exc
        audit_record(
            action=Action.DATA_KEYS_REWRAPPED,
            actor_kind=ActorKind.SYSTEM,
            actor_id="rotate_kek",
            detail={"kek": current, "rewrapped": rewrapped},
        )
        self.stdout.write(
            self.style.SUCCESS(f"Done: {rewrapped} data keys re-wrapped; all are under {current}.")
        )
