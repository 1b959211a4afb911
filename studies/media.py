"""What a person hands over, enumerated safely: one file, a folder (a copied CD) or a zip.

`media_items(path)` yields, for everything inside, either a `MediaEntry` (a name safe to show
and a way to open its bytes) or a `MediaRefusal` (the same name and a reason a person can
read). `media_ingest(...)` and `media_ingest_received(...)` put every entry through
`study_ingest_instance`, so the browser upload and the bulk import behave the same.

The rules, and why:

- **Names.** A display name is the path *within* what was handed over (`cd.zip/DICOM/IM1`,
  `CD/DICOM/IM1`), never a path of this machine. Nothing is ever extracted to a path built from
  a name (bytes go to random spool names), so a hostile name cannot write anywhere; it is still
  refused (absolute names, `..`, backslashes, drive letters, control characters), because an
  archive that carries one was not made by a CD burner or a PACS export.
- **Folders.** Links are followed only to files inside the folder; other links, devices and
  pipes are refused (opening a pipe would hang the import). Directory links are not walked.
- **Zips.** Before anything is unpacked: the table of contents must fit
  INGEST_MAX_ARCHIVE_MEMBERS entries, the declared unpacked total INGEST_MAX_ARCHIVE_BYTES, and
  the declared compression ratio INGEST_MAX_ARCHIVE_RATIO (a "zip bomb" is a small file that
  unpacks to a huge one). While unpacking, the bytes actually produced are counted against the
  same bounds, so a lying header gains nothing. Encrypted members and zips inside zips are
  refused, not unpacked. A zip found in a folder is unpacked (it is what was handed over).
- **CDs.** A DICOMDIR is the CD's index, not an image: it is read to list the CD's images
  first, to report images it lists that are missing (an incomplete copy) and to refuse entries
  pointing outside the CD. Files it does not list are still offered: CDs also carry viewer
  programs, and those come back as "not DICOM" from the service, which the upload page groups
  as "other files".
- Operating-system clutter (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`, `desktop.ini`) is
  passed over without a word: it is never an image and reporting it would only bury the rest.
"""

from __future__ import annotations

import enum
import io
import logging
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from django.conf import settings

from studies.dicom import DicomRejected, RejectionReason, read_dicomdir_file_ids
from studies.services import (
    IngestOutcome,
    IngestResult,
    IngestSource,
    audit_ingest_refusal,
    study_ingest_instance,
)
from studies.spool import COPY_CHUNK_BYTES, Spool, get_spool

logger = logging.getLogger(__name__)

# Compression ratios only matter once the unpacked size does: a 20 KiB member of zeros packed
# 200:1 harms no one, and small, blank DICOM files do pack that well.
RATIO_CHECK_AFTER_BYTES = 1024 * 1024
# A DICOMDIR lists a CD's files; even a full DVD's index is a few megabytes.
MAX_DICOMDIR_BYTES = 64 * 1024 * 1024
# A central directory entry is 46 bytes plus name, extra field and comment; a table of contents
# bigger than this per allowed member is not one of a CD or a PACS export.
_MAX_DIRECTORY_BYTES_PER_MEMBER = 1024
MAX_DISPLAY_NAME_LENGTH = 255

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_EMPTY_ARCHIVE = b"PK\x05\x06"
_OS_CLUTTER_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class MediaReason(enum.StrEnum):
    """Why an entry was not offered for ingest; stored in audit rows (never a file name)."""

    CD_INDEX = "CD_INDEX"
    UNSAFE_NAME = "UNSAFE_NAME"
    LINK_OUTSIDE = "LINK_OUTSIDE"
    NOT_A_FILE = "NOT_A_FILE"
    ENCRYPTED = "ENCRYPTED"
    NESTED_ARCHIVE = "NESTED_ARCHIVE"
    ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"
    ARCHIVE_RATIO = "ARCHIVE_RATIO"
    TOO_MANY_MEMBERS = "TOO_MANY_MEMBERS"
    DAMAGED_ARCHIVE = "DAMAGED_ARCHIVE"
    MISSING_ON_MEDIA = "MISSING_ON_MEDIA"
    EMPTY_ARCHIVE = "EMPTY_ARCHIVE"
    UNREADABLE = "UNREADABLE"
    TOO_LARGE = "TOO_LARGE"


