"""Study downloads: a streaming ZIP of the DICOM files as received, with a DICOMDIR.

What a download is, and why it is built this way:

- **The files exactly as received.** Each instance is its original bytes (the SHA-256 recorded
  at ingest), decrypted segment by segment through `read_instance`, the only way to study bytes.
  Entries are *stored*, not deflated: pixel data hardly compresses and deflate would cost the CPU
  that decryption needs. Memory stays at about one segment (1 MiB) whatever the study's size,
  and no plaintext is ever written to a temporary file.
- **A DICOMDIR** (PS3.10 media storage directory, PS3.3 Annex F) at the root, built from the
  database's metadata before the first byte, so that a PACS or viewer can import the archive as
  media: PATIENT / STUDY / SERIES / IMAGE records, the files at `DICOM/S0001/IM000001` (file IDs
  of at most 8 upper-case characters per component, three levels).
- **A known length.** Stored entries and the sizes recorded at ingest make the whole archive's
  size computable up front (`StudyArchive.content_length`), so the response carries an exact
  Content-Length and any client can tell a cut-off download from a complete one.
- **Never a partial archive that looks complete.** The CRC-32 of each file is computed while it
  streams and written in a data descriptor after it; the central directory comes last. Access
  is asked again before every segment (and before every file); when it ends, or the store fails,
  the stream raises instead of finishing, the server aborts the response, and what the client
  holds has no central directory: no ZIP reader opens it.
- **ZIP64** where sizes or offsets need it (as Python's zipfile decides, from 2 GiB on), so a
  study of several GiB downloads like a small one.

Before anything streams, `plan_study_archive` checks that every instance is published and has
its encrypted object in the store: a study that cannot be served whole is refused with a clear
error instead of a zip missing files.
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time

from django.utils import timezone
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from sharing.access import ReadAccess
from sharing.models import StoredObject
from sharing.services import read_instance
from sharing.store import ObjectStore, get_object_store
from studies.models import Instance, Series, Study

DICOMDIR_NAME = "DICOMDIR"
# PS3.10 8.2: File IDs of at most 8 components of at most 8 characters from A-Z, 0-9 and _.
_FILE_ID_COMPONENT = re.compile(r"[A-Z0-9_]{1,8}")


class ArchiveError(Exception):
    """The archive cannot be made; the message says why in words a person understands."""


class ArchiveNotReady(ArchiveError):
    """Images of the selection are still being stored: try again later. Not an alert."""


class ObjectsMissing(ArchiveError):
    """Published instances without their encrypted object (no record of it, or gone from the
    store): data loss, an alert. `instance_ids` names them (database ids, no PHI)."""

    def __init__(self, message: str, instance_ids: Sequence[int]) -> None:
        super().__init__(message)
        self.instance_ids = list(instance_ids)


class StreamStopped(Exception):
    """The stream ended before the archive was complete; it must not end as a valid zip."""


class AccessEnded(StreamStopped):
    """The access decision said no while the archive streamed (consent withdrawn, link ended,
    study deleted): the rest is not sent."""

    def __init__(self, instance: Instance, sent_bytes: int) -> None:
        super().__init__(f"access ended during instance {instance.pk} after {sent_bytes} bytes")
        self.instance = instance
        self.sent_bytes = sent_bytes


class EntrySizeMismatch(StreamStopped):
    """An entry's source gave other than the size announced (in the Content-Length too)."""


# --- The ZIP writer ------------------------------------------------------------------------------

# Python's zipfile switches to ZIP64 above this (not 4 GiB): some readers take these fields as
# signed. Following it keeps the output to what the most common reader writes itself.
ZIP64_LIMIT = (1 << 31) - 1
ZIP_FILECOUNT_LIMIT = 0xFFFF
_MAX_32 = 0xFFFFFFFF
_MAX_16 = 0xFFFF

_LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")
_CENTRAL_HEADER = struct.Struct("<4sBBHHHHHLLLHHHHHLL")
_END_OF_CENTRAL_DIRECTORY = struct.Struct("<4sHHHHLLH")
_ZIP64_END = struct.Struct("<4sQHHLLQQQQ")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EXTRA_HEADER = struct.Struct("<HH")
_DATA_DESCRIPTOR_32 = struct.Struct("<4sLLL")
_DATA_DESCRIPTOR_64 = struct.Struct("<4sLQQ")

