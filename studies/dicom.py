"""DICOM header parsing and validation for ingest: pydicom in, plain frozen dataclasses out.

This is the only module that imports pydicom on the ingest path. It never touches the ORM and
never decodes pixel data: every path in (C-STORE, STOW-RS, upload, bulk import) calls
`parse_instance(...)` on a spooled file and gets either a `ParsedInstance` or a
`DicomRejected` whose message a person can read and which carries no patient data.

How a file is read:

1. The size limit is checked from the file size before a single byte is parsed.
2. The file is hashed (SHA-256, whole and data set only) in chunks; this decodes nothing.
3. A small structural walk (`_StructureWalker`) follows the element lengths of the file meta and
   the data set up to Pixel Data, descending into sequences. It is what decides `TRUNCATED`,
   `BAD_LENGTH` and `TOO_DEEP`, because pydicom quietly accepts a short read at end of file.
   At top-level Pixel Data it only checks that the value (or, when encapsulated, every
   fragment) fits in the file, by seeking; the pixels themselves are never read.
4. pydicom reads the header with `stop_before_pixels=True` and the values are copied out.

What "truncated" means here: the file ends before a declared length says it should, anywhere
in the header *or* in the Pixel Data extent. A file cut short while copying almost always
loses its end, which is pixel data; storing it would publish an image that cannot be shown.
Pixel Data whose bytes are garbage but whose length is right is accepted: that is the
renderer's concern, and checking it would mean decoding.

What "not DICOM" means here: no `DICM` marker at offset 128, and the first element is not a
plausible start of a raw Implicit VR Little Endian data set (group 0008, the identifying
attributes every composite instance starts with). Old CDs carry such preamble-less files, so
they are accepted when they also pass every other rule; anything else is refused.
"""

from __future__ import annotations

import enum
import hashlib
import io
import os
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import IO, Any

import pydicom
import pydicom.uid
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

DEFAULT_MAX_SEQUENCE_DEPTH = 8
DEFAULT_MAX_BYTES = 2 * 1024**3
HASH_CHUNK_BYTES = 1024 * 1024


class RejectionReason(enum.StrEnum):
    """Why an instance was refused; stored in audit rows and shown to machines."""

    NOT_DICOM = "NOT_DICOM"
    TRUNCATED = "TRUNCATED"
    MISSING_ATTRIBUTE = "MISSING_ATTRIBUTE"
    BAD_LENGTH = "BAD_LENGTH"
    TOO_DEEP = "TOO_DEEP"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_SOP_CLASS = "UNSUPPORTED_SOP_CLASS"
    UNSUPPORTED_TRANSFER_SYNTAX = "UNSUPPORTED_TRANSFER_SYNTAX"
    BAD_UID = "BAD_UID"
    # The sender said which study it was sending (a STOW-RS URL), and this is of another one.
    STUDY_MISMATCH = "STUDY_MISMATCH"


# C-STORE statuses, PS3.4 Table B.2-1 (Storage Service Class): A7xx "Refused: Out of
# Resources", A900 "Error: Data Set does not match SOP Class", Cxxx "Error: Cannot
# understand". A missing Type 1 attribute or an unsupported SOP class means the data set does
# not conform to a SOP class we store, hence A900.
DIMSE_OUT_OF_RESOURCES = 0xA700
DIMSE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
DIMSE_CANNOT_UNDERSTAND = 0xC000

# STOW-RS Failure Reason (0008,1197), PS3.18 Table I.2-2 "Store Instances Response Failure
# Reason Values": A7xx out of resources, A9xx data set does not match SOP class, Cxxx cannot
# understand, C122 referenced Transfer Syntax not supported, 0110 processing failure,
# 0122 referenced SOP Class not supported.
STOW_OUT_OF_RESOURCES = 0xA700
STOW_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STOW_CANNOT_UNDERSTAND = 0xC000
STOW_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
STOW_SOP_CLASS_NOT_SUPPORTED = 0x0122