# Refusals of bytes someone sent are audited like the service's own; the CD index (read, not
# refused) and files a CD index lists but that were never there (nothing was received) are not.
_NOT_AUDITED = frozenset({MediaReason.CD_INDEX, MediaReason.MISSING_ON_MEDIA})


@dataclass(frozen=True)
class MediaLimits:
    max_total_bytes: int
    max_ratio: int
    max_members: int

    @classmethod
    def from_settings(cls) -> MediaLimits:
        return cls(
            max_total_bytes=settings.INGEST_MAX_ARCHIVE_BYTES,
            max_ratio=settings.INGEST_MAX_ARCHIVE_RATIO,
            max_members=settings.INGEST_MAX_ARCHIVE_MEMBERS,
        )


class MediaRefused(Exception):
    """Raised while reading an entry's bytes, when they break a rule the header did not."""

    def __init__(self, reason: MediaReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class MediaEntry:
    """One file to offer for ingest. `open()` may be called while the enumeration that yielded
    it has not moved on; reading may raise `MediaRefused`."""

    name: str
    opener: Callable[[], AbstractContextManager[IO[bytes]]] = field(repr=False, compare=False)

    def open(self) -> AbstractContextManager[IO[bytes]]:
        return self.opener()


@dataclass(frozen=True)
class MediaRefusal:
    name: str
    reason: MediaReason
    message: str

    @property
    def audited(self) -> bool:
        return self.reason not in _NOT_AUDITED


MediaItem = MediaEntry | MediaRefusal


# --- Messages ----------------------------------------------------------------------------------


def _size(byte_count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if byte_count >= scale:
            return f"{byte_count / scale:.3g} {unit}"
    return f"{byte_count} bytes"


def _refusal(name: str, reason: MediaReason, limits: MediaLimits | None = None) -> MediaRefusal:
    return MediaRefusal(name, reason, _message(reason, limits))


def _message(reason: MediaReason, limits: MediaLimits | None = None) -> str:
    limits = limits or MediaLimits.from_settings()
    messages = {
        MediaReason.CD_INDEX: (
            "This is the CD's index (DICOMDIR), not an image. The images it lists are read "
            "on their own."
        ),
        MediaReason.UNSAFE_NAME: (
            "This file's name points outside the folder or zip it came in (for example "
            "“../” or “C:\\”), so it was not read."
        ),
        MediaReason.LINK_OUTSIDE: (
            "This is a shortcut to something outside the folder, so it was not read."
        ),
        MediaReason.NOT_A_FILE: (
            "This is not an ordinary file (for example a shortcut or a device), so it was not read."
        ),
        MediaReason.ENCRYPTED: (
            "This file in the zip is protected by a password, so it could not be read. "
            "Please make the zip again without a password."
        ),
        MediaReason.NESTED_ARCHIVE: (
            "This is a zip file inside a zip file; it was not unpacked. Unpack it first and "
            "upload what it contains."
        ),
        MediaReason.ARCHIVE_TOO_LARGE: (
            f"The zip file unpacks to more than the {_size(limits.max_total_bytes)} this "
            "portal accepts at once. Please split it into smaller zip files."
        ),
        MediaReason.ARCHIVE_RATIO: (
            f"This is packed far more tightly than images ever are (more than "
            f"{limits.max_ratio} to 1), which is how harmful “zip bombs” are made, so it "
            "was not unpacked."
        ),
        MediaReason.TOO_MANY_MEMBERS: (
            f"The zip file holds more than {limits.max_members:,} files, more than this "
            "portal accepts at once. Please split it into smaller zip files."
        ),
        MediaReason.DAMAGED_ARCHIVE: (
            "The zip file is damaged or incomplete, so this could not be read. Please make "
            "the zip again."
        ),
        MediaReason.MISSING_ON_MEDIA: (
            "The CD's index lists this file, but it is not there: the copy of the CD may be "
            "incomplete."
        ),
        MediaReason.EMPTY_ARCHIVE: "The zip file holds no files.",
        MediaReason.UNREADABLE: (
            "This could not be read: it may be damaged, or the portal may not be allowed to "
            "open it."
        ),
        MediaReason.TOO_LARGE: (
            f"The file is larger than the {_size(max_upload_bytes())} this portal accepts "
            "for one file."
        ),
    }
    return messages[reason]


def max_upload_bytes() -> int:
    """The most one uploaded file may be: an image, or a zip that unpacks to at most the
    archive limit (zips never grow when packed, beyond a few header bytes)."""
    return max(settings.INGEST_MAX_INSTANCE_BYTES, settings.INGEST_MAX_ARCHIVE_BYTES)


# --- Names -------------------------------------------------------------------------------------


def safe_display_name(raw: str, *, fallback: str = "upload") -> str:
    """A name a browser sent (a file name or a folder-relative path), made safe to show and log
    beside the upload: no control characters, no absolute or parent parts, forward slashes."""
    text = _CONTROL_CHARACTERS.sub("", raw).replace("\\", "/")
    text = _DRIVE.sub("", text)
    parts = [part.strip() for part in text.split("/")]
    parts = [part for part in parts if part not in ("", ".", "..")]
    name = "/".join(parts)
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        name = "…" + name[-(MAX_DISPLAY_NAME_LENGTH - 1) :]
    return name or fallback


def _is_unsafe_member_name(name: str) -> bool:
    if _CONTROL_CHARACTERS.search(name) or "\\" in name or _DRIVE.match(name):
        return True
    if name.startswith("/"):
        return True
    return ".." in name.split("/")


def _normalised(parts: Iterable[str]) -> str:
    return "/".join(part for part in parts if part not in ("", "."))


def _shown(prefix: str, relative: str) -> str:
    """`prefix/relative`, cleaned of anything that could confuse a person or a terminal."""
    shown = _CONTROL_CHARACTERS.sub("?", f"{prefix}/{relative}".lstrip("/"))
    if len(shown) > MAX_DISPLAY_NAME_LENGTH:
        shown = "…" + shown[-(MAX_DISPLAY_NAME_LENGTH - 1) :]
    return shown


def _is_os_clutter(relative: str) -> bool:
    parts = relative.split("/")
    base = parts[-1]
    return "__MACOSX" in parts[:-1] or base.startswith("._") or base.lower() in _OS_CLUTTER_NAMES


def is_dicomdir_name(name: str) -> bool:
    """PS3.10 names a CD's index `DICOMDIR`; ISO 9660 copies may add `;1` or a final dot."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return _iso_base(base).upper() == "DICOMDIR"


def _iso_base(component: str) -> str:
    """A file name as a CD index names it: ISO 9660 version (`;1`) and a bare final dot off."""
    return component.split(";", 1)[0].rstrip(".")


def _lookup_key(relative: str) -> str:
    return "/".join(_iso_base(part).upper() for part in relative.split("/"))


# --- Sniffing ----------------------------------------------------------------------------------


def looks_like_zip(head: bytes) -> bool:
    """A zip by its first bytes. A DICOM file's 128-byte preamble is free-form and may itself
    start like a zip; `DICM` at offset 128 says it is DICOM, and that wins."""
    if head[128:132] == b"DICM":
        return False
    return head[:4] in (_ZIP_LOCAL_HEADER, _ZIP_EMPTY_ARCHIVE)


def _file_is_zip(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return looks_like_zip(file.read(132))
    except OSError:
        return False


# --- Enumeration -------------------------------------------------------------------------------


def media_items(
    path: Path, *, name: str | None = None, limits: MediaLimits | None = None
) -> Iterator[MediaItem]:
    """Everything in what was handed over at `path` (a folder, a zip or one file), with `name`
    (default: the last part of `path`) as the start of every display name."""
    limits = limits or MediaLimits.from_settings()
    shown = name or path.name or path.resolve().name or "upload"
    if path.is_dir():
        yield from _folder_items(path, shown, limits)
    elif _file_is_zip(path):
        yield from _zip_items(path, shown, limits)
    elif is_dicomdir_name(shown):
        yield _refusal(shown, MediaReason.CD_INDEX, limits)
    else:
        yield MediaEntry(shown, _file_opener(path))


@dataclass
class _Listed:
    """One file found in a folder or zip, before the CD index decides the order."""

    relative: str
    item: MediaItem
    dicomdir_reader: Callable[[], list[tuple[str, ...]]] | None = None
    archive: Path | None = None  # a zip in a folder: unpacked in its place


def _in_index_order(listed: list[_Listed], prefix: str, limits: MediaLimits) -> Iterator[MediaItem]:
    """Each CD index, then the files it lists (in its order), then every other file."""
    by_key = {_lookup_key(found.relative): found for found in listed}
    offered: set[int] = set()
    for index in listed:
        if index.dicomdir_reader is None:
            continue
        offered.add(id(index))
        base = index.relative.rsplit("/", 1)[0] if "/" in index.relative else ""
        try:
            file_ids = index.dicomdir_reader()
        except (DicomRejected, MediaRefused, OSError, zipfile.BadZipFile, zlib.error, EOFError):
            yield MediaRefusal(
                index.item.name,
                MediaReason.CD_INDEX,
                "This is the CD's index (DICOMDIR), not an image. It could not be read, so "
                "every file on the CD is tried instead.",
            )
            continue
        yield index.item
        for components in file_ids:
            if any(_is_unsafe_member_name(part) or "/" in part for part in components):
                written = [part.strip("/") for part in (base, *components)]
                yield MediaRefusal(
                    _shown(prefix, "/".join(part for part in written if part)),
                    MediaReason.UNSAFE_NAME,
                    "The CD's index points to a file outside the CD, so it was not read.",
                )
                continue
            relative = _normalised([base, *components])
            found = by_key.get(_lookup_key(relative))
            if found is None:
                yield _refusal(_shown(prefix, relative), MediaReason.MISSING_ON_MEDIA, limits)
            elif id(found) not in offered:
                offered.add(id(found))
                yield from _expanded(found, limits)
    for found in listed:
        if id(found) not in offered:
            yield from _expanded(found, limits)


def _expanded(found: _Listed, limits: MediaLimits) -> Iterator[MediaItem]:
    if found.archive is not None:
        yield from _zip_items(found.archive, found.item.name, limits)
    else:
        yield found.item


# --- Folders -----------------------------------------------------------------------------------


def _folder_items(folder: Path, prefix: str, limits: MediaLimits) -> Iterator[MediaItem]:
    root = folder.resolve()
    listed: list[_Listed] = []

    def unreadable(error: OSError) -> None:
        relative = Path(error.filename or root).relative_to(root).as_posix()
        refusal = _refusal(_shown(prefix, relative), MediaReason.UNREADABLE, limits)
        listed.append(_Listed(relative, refusal))

    for directory, directory_names, file_names in os.walk(root, onerror=unreadable):
        directory_names.sort()
        here = Path(directory)
        for directory_name in list(directory_names):
            candidate = here / directory_name
            # os.walk does not descend into links; say so only when one leaves the folder.
            if candidate.is_symlink() and not candidate.resolve().is_relative_to(root):
                relative = candidate.relative_to(root).as_posix()
                refusal = _refusal(_shown(prefix, relative), MediaReason.LINK_OUTSIDE, limits)
                listed.append(_Listed(relative, refusal))
        for file_name in sorted(file_names):
            candidate = here / file_name
            relative = candidate.relative_to(root).as_posix()
            if _is_os_clutter(relative):
                continue
            listed.append(_folder_file(candidate, relative, root, prefix, limits))
    yield from _in_index_order(listed, prefix, limits)


def _folder_file(
    candidate: Path, relative: str, root: Path, prefix: str, limits: MediaLimits
) -> _Listed:
    shown = _shown(prefix, relative)
    target = candidate
    try:
        if candidate.is_symlink():
            target = candidate.resolve()
            if not target.is_relative_to(root):
                return _Listed(relative, _refusal(shown, MediaReason.LINK_OUTSIDE, limits))
        mode = target.stat().st_mode
    except (OSError, RuntimeError):  # RuntimeError: a link loop
        return _Listed(relative, _refusal(shown, MediaReason.NOT_A_FILE, limits))
    if not stat.S_ISREG(mode):
        return _Listed(relative, _refusal(shown, MediaReason.NOT_A_FILE, limits))
    if is_dicomdir_name(relative):
        return _Listed(
            relative,
            _refusal(shown, MediaReason.CD_INDEX, limits),
            dicomdir_reader=lambda: read_dicomdir_file_ids(target, max_bytes=MAX_DICOMDIR_BYTES),
        )
    if _file_is_zip(target):
        return _Listed(relative, MediaEntry(shown, _file_opener(target)), archive=target)
    return _Listed(relative, MediaEntry(shown, _file_opener(target)))


def _file_opener(path: Path) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    @contextmanager
    def opened() -> Iterator[IO[bytes]]:
        try:
            file = path.open("rb")
        except OSError as error:
            raise MediaRefused(MediaReason.UNREADABLE, _message(MediaReason.UNREADABLE)) from error
        with file:
            yield cast(IO[bytes], _FileReader(file))

    return opened


class _FileReader(io.RawIOBase):
    """A folder's file, with read errors (a scratched CD, a vanished network share) turned
    into a refusal of that one file instead of an aborted import."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._file.read(size if size is not None and size >= 0 else COPY_CHUNK_BYTES)
        except OSError as error:
            raise MediaRefused(MediaReason.UNREADABLE, _message(MediaReason.UNREADABLE)) from error


# --- Zips --------------------------------------------------------------------------------------


def _zip_items(path: Path, prefix: str, limits: MediaLimits) -> Iterator[MediaItem]:
    try:
        with path.open("rb") as file:
            archive_bytes = file.seek(0, io.SEEK_END)
            problem = _table_of_contents_problem(file, limits)
            if problem is not None:
                yield _refusal(prefix, problem, limits)
                return
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                yield from _zip_members(archive, archive_bytes, prefix, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, struct.error, OSError):
        yield _refusal(prefix, MediaReason.DAMAGED_ARCHIVE, limits)


def _table_of_contents_problem(file: IO[bytes], limits: MediaLimits) -> MediaReason | None:
    """Refuse an oversized table of contents from its end record, before `zipfile` reads it.

    Why: `zipfile.ZipFile` reads the whole central directory into memory when it opens, one
    object per entry; a few megabytes of it could describe millions of entries.
    """
    size = file.seek(0, io.SEEK_END)
    tail_bytes = min(size, 22 + 0xFFFF + 20)  # end record, largest comment, zip64 locator
    file.seek(size - tail_bytes)
    tail = file.read(tail_bytes)
    at = tail.rfind(_ZIP_EMPTY_ARCHIVE)
    if at < 0 or at + 22 > len(tail):
        return MediaReason.DAMAGED_ARCHIVE
    entries, directory_bytes = struct.unpack("<10xHL6x", tail[at : at + 22])[:2]
    locator = tail[at - 20 : at] if at >= 20 else b""
    if locator[:4] == b"PK\x06\x07":
        (zip64_end_offset,) = struct.unpack("<8xQ4x", locator)
        file.seek(zip64_end_offset)
        zip64_end = file.read(56)
        if len(zip64_end) < 56 or zip64_end[:4] != b"PK\x06\x06":
            return MediaReason.DAMAGED_ARCHIVE
        entries, directory_bytes = struct.unpack("<32xQQ8x", zip64_end)
    if entries > limits.max_members:
        return MediaReason.TOO_MANY_MEMBERS
    if directory_bytes > limits.max_members * _MAX_DIRECTORY_BYTES_PER_MEMBER:
        return MediaReason.TOO_MANY_MEMBERS
    return None


class _Budget:
    """The bytes unpacked so far from one archive, against its limits."""

    def __init__(self, limits: MediaLimits, archive_bytes: int) -> None:
        self.limits = limits
        self.archive_bytes = max(archive_bytes, 1)
        self.unpacked = 0
        # Once the archive has given more than it may, nothing more of it is unpacked.
        self.tripped: MediaReason | None = None

    def spend(self, count: int) -> None:
        self.unpacked += count
        if self.unpacked > self.limits.max_total_bytes:
            self.tripped = MediaReason.ARCHIVE_TOO_LARGE
        elif (
            self.unpacked > RATIO_CHECK_AFTER_BYTES
            and self.unpacked > self.limits.max_ratio * self.archive_bytes
        ):
            self.tripped = MediaReason.ARCHIVE_RATIO
        if self.tripped is not None:
            raise MediaRefused(self.tripped, _message(self.tripped, self.limits))


def _zip_members(
    archive: zipfile.ZipFile, archive_bytes: int, prefix: str, limits: MediaLimits
) -> Iterator[MediaItem]:
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) > limits.max_members:
        yield _refusal(prefix, MediaReason.TOO_MANY_MEMBERS, limits)
        return
    declared = sum(info.file_size for info in members)
    if declared > limits.max_total_bytes:
        yield _refusal(prefix, MediaReason.ARCHIVE_TOO_LARGE, limits)
        return
    if declared > RATIO_CHECK_AFTER_BYTES and declared > limits.max_ratio * max(archive_bytes, 1):
        yield _refusal(prefix, MediaReason.ARCHIVE_RATIO, limits)
        return
    budget = _Budget(limits, archive_bytes)
    listed = []
    for info in members:
        listed_member = _zip_member(archive, info, budget, prefix, limits)
        if listed_member is not None:
            listed.append(listed_member)
    if not listed:
        yield _refusal(prefix, MediaReason.EMPTY_ARCHIVE, limits)
        return
    for item in _in_index_order(listed, prefix, limits):
        if isinstance(item, MediaEntry) and budget.tripped is not None:
            yield _refusal(item.name, budget.tripped, limits)
        else:
            yield item


def _zip_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    budget: _Budget,
    prefix: str,
    limits: MediaLimits,
) -> _Listed | None:
    name = info.filename
    if _is_unsafe_member_name(name):
        shown = _shown(prefix, name.lstrip("/"))
        return _Listed(name, _refusal(shown, MediaReason.UNSAFE_NAME, limits))
    relative = _normalised(name.split("/"))
    if not relative or _is_os_clutter(relative):
        return None
    shown = _shown(prefix, relative)
    if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG):
        return _Listed(relative, _refusal(shown, MediaReason.NOT_A_FILE, limits))
    if info.flag_bits & 0x1:
        return _Listed(relative, _refusal(shown, MediaReason.ENCRYPTED, limits))
    if info.file_size > RATIO_CHECK_AFTER_BYTES and info.file_size > limits.max_ratio * max(
        info.compress_size, 1
    ):
        return _Listed(relative, _refusal(shown, MediaReason.ARCHIVE_RATIO, limits))
    if relative.lower().endswith(".zip"):
        return _Listed(relative, _refusal(shown, MediaReason.NESTED_ARCHIVE, limits))
    opener = _member_opener(archive, info, budget)
    if is_dicomdir_name(relative):
        return _Listed(
            relative,
            _refusal(shown, MediaReason.CD_INDEX, limits),
            dicomdir_reader=lambda: _read_member_dicomdir(opener, info),
        )
    return _Listed(relative, MediaEntry(shown, opener))