_DATA_DESCRIPTOR_FLAG = 0x0008  # CRC and sizes follow the data
_VERSION_DEFAULT = 20  # 2.0: stored entries, data descriptors
_VERSION_ZIP64 = 45  # 4.5: ZIP64
_MADE_BY_UNIX = 3
_STORED = 0
_FILE_MODE = 0o100644  # a regular file, readable: what unzip gives the extracted file
# Central directory pieces are sent in chunks of about this size rather than all at once.
_TAIL_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ZipMember:
    """One file of the archive: its name, its exact size, and its bytes, produced only when its
    turn comes (so nothing is read, audited or decrypted before it is sent)."""

    name: str
    size: int
    chunks: Callable[[], Iterable[bytes]]

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if not self.name.isascii() or any(part in ("", ".", "..") for part in parts):
            raise ValueError("archive names are relative ASCII paths")
        if self.size < 0:
            raise ValueError("a size cannot be negative")


@dataclass
class _Placed:
    member: ZipMember
    offset: int
    local_header: bytes
    crc: int = 0

    @property
    def zip64_local(self) -> bool:
        return self.member.size > ZIP64_LIMIT


def _dos_date_time(moment: datetime) -> tuple[int, int]:
    year = min(max(moment.year, 1980), 2107)
    dos_date = ((year - 1980) << 9) | (moment.month << 5) | moment.day
    dos_time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    return dos_date, dos_time