_DIMSE_STATUS: dict[RejectionReason, int] = {
    RejectionReason.NOT_DICOM: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.TRUNCATED: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.MISSING_ATTRIBUTE: DIMSE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    RejectionReason.BAD_LENGTH: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.TOO_DEEP: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.TOO_LARGE: DIMSE_OUT_OF_RESOURCES,
    RejectionReason.UNSUPPORTED_SOP_CLASS: DIMSE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    RejectionReason.UNSUPPORTED_TRANSFER_SYNTAX: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.BAD_UID: DIMSE_CANNOT_UNDERSTAND,
    RejectionReason.STUDY_MISMATCH: DIMSE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
}

_STOW_FAILURE_REASON: dict[RejectionReason, int] = {
    RejectionReason.NOT_DICOM: STOW_CANNOT_UNDERSTAND,
    RejectionReason.TRUNCATED: STOW_CANNOT_UNDERSTAND,
    RejectionReason.MISSING_ATTRIBUTE: STOW_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    RejectionReason.BAD_LENGTH: STOW_CANNOT_UNDERSTAND,
    RejectionReason.TOO_DEEP: STOW_CANNOT_UNDERSTAND,
    RejectionReason.TOO_LARGE: STOW_OUT_OF_RESOURCES,
    RejectionReason.UNSUPPORTED_SOP_CLASS: STOW_SOP_CLASS_NOT_SUPPORTED,
    RejectionReason.UNSUPPORTED_TRANSFER_SYNTAX: STOW_TRANSFER_SYNTAX_NOT_SUPPORTED,
    RejectionReason.BAD_UID: STOW_CANNOT_UNDERSTAND,
    # PS3.18 has no code of its own for a study other than the URL's; A9xx is "does not fit
    # what the request says it is".
    RejectionReason.STUDY_MISMATCH: STOW_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
}


class DicomRejected(Exception):
    """A file refused at ingest. The message is for people and never contains patient data."""

    def __init__(self, reason_code: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message

    @property
    def dimse_status(self) -> int:
        """The C-STORE response status for this refusal (PS3.4 Table B.2-1)."""
        return _DIMSE_STATUS[self.reason_code]

    @property
    def stow_failure_reason(self) -> int:
        """The STOW-RS Failure Reason (0008,1197) for this refusal (PS3.18 Table I.2-2)."""
        return _STOW_FAILURE_REASON[self.reason_code]


@dataclass(frozen=True)
class ParsedPatient:
    patient_id: str
    issuer_of_patient_id: str
    name: str
    birth_date: date | None
    sex: str


@dataclass(frozen=True)
class ParsedStudy:
    study_date: date | None
    study_time: time | None
    accession_number: str
    referring_physician_name: str
    study_id: str
    description: str


@dataclass(frozen=True)
class ParsedSeries:
    modality: str
    series_number: int | None
    description: str
    body_part: str
    performed_procedure_step_start_date: date | None
    performed_procedure_step_start_time: time | None


@dataclass(frozen=True)
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient: ParsedPatient
    study: ParsedStudy
    series: ParsedSeries
    instance_number: int | None
    number_of_frames: int
    rows: int | None
    columns: int | None
    size_bytes: int
    # The whole file as received, and the data set alone: the same instance sent over DIMSE,
    # STOW-RS or on a CD differs only in its file meta, so identity is the data set's hash.
    sha256: str
    data_set_sha256: str


# --- What we accept ------------------------------------------------------------------------

# The compressed syntaxes are stored as received; rendering decodes them with pylibjpeg.
# MPEG/HEVC video, HTJ2K and JPIP are refused: nothing downstream can render or forward them
# reliably yet, and a receiving viewer would show a broken study.
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGExtended12Bit,
        pydicom.uid.JPEGLossless,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEGLSLossless,
        pydicom.uid.JPEGLSNearLossless,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.JPEG2000,
        pydicom.uid.JPEG2000MCLossless,
        pydicom.uid.JPEG2000MC,
        pydicom.uid.RLELossless,
    }
)