def _read_member_dicomdir(
    opener: Callable[[], AbstractContextManager[IO[bytes]]], info: zipfile.ZipInfo
) -> list[tuple[str, ...]]:
    if info.file_size > MAX_DICOMDIR_BYTES:
        raise MediaRefused(MediaReason.TOO_LARGE, "The CD index is too large to read.")
    # A CD index names patients: it is held in memory only, never written anywhere.
    content = bytearray()
    with opener() as stream:
        while chunk := stream.read(COPY_CHUNK_BYTES):
            content += chunk
            if len(content) > MAX_DICOMDIR_BYTES:
                raise MediaRefused(MediaReason.TOO_LARGE, "The CD index is too large to read.")
    return read_dicomdir_file_ids(io.BytesIO(bytes(content)), max_bytes=MAX_DICOMDIR_BYTES)


def _member_opener(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget
) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    @contextmanager
    def opened() -> Iterator[IO[bytes]]:
        try:
            member = archive.open(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError) as e:
            # NotImplementedError: a compression method Python cannot unpack; RuntimeError: a
            # password is needed after all (the flag can be cleared while the data is not).
            raise MediaRefused(
                MediaReason.DAMAGED_ARCHIVE, _message(MediaReason.DAMAGED_ARCHIVE, budget.limits)
            ) from e
        with member:
            yield cast(IO[bytes], _MemberReader(member, info, budget))

    return opened


