"""studies.media: what is inside a folder, a zip or a CD, and what is refused before ingest."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from studies import media
from studies.media import (
    MediaEntry,
    MediaLimits,
    MediaReason,
    MediaRefusal,
    MediaRefused,
    ResultOutcome,
    media_ingest,
    media_items,
    safe_display_name,
)
from studies.models import Instance, Study
from studies.services import Channel, IngestSource
from studies.synthetic import SyntheticPatient

LIMITS = MediaLimits(max_total_bytes=50 * 1024**2, max_ratio=100, max_members=1000)
MEDIA_PATIENT = SyntheticPatient(patient_id="CD-4711", issuer="")


def items(path: Path, limits: MediaLimits = LIMITS, name: str | None = None) -> list:
    return list(media_items(path, name=name, limits=limits))


def read_all(entry: MediaEntry) -> bytes:
    with entry.open() as stream:
        chunks = []
        while chunk := stream.read(64 * 1024):
            chunks.append(chunk)
    return b"".join(chunks)


def read_entries(found) -> dict[str, bytes | MediaReason]:
    """Each name with its bytes, or with the reason it was refused (when found or when read).
    Entries are read as they come: a zip's entries can be opened until the enumeration ends."""
    outcome: dict[str, bytes | MediaReason] = {}
    for item in found:
        if isinstance(item, MediaRefusal):
            outcome[item.name] = item.reason
            continue
        try:
            outcome[item.name] = read_all(item)
        except MediaRefused as refusal:
            outcome[item.name] = refusal.reason
    return outcome


