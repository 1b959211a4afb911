"""The ingest spool: where received instances wait, on the node that received them.

Every ingest path writes the bytes it receives into an *incoming* file, hands that file to
`study_ingest_instance`, and the service either keeps it (an atomic rename into the spool,
inside the transaction that writes the index row) or discards it. So at any moment:

- an incoming file belongs to a transfer in progress, or to one that crashed: the sweeper
  removes it once it is older than any transfer could take;
- a spooled file has a committed index row, or the transaction that would have written that
  row failed or crashed after the rename: the sender was not told the instance was stored
  (the success response goes out only after commit), and the sweeper removes the file.

Names are random; nothing in a path says whose image it is.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings

_INCOMING_SUFFIX = ".part"
_SPOOLED_SUFFIX = ".dcm"
COPY_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Spool:
    root: Path
    fsync: bool = True

    @property
    def incoming_dir(self) -> Path:
        return self.root / "incoming"

    @property
    def instances_dir(self) -> Path:
        return self.root / "instances"

    def new_incoming(self) -> Path:
        """A fresh, empty incoming file (mode 0600) for one instance being received."""
        self.incoming_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.incoming_dir / f"{uuid.uuid4().hex}{_INCOMING_SUFFIX}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return path

    def receive(self, stream: IO[bytes], *, limit: int | None = None) -> Path:
        """Copy a stream into a new incoming file; at most `limit` + 1 bytes are written, so a
        caller can tell an oversized body from one that is exactly at the limit."""
        path = self.new_incoming()
        remaining = None if limit is None else limit + 1
        try:
            with path.open("wb") as file:
                while remaining is None or remaining > 0:
                    chunk = stream.read(
                        COPY_CHUNK_BYTES if remaining is None else min(COPY_CHUNK_BYTES, remaining)
                    )
                    if not chunk:
                        break
                    file.write(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
        except BaseException:
            self.discard(path)
            raise
        return path

    @staticmethod
    def new_spool_name() -> str:
        return f"{uuid.uuid4().hex}{_SPOOLED_SUFFIX}"

    def keep(self, incoming: Path, spool_name: str) -> None:
        """Move an incoming file into the spool under `spool_name` (fsync, atomic rename)."""
        if self.fsync:
            with incoming.open("rb") as file:
                os.fsync(file.fileno())
        target = self.path_of(spool_name)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(incoming, target)

    def path_of(self, spool_name: str) -> Path:
        # Two levels of fan-out keep directories small with millions of waiting files.
        return self.instances_dir / spool_name[:2] / spool_name

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def spooled_files(self, *, older_than_seconds: float) -> Iterator[tuple[str, Path]]:
        """(spool name, path) of spooled files not modified for `older_than_seconds`."""
        cutoff = time.time() - older_than_seconds
        if not self.instances_dir.is_dir():
            return
        for path in self.instances_dir.glob(f"*/*{_SPOOLED_SUFFIX}"):
            if _modified_before(path, cutoff):
                yield path.name, path

    def stale_incoming(self, *, older_than_seconds: float) -> Iterator[Path]:
        cutoff = time.time() - older_than_seconds
        if not self.incoming_dir.is_dir():
            return
        for path in self.incoming_dir.glob(f"*{_INCOMING_SUFFIX}"):
            if _modified_before(path, cutoff):
                yield path


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # finished or removed while we looked
        return False


def get_spool() -> Spool:
    return Spool(root=Path(settings.INGEST_SPOOL_DIR), fsync=settings.INGEST_SPOOL_FSYNC)