class _MemberReader(io.RawIOBase):
    """A zip member's bytes, counted as they are unpacked: the declared sizes are only a claim.

    Every read is bounded (never "read everything"), and the unpacked bytes are checked against
    the member's declared size, the archive's total budget and both compression ratios.
    """

    def __init__(self, member: IO[bytes], info: zipfile.ZipInfo, budget: _Budget) -> None:
        self._member = member
        self._info = info
        self._budget = budget
        self._unpacked = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = size if size is not None and 0 <= size <= COPY_CHUNK_BYTES else COPY_CHUNK_BYTES
        try:
            data = self._member.read(wanted)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
            raise MediaRefused(
                MediaReason.DAMAGED_ARCHIVE,
                "This file in the zip is damaged (it does not unpack as it should), so it was "
                "not stored.",
            ) from error
        limits = self._budget.limits
        if self._unpacked == 0 and looks_like_zip(data[:132]):
            raise MediaRefused(
                MediaReason.NESTED_ARCHIVE, _message(MediaReason.NESTED_ARCHIVE, limits)
            )
        self._unpacked += len(data)
        if self._unpacked > self._info.file_size:
            raise MediaRefused(
                MediaReason.DAMAGED_ARCHIVE,
                "This file in the zip unpacks to more than the zip says it holds, so it was "
                "not stored.",
            )
        if self._unpacked > RATIO_CHECK_AFTER_BYTES and self._unpacked > limits.max_ratio * max(
            self._info.compress_size, 1
        ):
            raise MediaRefused(
                MediaReason.ARCHIVE_RATIO, _message(MediaReason.ARCHIVE_RATIO, limits)
            )
        self._budget.spend(len(data))
        return data