def make_zip(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return path


def make_cd(folder: Path, sources: list[Path]) -> Path:
    """A CD as a burner writes it: DICOMDIR, PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx."""
    file_set = FileSet()
    for source in sources:
        file_set.add(source)
    file_set.write(folder)
    return folder


def make_dicomdir(path: Path, file_ids: list[list[str]]) -> Path:
    """A DICOMDIR listing `file_ids` as they are, however odd (pydicom's FileSet refuses odd
    ones, which is the point of these tests)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    data_set = Dataset()
    data_set.file_meta = meta
    data_set.FileSetID = "TEST"
    records = []
    with warnings.catch_warnings():  # pydicom rightly warns that `..` is no valid CS value
        warnings.simplefilter("ignore")
        for file_id in file_ids:
            record = Dataset()
            record.DirectoryRecordType = "IMAGE"
            record.ReferencedFileID = file_id
            records.append(record)
        data_set.DirectoryRecordSequence = records
        data_set.save_as(path, enforce_file_format=True)
    return path


# --- Single files, folders and names -----------------------------------------------------------


def test_it_offers_a_single_file_under_the_name_given(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello")

    [entry] = items(path, name="CD/IMAGES/IM1")

    assert entry.name == "CD/IMAGES/IM1"
    assert read_all(entry) == b"hello"


def test_it_names_folder_files_by_their_path_within_the_folder(tmp_path):
    folder = tmp_path / "Study CD"
    (folder / "DICOM" / "A").mkdir(parents=True)
    (folder / "DICOM" / "A" / "IM1").write_bytes(b"one")
    (folder / "IM0").write_bytes(b"zero")

    found = read_entries(media_items(folder, limits=LIMITS))

    assert found == {"Study CD/DICOM/A/IM1": b"one", "Study CD/IM0": b"zero"}
    assert not any(str(tmp_path) in name for name in found)


def test_it_passes_over_operating_system_clutter(tmp_path):
    folder = tmp_path / "cd"
    folder.mkdir()
    (folder / "IM1").write_bytes(b"image")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "Thumbs.db").write_bytes(b"x")
    (folder / "._IM1").write_bytes(b"x")

    assert list(read_entries(media_items(folder, limits=LIMITS))) == ["cd/IM1"]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("CD/DICOM/IM1", "CD/DICOM/IM1"),
        ("../../etc/passwd", "etc/passwd"),
        ("/etc/passwd", "etc/passwd"),
        ("C:\\Users\\pat\\IM1", "Users/pat/IM1"),
        ("evil\x00name\r\n", "evilname"),
        ("", "upload"),
        ("..", "upload"),
    ],
)
def test_display_names_from_browsers_are_made_safe(raw, shown):
    assert safe_display_name(raw) == shown


def test_it_refuses_links_that_leave_the_folder_and_follows_those_that_stay(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    folder = tmp_path / "cd"
    folder.mkdir()
    (folder / "IM1").write_bytes(b"image")
    (folder / "escape").symlink_to(outside / "secret")
    (folder / "escape-dir").symlink_to(outside)
    (folder / "again").symlink_to(folder / "IM1")

    found = read_entries(media_items(folder, limits=LIMITS))

    assert found["cd/escape"] == MediaReason.LINK_OUTSIDE
    assert found["cd/escape-dir"] == MediaReason.LINK_OUTSIDE
    assert found["cd/again"] == b"image"
    assert b"not yours" not in found.values()


def test_it_refuses_what_is_not_an_ordinary_file(tmp_path):
    folder = tmp_path / "cd"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    (folder / "loop").symlink_to(folder / "loop")

    found = read_entries(media_items(folder, limits=LIMITS))

    assert found == {"cd/loop": MediaReason.NOT_A_FILE, "cd/pipe": MediaReason.NOT_A_FILE}


# --- Zips --------------------------------------------------------------------------------------


def test_it_offers_the_files_of_a_zip_named_within_it(tmp_path):
    archive = make_zip(tmp_path / "cd.zip", {"DICOM/IM1": b"one", "DICOM/IM2": b"two"})

    assert read_entries(media_items(archive, limits=LIMITS)) == {
        "cd.zip/DICOM/IM1": b"one",
        "cd.zip/DICOM/IM2": b"two",
    }


def test_it_knows_a_zip_by_its_bytes_not_its_name(tmp_path):
    archive = make_zip(tmp_path / "download", {"IM1": b"one"})

    assert read_entries(media_items(archive, limits=LIMITS)) == {"download/IM1": b"one"}


def test_a_dicom_file_whose_preamble_looks_like_a_zip_is_still_dicom(tmp_path):
    path = tmp_path / "IM1"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 124 + b"DICM" + b"\0" * 100)

    [entry] = items(path)

    assert isinstance(entry, MediaEntry)


def test_it_refuses_a_zip_bomb_by_its_ratio(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"IM1": b"\0" * (20 * 1024**2)})

    [refusal] = items(archive)

    assert refusal == MediaRefusal("bomb.zip", MediaReason.ARCHIVE_RATIO, refusal.message)
    assert "zip bomb" in refusal.message


def test_it_refuses_the_one_member_packed_like_a_bomb_and_keeps_the_others(tmp_path):
    # Random bytes do not compress, so the archive as a whole looks ordinary.
    random_bytes = os.urandom(3 * 1024**2)
    archive = make_zip(tmp_path / "cd.zip", {"IM1": random_bytes, "IM2": b"\0" * 4 * 1024**2})

    found = read_entries(media_items(archive, limits=LIMITS))

    assert found == {"cd.zip/IM1": random_bytes, "cd.zip/IM2": MediaReason.ARCHIVE_RATIO}


def test_it_refuses_a_zip_that_declares_more_than_the_total_limit(tmp_path):
    limits = MediaLimits(max_total_bytes=1024**2, max_ratio=100, max_members=1000)
    archive = make_zip(
        tmp_path / "big.zip",
        {"IM1": os.urandom(600 * 1024), "IM2": os.urandom(600 * 1024)},
        compression=zipfile.ZIP_STORED,
    )

    [refusal] = items(archive, limits)

    assert (refusal.name, refusal.reason) == ("big.zip", MediaReason.ARCHIVE_TOO_LARGE)
    assert "1 MiB" in refusal.message


def test_it_counts_the_bytes_really_unpacked_not_the_declared_sizes(tmp_path):
    """A central directory that understates a member's size gains nothing: what unpacks
    beyond the claim is refused, never passed on."""
    content = os.urandom(64 * 1024)
    archive = make_zip(tmp_path / "liar.zip", {"IM1": content}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # Understate the size in both the local header (offset 22) and the central directory.
    struct.pack_into("<L", data, 22, 1000)
    directory = data.rfind(b"PK\x01\x02")
    struct.pack_into("<L", data, directory + 24, 1000)
    archive.write_bytes(bytes(data))

    found = read_entries(media_items(archive, limits=LIMITS))

    assert found == {"liar.zip/IM1": MediaReason.DAMAGED_ARCHIVE}


def test_the_budget_stops_a_member_that_unpacks_past_its_claim():
    info = zipfile.ZipInfo("IM1")
    info.file_size, info.compress_size = 10, 10
    reader = media._MemberReader(io.BytesIO(b"x" * 100), info, media._Budget(LIMITS, 10))

    with pytest.raises(MediaRefused) as refused:
        reader.read(100)

    assert refused.value.reason == MediaReason.DAMAGED_ARCHIVE


def test_the_budget_stops_an_archive_that_unpacks_past_the_total_limit():
    limits = MediaLimits(max_total_bytes=1000, max_ratio=100, max_members=10)
    budget = media._Budget(limits, 10_000)
    budget.spend(900)

    with pytest.raises(MediaRefused) as refused:
        budget.spend(200)

    assert refused.value.reason == MediaReason.ARCHIVE_TOO_LARGE
    assert budget.tripped == MediaReason.ARCHIVE_TOO_LARGE


def test_it_refuses_a_zip_with_too_many_members(tmp_path):
    limits = MediaLimits(max_total_bytes=1024**2, max_ratio=100, max_members=3)
    archive = make_zip(tmp_path / "many.zip", {f"IM{n}": b"x" for n in range(5)})

    [refusal] = items(archive, limits)

    assert (refusal.name, refusal.reason) == ("many.zip", MediaReason.TOO_MANY_MEMBERS)
    assert "more than 3 files" in refusal.message


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../x", "cd.zip/../x"),
        ("/etc/passwd", "cd.zip/etc/passwd"),
        ("C:\\x", "cd.zip/C:\\x"),
        ("a/../../b", "cd.zip/a/../../b"),
        ("DICOM\\IM1", "cd.zip/DICOM\\IM1"),
    ],
)
def test_it_refuses_member_names_that_leave_the_archive(tmp_path, name, shown):
    archive = make_zip(tmp_path / "cd.zip", {name: b"evil", "IM1": b"fine"})

    found = read_entries(media_items(archive, limits=LIMITS))

    assert found == {shown: MediaReason.UNSAFE_NAME, "cd.zip/IM1": b"fine"}


def test_it_refuses_encrypted_members(tmp_path):
    archive = make_zip(tmp_path / "locked.zip", {"IM1": b"ciphertext", "IM2": b"plain"})
    data = bytearray(archive.read_bytes())
    # zipfile cannot encrypt: set the "encrypted" flag of IM1 in its local header and its
    # central directory entry, as a password-protected zip would have it.
    data[6] |= 0x1
    data[data.find(b"PK\x01\x02") + 8] |= 0x1
    archive.write_bytes(bytes(data))

    found = read_entries(media_items(tmp_path / "locked.zip", limits=LIMITS))

    assert found == {"locked.zip/IM1": MediaReason.ENCRYPTED, "locked.zip/IM2": b"plain"}


def test_it_does_not_unpack_a_zip_inside_a_zip(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"IM1": b"one"}).read_bytes()
    archive = make_zip(tmp_path / "outer.zip", {"inner.zip": inner, "renamed": inner})

    found = read_entries(media_items(archive, limits=LIMITS))

    assert found == {
        "outer.zip/inner.zip": MediaReason.NESTED_ARCHIVE,
        "outer.zip/renamed": MediaReason.NESTED_ARCHIVE,
    }


def test_it_unpacks_a_zip_found_in_a_folder(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    make_zip(folder / "cd1.zip", {"IM1": b"one"})

    assert read_entries(media_items(folder, limits=LIMITS)) == {"exports/cd1.zip/IM1": b"one"}


def test_it_refuses_a_damaged_zip(tmp_path):
    data = make_zip(tmp_path / "cut.zip", {"IM1": os.urandom(4096)}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])

    [refusal] = items(tmp_path / "cut.zip")

    assert (refusal.name, refusal.reason) == ("cut.zip", MediaReason.DAMAGED_ARCHIVE)


def test_it_says_so_when_a_zip_holds_nothing(tmp_path):
    empty = make_zip(tmp_path / "empty.zip", {})
    clutter = make_zip(tmp_path / "clutter.zip", {"__MACOSX/._IM1": b"x", ".DS_Store": b"x"})

    assert [(r.name, r.reason) for r in items(empty) + items(clutter)] == [
        ("empty.zip", MediaReason.EMPTY_ARCHIVE),
        ("clutter.zip", MediaReason.EMPTY_ARCHIVE),
    ]


def test_it_refuses_links_stored_in_a_zip(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16) | 0x20
    with zipfile.ZipFile(tmp_path / "links.zip", "w") as archive:
        archive.writestr(info, "/etc/passwd")

    [refusal] = items(tmp_path / "links.zip")

    assert refusal.reason == MediaReason.NOT_A_FILE


# --- CDs ---------------------------------------------------------------------------------------


def test_it_reads_a_cd_index_and_offers_its_images_first_then_the_other_files(
    tmp_path, synthetic_study
):
    cd = make_cd(tmp_path / "CD", synthetic_study(instances=2))
    (cd / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER.EXE\n")
    (cd / "VIEWER.EXE").write_bytes(b"MZ viewer")

    found = items(cd)

    assert [(type(item).__name__, item.name) for item in found] == [
        ("MediaRefusal", "CD/DICOMDIR"),
        ("MediaEntry", "CD/PT000000/ST000000/SE000000/IM000000"),
        ("MediaEntry", "CD/PT000000/ST000000/SE000000/IM000001"),
        ("MediaEntry", "CD/AUTORUN.INF"),
        ("MediaEntry", "CD/VIEWER.EXE"),
    ]
    assert found[0].reason == MediaReason.CD_INDEX
    assert "not an image" in found[0].message
    assert not found[0].audited


def test_it_reads_the_same_cd_from_a_zip(tmp_path, synthetic_study):
    cd = make_cd(tmp_path / "CD", synthetic_study(instances=2))
    with zipfile.ZipFile(tmp_path / "cd.zip", "w") as archive:
        for path in sorted(cd.rglob("*"), reverse=True):  # index last, to prove the order
            if path.is_file():
                archive.write(path, path.relative_to(cd).as_posix())

    found = items(tmp_path / "cd.zip")

    assert [item.name for item in found] == [
        "cd.zip/DICOMDIR",
        "cd.zip/PT000000/ST000000/SE000000/IM000000",
        "cd.zip/PT000000/ST000000/SE000000/IM000001",
    ]


def test_it_reads_pydicoms_bundled_cd_and_matches_names_as_a_cd_would(tmp_path):
    """pydicom's test CD lists files by upper-case ISO 9660 names; copies from Windows often
    come back with other case or a `;1` version, and must still be found."""
    bundled = Path(get_testdata_file("DICOMDIR")).parent
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "DICOMDIR").write_bytes((bundled / "DICOMDIR").read_bytes())
    listed = [("77654033", "CR1", "6154"), ("98892003", "MR700", "4467")]
    for file_id in listed:
        source = bundled.joinpath(*file_id)
        target = cd.joinpath(*(part.lower() for part in file_id[:-1]), file_id[-1] + ";1")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())

    found = items(cd)

    entries = [item.name for item in found if isinstance(item, MediaEntry)]
    assert entries == ["cd/77654033/cr1/6154;1", "cd/98892003/mr700/4467;1"]
    missing = [item for item in found if getattr(item, "reason", None) == "MISSING_ON_MEDIA"]
    assert len(missing) == 29
    assert "copy of the CD may be incomplete" in missing[0].message


def test_it_refuses_cd_index_entries_that_leave_the_cd(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"not on the CD")
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "IM1").write_bytes(b"image")
    make_dicomdir(cd / "DICOMDIR", [["..", "outside"], ["IM1"], ["/etc", "passwd"], ["GONE"]])

    found = items(cd)

    assert [(item.name, getattr(item, "reason", "")) for item in found] == [
        ("cd/DICOMDIR", MediaReason.CD_INDEX),
        ("cd/../outside", MediaReason.UNSAFE_NAME),
        ("cd/IM1", ""),
        ("cd/etc/passwd", MediaReason.UNSAFE_NAME),
        ("cd/GONE", MediaReason.MISSING_ON_MEDIA),
    ]
    assert "outside the CD" in found[1].message


def test_an_unreadable_cd_index_still_lets_every_file_be_tried(tmp_path):
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "DICOMDIR").write_bytes(b"scratched")
    (cd / "IM1").write_bytes(b"image")

    found = items(cd)

    assert [item.name for item in found] == ["cd/DICOMDIR", "cd/IM1"]
    assert "could not be read" in found[0].message


# --- Ingest ------------------------------------------------------------------------------------


@pytest.fixture
def upload_source(origin, front_desk) -> IngestSource:
    return IngestSource.for_user(facility=origin, channel=Channel.UPLOAD, user=front_desk)


def test_media_ingest_stores_a_cd_and_sets_its_index_and_viewer_aside(
    tmp_path, synthetic_study, upload_source, spool
):
    cd = make_cd(tmp_path / "CD", synthetic_study(instances=2, patient=MEDIA_PATIENT))
    (cd / "VIEWER.EXE").write_bytes(b"MZ viewer")

    results = list(media_ingest(path=cd, source=upload_source, spool=spool))

    assert [(r.name, r.outcome) for r in results] == [
        ("CD/DICOMDIR", ResultOutcome.SKIPPED),
        ("CD/PT000000/ST000000/SE000000/IM000000", ResultOutcome.ACCEPTED),
        ("CD/PT000000/ST000000/SE000000/IM000001", ResultOutcome.ACCEPTED),
        ("CD/VIEWER.EXE", ResultOutcome.REFUSED),
    ]
    assert [r.is_other_file for r in results] == [True, False, False, True]
    study = Study.objects.get()
    assert study.match == Study.Match.PENDING
    assert {r.study_id for r in results[1:3]} == {study.pk}
    assert Instance.objects.count() == 2
    assert list(spool.incoming_dir.glob("*")) == []


def test_media_ingest_audits_refusals_made_before_the_service_without_names(
    tmp_path, upload_source, spool
):
    archive = make_zip(tmp_path / "evil.zip", {"../../etc/cron.d/x": b"* * * * * root sh"})

    [result] = media_ingest(path=archive, source=upload_source, spool=spool)

    assert (result.outcome, result.reason) == (ResultOutcome.REFUSED, "UNSAFE_NAME")
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.outcome == Outcome.DENIED
    assert event.actor_kind == ActorKind.USER
    assert event.detail == {"channel": "upload", "reason": "UNSAFE_NAME"}
    assert not Study.objects.exists()
    assert list(spool.incoming_dir.glob("*")) == []