class ZipStream:
    """A ZIP archive of stored entries, written front to back without seeking.

    Each entry is a local header (CRC and sizes zero, flag bit 3), the bytes as the member's
    source gives them, and a data descriptor with the CRC-32 computed on the way; the central
    directory follows the last entry. Because every size is known beforehand, so is every
    offset and the archive's total size (`content_length`), before the first byte.

    Iterating raises `EntrySizeMismatch` when a source gives more or fewer bytes than announced,
    and passes on whatever a source raises: the archive then stops before its central directory.
    """

    def __init__(self, members: Sequence[ZipMember], *, modified: datetime) -> None:
        names = [member.name for member in members]
        if len(set(names)) != len(names):
            raise ValueError("archive names must be unique")
        self._date, self._time = _dos_date_time(modified)
        self._placed: list[_Placed] = []
        offset = 0
        for member in members:
            header = self._local_header(member)
            self._placed.append(_Placed(member, offset, header))
            offset += len(header) + member.size + self._descriptor_size(member)
        self._central_directory_offset = offset
        self._central_directory_size = sum(
            _CENTRAL_HEADER.size + len(placed.member.name) + len(self._central_extra(placed))
            for placed in self._placed
        )
        self.content_length = (
            offset + self._central_directory_size + len(self._end_records(sample=True))
        )

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for placed in self._placed:
            if sent != placed.offset:  # cannot happen unless the layout code is wrong
                raise EntrySizeMismatch("the archive's layout is inconsistent")
            yield placed.local_header
            crc, size = 0, 0
            for chunk in placed.member.chunks():
                size += len(chunk)
                if size > placed.member.size:
                    raise EntrySizeMismatch(f"{placed.member.name} is longer than announced")
                crc = zlib.crc32(chunk, crc)
                yield chunk
            if size != placed.member.size:
                raise EntrySizeMismatch(f"{placed.member.name} is shorter than announced")
            placed.crc = crc
            descriptor = self._descriptor(placed)
            yield descriptor
            sent = placed.offset + len(placed.local_header) + size + len(descriptor)
        tail = b"".join(self._central_header(placed) for placed in self._placed)
        tail += self._end_records()
        for start in range(0, len(tail), _TAIL_CHUNK):
            yield tail[start : start + _TAIL_CHUNK]

    # Layout.

    def _local_header(self, member: ZipMember) -> bytes:
        name = member.name.encode("ascii")
        extra = b""
        version = _VERSION_DEFAULT
        sizes = 0
        if member.size > ZIP64_LIMIT:
            # As Python's zipfile streams: the ZIP64 extra field with zero sizes, 0xFFFFFFFF in
            # the header; its presence tells readers the data descriptor has 8-byte sizes.
            extra = _ZIP64_EXTRA_HEADER.pack(1, 16) + struct.pack("<QQ", 0, 0)
            version = _VERSION_ZIP64
            sizes = _MAX_32
        return (
            _LOCAL_HEADER.pack(
                b"PK\x03\x04",
                version,
                _DATA_DESCRIPTOR_FLAG,
                _STORED,
                self._time,
                self._date,
                0,  # CRC-32: in the data descriptor
                sizes,
                sizes,
                len(name),
                len(extra),
            )
            + name
            + extra
        )

    @staticmethod
    def _descriptor_size(member: ZipMember) -> int:
        if member.size > ZIP64_LIMIT:
            return _DATA_DESCRIPTOR_64.size
        return _DATA_DESCRIPTOR_32.size

    def _descriptor(self, placed: _Placed) -> bytes:
        size = placed.member.size
        if placed.zip64_local:
            return _DATA_DESCRIPTOR_64.pack(b"PK\x07\x08", placed.crc, size, size)
        return _DATA_DESCRIPTOR_32.pack(b"PK\x07\x08", placed.crc, size, size)

    @staticmethod
    def _central_extra(placed: _Placed) -> bytes:
        # Only the fields that do not fit, in the order APPNOTE 4.5.3 gives.
        values = []
        if placed.member.size > ZIP64_LIMIT:
            values += [placed.member.size, placed.member.size]
        if placed.offset > ZIP64_LIMIT:
            values.append(placed.offset)
        if not values:
            return b""
        return _ZIP64_EXTRA_HEADER.pack(1, 8 * len(values)) + struct.pack(
            f"<{len(values)}Q", *values
        )

    def _central_header(self, placed: _Placed) -> bytes:
        name = placed.member.name.encode("ascii")
        extra = self._central_extra(placed)
        size = placed.member.size
        version = _VERSION_ZIP64 if extra else _VERSION_DEFAULT
        return (
            _CENTRAL_HEADER.pack(
                b"PK\x01\x02",
                version,
                _MADE_BY_UNIX,
                version,
                _DATA_DESCRIPTOR_FLAG,
                _STORED,
                self._time,
                self._date,
                placed.crc,
                _MAX_32 if size > ZIP64_LIMIT else size,
                _MAX_32 if size > ZIP64_LIMIT else size,
                len(name),
                len(extra),
                0,  # comment length
                0,  # disk number start
                0,  # internal attributes
                _FILE_MODE << 16,
                _MAX_32 if placed.offset > ZIP64_LIMIT else placed.offset,
            )
            + name
            + extra
        )

    def _end_records(self, *, sample: bool = False) -> bytes:
        """The end of central directory record, preceded by the ZIP64 record and locator when
        the count, size or offset of the central directory does not fit. `sample` is for
        measuring: the records have the same length either way."""
        count = len(self._placed)
        size = self._central_directory_size
        offset = self._central_directory_offset
        records = b""
        if count > ZIP_FILECOUNT_LIMIT or size > ZIP64_LIMIT or offset > ZIP64_LIMIT:
            zip64_end_offset = offset + size
            records += _ZIP64_END.pack(
                b"PK\x06\x06",
                _ZIP64_END.size - 12,  # the record's size, without its signature and this field
                _VERSION_ZIP64 | (_MADE_BY_UNIX << 8),
                _VERSION_ZIP64,
                0,
                0,
                count,
                count,
                size,
                offset,
            )
            records += _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, zip64_end_offset, 1)
        records += _END_OF_CENTRAL_DIRECTORY.pack(
            b"PK\x05\x06",
            0,
            0,
            min(count, _MAX_16),
            min(count, _MAX_16),
            min(size, _MAX_32),
            min(offset, _MAX_32),
            0,  # comment length
        )
        return records


# --- The DICOMDIR --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedInstance:
    instance: Instance
    file_id: tuple[str, ...]  # ("DICOM", "S0001", "IM000001")

    @property
    def name(self) -> str:
        return "/".join(self.file_id)