# --- Ingest ------------------------------------------------------------------------------------


class ResultOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    CONFLICT = "conflict"
    FAILED = "failed"
    # Read but not an image to store: the CD's index.
    SKIPPED = "skipped"


_FROM_INGEST = {
    IngestOutcome.STORED: ResultOutcome.ACCEPTED,
    IngestOutcome.DUPLICATE: ResultOutcome.DUPLICATE,
    IngestOutcome.REFUSED: ResultOutcome.REFUSED,
    IngestOutcome.CONFLICT: ResultOutcome.CONFLICT,
    IngestOutcome.FAILED: ResultOutcome.FAILED,
}

_FAILED_MESSAGE = "The portal could not store this image just now; please try again."


@dataclass(frozen=True)
class MediaResult:
    """What became of one file. `study_id` is the study an image was filed in (new or held)."""

    name: str
    outcome: ResultOutcome
    message: str
    reason: str = ""
    study_id: int | None = None

    @property
    def is_other_file(self) -> bool:
        """Not an image at all (a CD's index, its viewer program, a stray document): the
        upload page lists these apart, as "other files", so real problems stand out."""
        return self.outcome == ResultOutcome.SKIPPED or (
            self.outcome == ResultOutcome.REFUSED and self.reason == RejectionReason.NOT_DICOM
        )

    @property
    def is_problem(self) -> bool:
        return not self.is_other_file and self.outcome in (
            ResultOutcome.REFUSED,
            ResultOutcome.CONFLICT,
            ResultOutcome.FAILED,
        )