def _storage_sop_classes() -> frozenset[str]:
    """Every Storage SOP class pydicom knows, retired ones included (old CDs carry them).

    Storage Commitment is a service, not something stored; the Media Storage Directory
    (DICOMDIR) is an index that the CD import reads, not an instance to share; the print
    classes under 1.2.840.10008.5.1.1 are print management.
    """
    accepted = set()
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        if kind != "SOP Class" or "Storage" not in name:
            continue
        if "Commitment" in name or uid.startswith("1.2.840.10008.5.1.1."):
            continue
        if uid == pydicom.uid.MediaStorageDirectoryStorage:
            continue
        accepted.add(uid)
    return frozenset(accepted)


STORAGE_SOP_CLASSES = _storage_sop_classes()

# PS3.5 9.1: UID components are digits, a component is "0" or does not start with 0, and
# the whole UID is at most 64 characters.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_MAX_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    """Whether `value` is a well-formed DICOM UID (PS3.5 section 9.1)."""
    return len(value) <= _UID_MAX_LENGTH and _UID_PATTERN.fullmatch(value) is not None


# --- Parsing ---------------------------------------------------------------------------------


def parse_instance(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
) -> ParsedInstance:
    """Parse and validate one DICOM Part 10 file's header without decoding its pixels.

    `source` is a path or a seekable binary file object (read from its start). The limits come
    from settings in the caller, so this module stays free of Django. Raises `DicomRejected`.
    """
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as file:
            return _parse_open_file(file, max_bytes, max_sequence_depth)
    return _parse_open_file(source, max_bytes, max_sequence_depth)


def _parse_open_file(file: IO[bytes], max_bytes: int, max_sequence_depth: int) -> ParsedInstance:
    size_bytes = file.seek(0, io.SEEK_END)
    _check_size(size_bytes, max_bytes)

    file.seek(0)
    head = file.read(132)
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    if has_preamble:
        transfer_syntax_uid, data_set_offset = _read_file_meta(file, size_bytes)
        _check_transfer_syntax(transfer_syntax_uid)
    else:
        _check_raw_data_set_start(head)
        transfer_syntax_uid, data_set_offset = pydicom.uid.ImplicitVRLittleEndian, 0
    sha256, data_set_sha256 = _hash_from_start(file, data_set_offset)

    _check_structure(file, size_bytes, data_set_offset, transfer_syntax_uid, max_bytes,
                     max_sequence_depth)  # fmt: skip

    file.seek(0)
    try:
        data_set = pydicom.dcmread(file, stop_before_pixels=True, force=not has_preamble)
    except (EOFError, zlib.error) as error:
        raise rejection_for(RejectionReason.TRUNCATED) from error
    except Exception as error:
        # The walk found the structure sound, so this is a value pydicom cannot make sense of.
        raise DicomRejected(
            RejectionReason.NOT_DICOM, "This file's DICOM header cannot be read."
        ) from error

    instance = _instance_from(data_set, transfer_syntax_uid, size_bytes, sha256, data_set_sha256)
    if has_preamble:
        _check_file_meta_agrees(data_set, instance)
    return instance


def _hash_from_start(file: IO[bytes], data_set_offset: int) -> tuple[str, str]:
    """SHA-256 of the whole file, and of the data set alone (everything after the file meta),
    in one pass."""
    whole, data_set = hashlib.sha256(), hashlib.sha256()
    file.seek(0)
    position = 0
    while chunk := file.read(HASH_CHUNK_BYTES):
        whole.update(chunk)
        if position + len(chunk) > data_set_offset:
            data_set.update(chunk[max(data_set_offset - position, 0) :])
        position += len(chunk)
    return whole.hexdigest(), data_set.hexdigest()