def _file_ids(
    series_list: Sequence[Series], instances: Sequence[Instance]
) -> list[ArchivedInstance]:
    """`DICOM/S<series>/IM<instance>`, numbered by position (not by the DICOM numbers, which
    may be missing or repeat): short, unique, and free of anything about the patient."""
    position = {series.pk: index for index, series in enumerate(series_list, start=1)}
    counters: dict[int, int] = {}
    placed = []
    for instance in instances:
        number = counters[instance.series_id] = counters.get(instance.series_id, 0) + 1
        file_id = ("DICOM", f"S{position[instance.series_id]:04d}", f"IM{number:06d}")
        if not all(_FILE_ID_COMPONENT.fullmatch(part) for part in file_id):
            raise ArchiveError("This study has too many series or images for one archive.")
        placed.append(ArchivedInstance(instance, file_id))
    return placed


def _dicom_date(value: date | None) -> str:
    return f"{value:%Y%m%d}" if value is not None else ""


def _dicom_time(value: time | None) -> str:
    if value is None:
        return ""
    return f"{value:%H%M%S}.{value.microsecond:06d}" if value.microsecond else f"{value:%H%M%S}"


def _record(record_type: str, **attributes: object) -> Dataset:
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    for keyword, value in attributes.items():
        setattr(record, keyword, value)
    return record


# Encoded pieces, explicit VR little endian: an item's tag (FFFE,E000); the Directory Record
# Sequence's tag, VR and reserved bytes (its 4-byte length follows); and a record's first element,
# (0004,1400) UL of 4 bytes, and third, (0004,1420) UL, after the 10 bytes of (0004,1410) US.
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQUENCE_HEADER = b"\x04\x00\x20\x12SQ\x00\x00"
_NEXT_OFFSET_ELEMENT = b"\x04\x00\x00\x14UL\x04\x00"
_LOWER_OFFSET_ELEMENT = b"\x04\x00\x20\x14UL\x04\x00"


@dataclass
class _Node:
    record: Dataset
    children: list[_Node] = field(default_factory=list)
    offset: int = 0  # of its item in the file, from the first byte of the preamble


def build_dicomdir(
    study: Study, series_list: Sequence[Series], archived: Sequence[ArchivedInstance]
) -> bytes:
    """The DICOMDIR file (PS3.10, Media Storage Directory Storage) for these instances.

    Built from the database's copy of the headers: the patient's name and ID and the study's
    attributes as received, the series' modality and number, each instance's SOP class,
    instance UID, transfer syntax and number. Directory records need some values of type 1 that
    a received file may lack: a missing Series or Instance Number is replaced here by its
    position (the files themselves are never changed); a missing study date stays empty.
    Every leaf is an IMAGE record, which only needs the instance number and which readers
    follow for any SOP class.
    """
    texts = [study.patient_name, study.patient_id_value, study.description]
    texts += [study.accession_number, study.study_id]
    unicode = not all(text.isascii() for text in texts)
    charset = {"SpecificCharacterSet": "ISO_IR 192"} if unicode else {}

    patient = _Node(
        _record(
            "PATIENT", **charset, PatientName=study.patient_name, PatientID=study.patient_id_value
        )
    )
    study_node = _Node(
        _record(
            "STUDY",
            **charset,
            StudyDate=_dicom_date(study.study_date),
            StudyTime=_dicom_time(study.study_time),
            AccessionNumber=study.accession_number,
            StudyDescription=study.description,
            StudyInstanceUID=study.study_instance_uid,
            StudyID=study.study_id,
        )
    )
    patient.children.append(study_node)
    series_nodes: dict[int, _Node] = {}
    for position, series in enumerate(series_list, start=1):
        node = _Node(
            _record(
                "SERIES",
                Modality=series.modality or "OT",
                SeriesInstanceUID=series.series_instance_uid,
                SeriesNumber=series.series_number if series.series_number is not None else position,
            )
        )
        series_nodes[series.pk] = node
        study_node.children.append(node)
    for item in archived:
        instance = item.instance
        siblings = series_nodes[instance.series_id].children
        number = instance.instance_number
        siblings.append(
            _Node(
                _record(
                    "IMAGE",
                    ReferencedFileID=list(item.file_id),
                    ReferencedSOPClassUIDInFile=instance.sop_class_uid,
                    ReferencedSOPInstanceUIDInFile=instance.sop_instance_uid,
                    ReferencedTransferSyntaxUIDInFile=instance.transfer_syntax_uid,
                    InstanceNumber=number if number is not None else len(siblings) + 1,
                )
            )
        )
    return _encode_dicomdir([patient], charset)