def media_ingest(
    *, path: Path, source: IngestSource, name: str | None = None, spool: Spool | None = None
) -> Iterator[MediaResult]:
    """Ingest everything in a folder, zip or file at `path` (left as it is), one result per
    file, as each is done. Refusals made here, before the service, are audited as it would."""
    spool = spool or get_spool()
    for item in media_items(path, name=name):
        yield _ingest_item(item, source, spool)


def media_ingest_received(
    *, incoming: Path, name: str, source: IngestSource, spool: Spool | None = None
) -> list[MediaResult]:
    """Ingest one uploaded file already received into the incoming spool file `incoming`,
    which this consumes: an image goes to the service as it is, a zip is unpacked member by
    member (each into its own incoming file) and then removed."""
    spool = spool or get_spool()
    try:
        with incoming.open("rb") as file:
            is_zip = looks_like_zip(file.read(132))
        if is_zip:
            limits = MediaLimits.from_settings()
            return [
                _ingest_item(item, source, spool) for item in _zip_items(incoming, name, limits)
            ]
        if is_dicomdir_name(name):
            return [_refused(_refusal(name, MediaReason.CD_INDEX), source)]
        result = study_ingest_instance(path=incoming, source=source, spool=spool)
        return [_from_ingest(name, result)]
    finally:
        spool.discard(incoming)