def _check_file_meta_agrees(data_set: Dataset, instance: ParsedInstance) -> None:
    """Refuse a file whose meta header says it is another kind of object than its data set.

    Why: the meta's SOP class decides how archives and viewers treat the file. A differing
    MediaStorageSOPInstanceUID is accepted: anonymisers often leave it stale, DIMSE senders do
    not even transmit the meta, and the index files the instance under the data set's own UID.
    """
    declared = str(data_set.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if declared and declared != instance.sop_class_uid:
        raise DicomRejected(
            RejectionReason.UNSUPPORTED_SOP_CLASS,
            "The file's header names a different kind of object than its contents.",
        )


_MESSAGES: dict[RejectionReason, str] = {
    RejectionReason.NOT_DICOM: "This file is not a DICOM image.",
    RejectionReason.TRUNCATED: (
        "The file ends before its contents do — it may have been cut off while copying."
    ),
    RejectionReason.BAD_LENGTH: (
        "The file is damaged: one of its parts claims to be longer than the whole file."
    ),
    RejectionReason.STUDY_MISMATCH: (
        "This instance belongs to another study than the one in the request URL; it was not stored."
    ),
}


def rejection_for(reason: RejectionReason) -> DicomRejected:
    return DicomRejected(reason, _MESSAGES[reason])


def _check_size(size_bytes: int, max_bytes: int) -> None:
    """Refuse a file over the configured limit before parsing it.

    Why: the spool and memory are finite; a single huge file must not starve other senders,
    and the check costs nothing because the size is known before reading.
    """
    if size_bytes == 0:
        raise DicomRejected(RejectionReason.NOT_DICOM, "This file is empty, not a DICOM image.")
    if size_bytes > max_bytes:
        raise DicomRejected(
            RejectionReason.TOO_LARGE,
            f"The file is larger than the {_human_size(max_bytes)} this portal accepts "
            "for one image.",
        )


def _human_size(byte_count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if byte_count >= scale:
            return f"{byte_count / scale:.3g} {unit}"
    return f"{byte_count} bytes"


def _check_raw_data_set_start(head: bytes) -> None:
    """Accept a preamble-less file only if it starts like an Implicit VR Little Endian data set.

    Why: PS3.10 files always carry `DICM`, but CDs written by old systems hold raw data sets.
    Group 0008 first (the identifying module, e.g. Specific Character Set or SOP Class UID)
    tells them apart from text, archives and office documents, which would otherwise be
    "parsed" into garbage elements.
    """
    if len(head) < 8:
        raise rejection_for(RejectionReason.NOT_DICOM)
    group, _element, length = struct.unpack("<HHL", head[:8])
    if group != 0x0008 or length > 1024:
        raise rejection_for(RejectionReason.NOT_DICOM)


def _read_file_meta(file: IO[bytes], size_bytes: int) -> tuple[str, int]:
    """Read the group 0002 file meta (always Explicit VR Little Endian, PS3.10 7.1).

    Returns the transfer syntax and where the data set starts. Why not pydicom: its meta
    reader guesses at a missing transfer syntax, and we must refuse instead.
    """
    transfer_syntax_uid = ""
    file.seek(132)
    while True:
        position = file.tell()
        header = file.read(8)
        if len(header) == 0:
            break
        if len(header) < 8:
            raise rejection_for(RejectionReason.TRUNCATED)
        group, element = struct.unpack("<HH", header[:4])
        if group != 0x0002:
            break
        vr = header[4:6]
        if vr in _LONG_LENGTH_VRS:
            length_bytes = file.read(4)
            if len(length_bytes) < 4:
                raise rejection_for(RejectionReason.TRUNCATED)
            (length,) = struct.unpack("<L", length_bytes)
        else:
            (length,) = struct.unpack("<H", header[6:8])
        if length > size_bytes:
            raise rejection_for(RejectionReason.BAD_LENGTH)
        value = file.read(length)
        if len(value) < length:
            raise rejection_for(RejectionReason.TRUNCATED)
        if element == 0x0010:
            transfer_syntax_uid = value.rstrip(b"\x00 ").decode("ascii", "replace")
    if not transfer_syntax_uid:
        raise DicomRejected(
            RejectionReason.MISSING_ATTRIBUTE,
            "TransferSyntaxUID is missing from the file's meta information.",
        )
    return transfer_syntax_uid, position


def _check_transfer_syntax(transfer_syntax_uid: str) -> None:
    """Refuse a transfer syntax outside `SUPPORTED_TRANSFER_SYNTAXES`.

    Why: everything stored must be forwardable to receiving facilities and renderable in the
    browser; an encoding we cannot read would only fail later, in front of a clinician.
    """
    if not is_valid_uid(transfer_syntax_uid):
        raise DicomRejected(RejectionReason.BAD_UID, "TransferSyntaxUID is not a valid UID.")
    if transfer_syntax_uid not in SUPPORTED_TRANSFER_SYNTAXES:
        name = pydicom.uid.UID(transfer_syntax_uid).name
        raise DicomRejected(
            RejectionReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"The image encoding ({name}) is not one this portal accepts; please send it "
            "uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE.",
        )


# --- The structural walk ---------------------------------------------------------------------

# PS3.5 7.1.2: these explicit VRs have two reserved bytes and a 32-bit length.
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def _check_structure(
    file: IO[bytes],
    size_bytes: int,
    data_set_offset: int,
    transfer_syntax_uid: str,
    max_bytes: int,
    max_sequence_depth: int,
) -> None:
    """Follow every declared length of the data set; see the module docstring for why."""
    if transfer_syntax_uid == pydicom.uid.DeflatedExplicitVRLittleEndian:
        file.seek(data_set_offset)
        inflated = _inflate_bounded(file.read(), max_bytes)
        walker = _StructureWalker(io.BytesIO(inflated), len(inflated), False, True,
                                  max_sequence_depth)  # fmt: skip
        walker.walk_top_level(0)
        return
    syntax = pydicom.uid.UID(transfer_syntax_uid)
    walker = _StructureWalker(file, size_bytes, syntax.is_implicit_VR, syntax.is_little_endian,
                              max_sequence_depth)  # fmt: skip
    walker.walk_top_level(data_set_offset)


def _inflate_bounded(compressed: bytes, max_bytes: int) -> bytes:
    """Inflate a deflated data set, refusing it once it grows past `max_bytes`.

    Why: a few megabytes of deflate can expand to gigabytes (a "zip bomb"); pydicom would
    inflate it all at once, so we prove the size first.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(compressed, max_bytes + 1)
    except zlib.error as error:
        raise rejection_for(RejectionReason.TRUNCATED) from error
    if len(inflated) > max_bytes:
        raise DicomRejected(
            RejectionReason.TOO_LARGE,
            f"The file unpacks to more than the {_human_size(max_bytes)} this portal accepts "
            "for one image.",
        )
    if not inflater.eof:
        raise rejection_for(RejectionReason.TRUNCATED)
    return inflated


class _StructureWalker:
    """Reads element headers and seeks over values; never reads a value it does not need."""

    def __init__(
        self,
        file: IO[bytes],
        size_bytes: int,
        is_implicit_vr: bool,
        is_little_endian: bool,
        max_sequence_depth: int,
    ) -> None:
        self.file = file
        self.size_bytes = size_bytes
        self.is_implicit_vr = is_implicit_vr
        self.endian = "<" if is_little_endian else ">"
        self.max_sequence_depth = max_sequence_depth

    def walk_top_level(self, offset: int) -> None:
        self.file.seek(offset)
        self._walk_data_set(end=None, depth=0, implicit=self.is_implicit_vr, top_level=True)

    def _read_exact(self, count: int) -> bytes:
        data = self.file.read(count)
        if len(data) < count:
            raise rejection_for(RejectionReason.TRUNCATED)
        return data

    def _check_value_fits(self, length: int, end: int | None) -> None:
        """A length beyond the whole file is corrupt; one beyond what is left is a cut file."""
        if length > self.size_bytes:
            raise rejection_for(RejectionReason.BAD_LENGTH)
        if self.file.tell() + length > (self.size_bytes if end is None else end):
            if end is not None and self.file.tell() + length <= self.size_bytes:
                raise rejection_for(RejectionReason.BAD_LENGTH)
            raise rejection_for(RejectionReason.TRUNCATED)

    def _walk_data_set(
        self, *, end: int | None, depth: int, implicit: bool, top_level: bool
    ) -> None:
        endian = "<" if implicit else self.endian  # UN sequences are implicit little endian
        while end is None or self.file.tell() < end:
            header = self.file.read(4)
            if not header and top_level:
                return
            if len(header) < 4:
                raise rejection_for(RejectionReason.TRUNCATED)
            group, element = struct.unpack(endian + "HH", header)
            tag = group << 16 | element
            if tag == _ITEM_DELIMITER:
                self._read_exact(4)
                if top_level or end is not None:
                    raise rejection_for(RejectionReason.NOT_DICOM)
                return
            if implicit:
                (length,) = struct.unpack(endian + "L", self._read_exact(4))
                vr = _dictionary_vr(tag)
            else:
                vr_bytes = self._read_exact(2)
                vr = vr_bytes.decode("ascii", "replace")
                if vr_bytes in _LONG_LENGTH_VRS:
                    self._read_exact(2)
                    (length,) = struct.unpack(endian + "L", self._read_exact(4))
                else:
                    (length,) = struct.unpack(endian + "H", self._read_exact(2))

            if top_level and tag in _PIXEL_DATA_TAGS:
                self._check_pixel_data(length, endian)
                return
            if length == _UNDEFINED_LENGTH:
                # PS3.5 7.5: undefined length means a sequence (UN ones are implicit LE),
                # or encapsulated pixel data inside an item (an icon image).
                if tag in _PIXEL_DATA_TAGS:
                    self._skip_fragments(endian)
                else:
                    self._walk_sequence(end=None, depth=depth + 1, implicit=implicit or vr == "UN")
                continue
            self._check_value_fits(length, end)
            if vr == "SQ":
                value_end = self.file.tell() + length
                self._walk_sequence(end=value_end, depth=depth + 1, implicit=implicit)
            else:
                self.file.seek(length, io.SEEK_CUR)

    def _walk_sequence(self, *, end: int | None, depth: int, implicit: bool) -> None:
        """Why a limit: deep nesting makes parsers recurse without bound (a crash or DoS),
        and no real imaging object nests anywhere near the limit."""
        if depth > self.max_sequence_depth:
            raise DicomRejected(
                RejectionReason.TOO_DEEP,
                f"The file nests sequences more than {self.max_sequence_depth} levels deep, "
                "which no valid image does.",
            )
        endian = "<" if implicit else self.endian
        while end is None or self.file.tell() < end:
            group, element, length = struct.unpack(endian + "HHL", self._read_exact(8))
            tag = group << 16 | element
            if tag == _SEQUENCE_DELIMITER and end is None:
                return
            if tag != _ITEM:
                raise rejection_for(RejectionReason.NOT_DICOM)
            if length == _UNDEFINED_LENGTH:
                self._walk_data_set(end=None, depth=depth, implicit=implicit, top_level=False)
            else:
                self._check_value_fits(length, end)
                item_end = self.file.tell() + length
                self._walk_data_set(end=item_end, depth=depth, implicit=implicit, top_level=False)
                self.file.seek(item_end)

    def _check_pixel_data(self, length: int, endian: str) -> None:
        """Check that the pixel data is all there, by seeking; never read or decode it."""
        if length == _UNDEFINED_LENGTH:
            self._skip_fragments(endian)
        else:
            self._check_value_fits(length, None)

    def _skip_fragments(self, endian: str) -> None:
        while True:
            group, element, length = struct.unpack(endian + "HHL", self._read_exact(8))
            tag = group << 16 | element
            if tag == _SEQUENCE_DELIMITER:
                return
            if tag != _ITEM or length == _UNDEFINED_LENGTH:
                raise rejection_for(RejectionReason.NOT_DICOM)
            self._check_value_fits(length, None)
            self.file.seek(length, io.SEEK_CUR)


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


# --- From a pydicom data set to plain values -------------------------------------------------

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _instance_from(
    data_set: Dataset, transfer_syntax_uid: str, size_bytes: int, sha256: str, data_set_sha256: str
) -> ParsedInstance:
    uids = {keyword: _required_uid(data_set, keyword) for keyword in _REQUIRED_UIDS}
    _check_sop_class(uids["SOPClassUID"])
    patient_id = _text(data_set, "PatientID")
    if not patient_id:
        # PatientID is Type 2 in the standard, but without it a study can never be matched to
        # the patient whose consent governs it.
        raise DicomRejected(RejectionReason.MISSING_ATTRIBUTE, "PatientID is missing or empty.")
    return ParsedInstance(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        patient=ParsedPatient(
            patient_id=patient_id,
            issuer_of_patient_id=_text(data_set, "IssuerOfPatientID"),
            name=_text(data_set, "PatientName"),
            birth_date=parse_da(_text(data_set, "PatientBirthDate")),
            sex=_text(data_set, "PatientSex"),
        ),
        study=ParsedStudy(
            study_date=parse_da(_text(data_set, "StudyDate")),
            study_time=parse_tm(_text(data_set, "StudyTime")),
            accession_number=_text(data_set, "AccessionNumber"),
            referring_physician_name=_text(data_set, "ReferringPhysicianName"),
            study_id=_text(data_set, "StudyID"),
            description=_text(data_set, "StudyDescription"),
        ),
        series=ParsedSeries(
            modality=_text(data_set, "Modality"),
            series_number=_integer(data_set, "SeriesNumber"),
            description=_text(data_set, "SeriesDescription"),
            body_part=_text(data_set, "BodyPartExamined"),
            performed_procedure_step_start_date=parse_da(
                _text(data_set, "PerformedProcedureStepStartDate")
            ),
            performed_procedure_step_start_time=parse_tm(
                _text(data_set, "PerformedProcedureStepStartTime")
            ),
        ),
        instance_number=_integer(data_set, "InstanceNumber"),
        number_of_frames=max(_integer(data_set, "NumberOfFrames") or 1, 1),
        rows=_integer(data_set, "Rows"),
        columns=_integer(data_set, "Columns"),
        size_bytes=size_bytes,
        sha256=sha256,
        data_set_sha256=data_set_sha256,
    )


def _required_uid(data_set: Dataset, keyword: str) -> str:
    """Refuse a missing or malformed identifying UID.

    Why: these four UIDs are the instance's identity in the index, in DICOMweb URLs and in
    de-duplication; a missing or malformed one would make the instance unreachable or let it
    collide with another.
    """
    value = _text(data_set, keyword)
    if not value:
        raise DicomRejected(RejectionReason.MISSING_ATTRIBUTE, f"{keyword} is missing.")
    if not is_valid_uid(value):
        raise DicomRejected(RejectionReason.BAD_UID, f"{keyword} is not a valid DICOM UID.")
    return value


def _check_sop_class(sop_class_uid: str) -> None:
    """Refuse anything that is not a Storage SOP class (e.g. a query or worklist object).

    Why: the portal shares stored images and documents; other objects have no meaning here.
    """
    if sop_class_uid not in STORAGE_SOP_CLASSES:
        raise DicomRejected(
            RejectionReason.UNSUPPORTED_SOP_CLASS,
            "This kind of DICOM object is not an image or document this portal can store.",
        )


def _text(data_set: Dataset, keyword: str) -> str:
    """The value as text, or "" when absent or unreadable: one odd value must not crash."""
    try:
        value: Any = data_set.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(item) for item in value).strip(" \x00")
    return str(value).strip(" \x00")


def _integer(data_set: Dataset, keyword: str) -> int | None:
    text = _text(data_set, keyword).split("\\")[0]
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


_DA_PATTERN = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TM_PATTERN = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")


def parse_da(value: str) -> date | None:
    """A DA value (YYYYMMDD, or the ACR-NEMA YYYY.MM.DD) as a date; None when malformed."""
    match = _DA_PATTERN.fullmatch(value.strip())
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_tm(value: str) -> time | None:
    """A TM value (HH[MM[SS[.FFFFFF]]], colons tolerated) as a time; None when malformed."""
    match = _TM_PATTERN.fullmatch(value.strip())
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    try:
        return time(
            int(hour),
            int(minute or 0),
            # A leap second (60) is legal in DICOM but not in Python.
            min(int(second or 0), 59),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        return None


# --- CD index (DICOMDIR) ---------------------------------------------------------------------


def read_dicomdir_file_ids(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
) -> list[tuple[str, ...]]:
    """The files a CD's index (a PS3.10 DICOMDIR) lists, each as its ReferencedFileID path
    components exactly as written (e.g. `("DICOM", "ST000000", "IM000000")`).

    The index is checked like an instance (size, file meta, the structural walk) before pydicom
    reads it, so a hostile one cannot make pydicom recurse or read past its end. The components
    are not judged here: the caller decides which of them stay inside the CD. Raises
    `DicomRejected` when the file is not a readable DICOMDIR.
    """
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as file:
            return _read_dicomdir_file_ids(file, max_bytes, max_sequence_depth)
    return _read_dicomdir_file_ids(source, max_bytes, max_sequence_depth)


def _read_dicomdir_file_ids(
    file: IO[bytes], max_bytes: int, max_sequence_depth: int
) -> list[tuple[str, ...]]:
    size_bytes = file.seek(0, io.SEEK_END)
    _check_size(size_bytes, max_bytes)
    file.seek(0)
    head = file.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        # PS3.10 8.6: a DICOMDIR is always a Part 10 file with file meta.
        raise rejection_for(RejectionReason.NOT_DICOM)
    transfer_syntax_uid, data_set_offset = _read_file_meta(file, size_bytes)
    _check_transfer_syntax(transfer_syntax_uid)
    _check_structure(file, size_bytes, data_set_offset, transfer_syntax_uid, max_bytes,
                     max_sequence_depth)  # fmt: skip
    file.seek(0)
    try:
        data_set = pydicom.dcmread(file)
    except (EOFError, zlib.error) as error:
        raise rejection_for(RejectionReason.TRUNCATED) from error
    except Exception as error:
        raise DicomRejected(
            RejectionReason.NOT_DICOM, "This CD index's header cannot be read."
        ) from error
    media_class = _text(data_set.file_meta, "MediaStorageSOPClassUID")
    if media_class != pydicom.uid.MediaStorageDirectoryStorage:
        raise DicomRejected(RejectionReason.NOT_DICOM, "This file is not a CD index (DICOMDIR).")
    try:
        return [
            _file_id_components(record.get("ReferencedFileID", None))
            for record in data_set.get("DirectoryRecordSequence", None) or []
            if record.get("ReferencedFileID", None) not in (None, "")
        ]
    except Exception as error:
        raise DicomRejected(
            RejectionReason.NOT_DICOM, "This CD index's records cannot be read."
        ) from error


def _file_id_components(value: Any) -> tuple[str, ...]:
    components = [value] if isinstance(value, str | bytes) else list(value)
    return tuple(
        (c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)).strip(" \x00")
        for c in components
    )