def _walk(nodes: Sequence[_Node]) -> Iterator[_Node]:
    """Depth first, each record before its children: the order of the record sequence."""
    for node in nodes:
        yield node
        yield from _walk(node.children)


def _encode_dicomdir(roots: Sequence[_Node], charset: dict[str, str]) -> bytes:
    """Encode the directory, its offsets pointing at the records' items (PS3.3 F.3.2.2).

    Offsets are counted from the first byte of the file (the preamble). Every offset is a UL of
    4 bytes, so lengths do not depend on their values: each record is encoded once by pydicom
    with zeros there, its items' positions follow from the lengths, and the offsets are then
    written into the encoded records (at fixed places: they are a record's first elements).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)

    directory = Dataset()
    for keyword, value in charset.items():
        setattr(directory, keyword, value)
    directory.FileSetID = "IMAGES"
    directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.FileSetConsistencyFlag = 0
    encoding = charset.get("SpecificCharacterSet", "iso8859")

    nodes = list(_walk(roots))
    records = [bytearray(_encoded(node.record, encoding)) for node in nodes]
    if any(
        record[:8] != _NEXT_OFFSET_ELEMENT or record[22:30] != _LOWER_OFFSET_ELEMENT
        for record in records
    ):
        raise ArchiveError("The image directory could not be built.")
    before_sequence_size = len(_encoded(directory[:0x00041220], encoding))
    offset = len(head.getvalue()) + before_sequence_size + len(_SEQUENCE_HEADER) + 4
    for node, record in zip(nodes, records, strict=True):
        node.offset = offset
        offset += len(_ITEM_TAG) + 4 + len(record)
    positions = {id(node): index for index, node in enumerate(nodes)}
    for siblings in [roots, *(node.children for node in nodes)]:
        for index, current in enumerate(siblings):
            following = siblings[index + 1].offset if index + 1 < len(siblings) else 0
            lower = current.children[0].offset if current.children else 0
            record = records[positions[id(current)]]
            struct.pack_into("<L", record, 8, following)
            struct.pack_into("<L", record, 30, lower)
    directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = roots[0].offset
    directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = roots[-1].offset
    items = b"".join(_ITEM_TAG + struct.pack("<L", len(record)) + record for record in records)
    encoded = b"".join(
        [
            head.getvalue(),
            _encoded(directory[:0x00041220], encoding),
            _SEQUENCE_HEADER + struct.pack("<L", len(items)) + items,
            _encoded(directory[0x00041221:], encoding),  # (0008,0005) when there is one
        ]
    )
    # The arithmetic above is what every reader relies on: each offset must land on an item.
    if any(encoded[node.offset : node.offset + 4] != _ITEM_TAG for node in nodes):
        raise ArchiveError("The image directory could not be built.")
    return encoded


def _encoded(data_set: Dataset, encoding: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, data_set, encoding)
    return buffer.getvalue()


# --- A study's archive ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyArchive:
    """What a download will send, decided before the first byte: the instances in order with
    their file IDs, the DICOMDIR, and so the exact size."""

    study: Study
    series: Series | None  # None: the whole study
    instances: list[ArchivedInstance]
    dicomdir: bytes
    modified: datetime

    @property
    def content_length(self) -> int:
        return self._layout(lambda item: ()).content_length

    def _layout(self, chunks: Callable[[ArchivedInstance], Iterable[bytes]]) -> ZipStream:
        members = [ZipMember(DICOMDIR_NAME, len(self.dicomdir), lambda: (self.dicomdir,))]
        members += [
            ZipMember(item.name, item.instance.size_bytes, functools.partial(chunks, item))
            for item in self.instances
        ]
        return ZipStream(members, modified=self.modified)

    def stream(self, access: ReadAccess, *, store: ObjectStore | None = None) -> Iterator[bytes]:
        """The archive's bytes. Raises `AccessEnded` as soon as the access decision says no
        (asked before each file and each segment), and passes on the store's and decryption's
        errors: in every such case before the central directory."""
        store = store or get_object_store()
        study_pk = self.study.pk

        def allowed() -> bool:
            # The study as it is now: a shred, a retention end or a re-match that happened
            # after the download started must stop it too, not only a withdrawn grant.
            current = Study.objects.filter(pk=study_pk).first()
            return current is not None and access.allows(current)

        def chunks(item: ArchivedInstance) -> Iterator[bytes]:
            instance = item.instance
            # Asked before the file is opened, so that a read that will not be sent is neither
            # audited nor fetched; the answer also covers the file's first segment, which
            # read_instance asks about next (one question per segment, not two).
            if not allowed():
                raise AccessEnded(instance, 0)
            first_segment, refused = True, False

            def still_allowed() -> bool:
                nonlocal first_segment, refused
                if first_segment:
                    first_segment = False
                    return True
                refused = refused or not allowed()
                return not refused

            sent = 0
            for chunk in read_instance(
                instance, access.reader, still_allowed=still_allowed, store=store
            ):
                sent += len(chunk)
                yield chunk
            if refused:
                raise AccessEnded(instance, sent)

        return iter(self._layout(chunks))


def archive_file_name(study: Study, series: Series | None = None) -> str:
    """`study-2026-01-02.zip`, `study-2026-01-02-series-3.zip`: no name, ID or UID."""
    day = f"-{study.study_date:%Y-%m-%d}" if study.study_date else ""
    if series is None:
        return f"study{day}.zip"
    number = f"-{series.series_number}" if series.series_number is not None else ""
    return f"study{day}-series{number}.zip"


def plan_study_archive(
    study: Study,
    *,
    series: Series | None = None,
    store: ObjectStore | None = None,
    modified: datetime | None = None,
) -> StudyArchive:
    """Decide what the download of a study (or one of its series) sends, or refuse.

    Raises `ArchiveNotReady` when an instance is not published yet (or there is nothing), and
    `ObjectsMissing` when a published instance has no stored object or its object is gone from
    the store; `StoreUnavailable` when the store does not answer. Asking the store costs one
    HEAD per object (about 2 ms each): it is what turns an object missing from the store into
    an error page instead of a download that breaks off. An object that is there but altered
    or cut short is caught by decryption when its turn comes, and breaks the download off.
    """
    series_list = list(
        Series.objects.filter(study=study, **({"pk": series.pk} if series else {})).order_by(
            "series_number", "pk"
        )
    )
    instances = list(
        Instance.objects.filter(study=study, series__in=series_list)
        .select_related("study")
        .order_by("series__series_number", "series_id", "instance_number", "pk")
    )
    if not instances:
        raise ArchiveNotReady("There are no images to download yet.")
    if any(instance.state != Instance.State.PUBLISHED for instance in instances):
        raise ArchiveNotReady(
            "Some images are still being stored; the download is ready when all of them are."
        )
    stored = list(
        StoredObject.objects.filter(
            instance__in=instances, state=StoredObject.State.STORED, object_id__isnull=False
        )
    )
    recorded = {row.pk for row in stored}
    missing = [instance.pk for instance in instances if instance.pk not in recorded]
    if missing:
        raise ObjectsMissing(f"{len(missing)} published images have no stored object.", missing)
    store = store or get_object_store()
    # One HEAD per object, one after another: a couple of milliseconds each on the request
    # thread's own connection (threads would each have to build a connection first).
    gone = [row.pk for row in stored if not store.exists(row.name)]
    if gone:
        raise ObjectsMissing(f"{len(gone)} stored objects are missing from the store.", gone)
    archived = _file_ids(series_list, instances)
    dicomdir = build_dicomdir(study, series_list, archived)
    return StudyArchive(
        study=study,
        series=series,
        instances=archived,
        dicomdir=dicomdir,
        modified=timezone.localtime(modified or timezone.now()),
    )