def media_refuse(
    *, name: str, reason: MediaReason, source: IngestSource, limit: int | None = None
) -> MediaResult:
    """Refuse a whole upload without reading it (it is larger than `limit`), audited."""
    refusal = _refusal(name, reason)
    if reason == MediaReason.TOO_LARGE and limit is not None:
        refusal = MediaRefusal(
            name,
            reason,
            f"The file is larger than the {_size(limit)} this portal accepts for one file.",
        )
    return _refused(refusal, source)


def _ingest_item(item: MediaItem, source: IngestSource, spool: Spool) -> MediaResult:
    if isinstance(item, MediaRefusal):
        return _refused(item, source)
    try:
        with item.open() as stream:
            incoming = spool.receive(stream, limit=settings.INGEST_MAX_INSTANCE_BYTES)
    except MediaRefused as refusal:
        return _refused(MediaRefusal(item.name, refusal.reason, refusal.message), source)
    except OSError:
        logger.exception("Copying an entry into the spool failed")
        return MediaResult(item.name, ResultOutcome.FAILED, _FAILED_MESSAGE)
    result = study_ingest_instance(path=incoming, source=source, spool=spool)
    return _from_ingest(item.name, result)


def _from_ingest(name: str, result: IngestResult) -> MediaResult:
    return MediaResult(
        name,
        _FROM_INGEST[result.outcome],
        result.message,
        reason=str(result.rejection.reason_code) if result.rejection is not None else "",
        study_id=result.instance.study_id if result.instance is not None else None,
    )


def _refused(refusal: MediaRefusal, source: IngestSource) -> MediaResult:
    if refusal.audited:
        audit_ingest_refusal(source, refusal.reason.value)
    outcome = (
        ResultOutcome.SKIPPED if refusal.reason == MediaReason.CD_INDEX else ResultOutcome.REFUSED
    )
    return MediaResult(refusal.name, outcome, refusal.message, reason=refusal.reason.value)
