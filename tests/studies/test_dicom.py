"""Header parsing and validation of DICOM files at ingest (studies/dicom.py)."""

from __future__ import annotations

import hashlib
import io
import struct
from datetime import date, time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from studies.dicom import (
    DicomRejected,
    RejectionReason,
    is_valid_uid,
    parse_da,
    parse_instance,
    parse_tm,
)
from studies.synthetic import SyntheticPatient, generate_study

PATIENT = SyntheticPatient(
    patient_id="SYN424242", name="SYNTHETIC^ROUNDTRIP", birth_date="19800215", sex="F"
)


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return generate_study(tmp_path / "ct", instances=1, rows=64, patient=PATIENT)[0]


def rejected(source, **limits) -> DicomRejected:
    with pytest.raises(DicomRejected) as caught:
        parse_instance(source, **limits)
    error = caught.value
    assert PATIENT.name not in error.message
    assert "ROUNDTRIP" not in error.message
    assert PATIENT.patient_id not in error.message
    return error


def rewrite(path: Path, change) -> Path:
    data_set = pydicom.dcmread(path)
    change(data_set)
    data_set.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "US"])
@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit", "rle", "deflate"])
def test_it_round_trips_every_generated_modality_and_syntax(tmp_path, modality, transfer_syntax):
    paths = generate_study(
        tmp_path,
        modality=modality,
        instances=3,
        rows=32,
        patient=PATIENT,
        study_date="20251130",
        seed=7,
        transfer_syntax=transfer_syntax,
    )
    parsed = [parse_instance(path) for path in paths]
    first = parsed[0]
    expected_syntax = {
        "explicit": pydicom.uid.ExplicitVRLittleEndian,
        "implicit": pydicom.uid.ImplicitVRLittleEndian,
        "rle": pydicom.uid.RLELossless,
        "deflate": pydicom.uid.DeflatedExplicitVRLittleEndian,
    }[transfer_syntax]
    assert first.transfer_syntax_uid == expected_syntax
    assert first.sop_class_uid in {
        pydicom.uid.CTImageStorage,
        pydicom.uid.MRImageStorage,
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.UltrasoundMultiFrameImageStorage,
    }
    assert len({item.sop_instance_uid for item in parsed}) == 3
    assert {item.study_instance_uid for item in parsed} == {first.study_instance_uid}
    assert {item.series_instance_uid for item in parsed} == {first.series_instance_uid}
    assert [item.instance_number for item in parsed] == [1, 2, 3]
    assert first.patient.patient_id == "SYN424242"
    assert first.patient.issuer_of_patient_id == "SYNTHETIC"
    assert first.patient.name == "SYNTHETIC^ROUNDTRIP"
    assert first.patient.birth_date == date(1980, 2, 15)
    assert first.patient.sex == "F"
    assert first.study.study_date == date(2025, 11, 30)
    assert first.study.study_time == time(9, 30)
    assert first.study.accession_number.startswith("ACC")
    assert first.study.referring_physician_name == "SYNTHETIC^REFERRER"
    assert first.study.study_id == "1"
    assert first.study.description == f"SYNTHETIC {modality} STUDY"
    assert first.series.modality == modality
    assert first.series.series_number == 1
    assert first.series.description == f"SYNTHETIC {modality} SERIES"
    assert first.series.body_part
    assert first.series.performed_procedure_step_start_date == date(2025, 11, 30)
    assert first.series.performed_procedure_step_start_time == time(9, 30)
    assert first.number_of_frames == (10 if modality == "US" else 1)
    assert (first.rows, first.columns) == (32, 32)
    assert first.size_bytes == paths[0].stat().st_size
    assert first.sha256 == hashlib.sha256(paths[0].read_bytes()).hexdigest()


def test_it_generates_the_same_uids_under_the_same_seed(tmp_path):
    first = generate_study(tmp_path / "a", instances=2, rows=16, seed=3)
    again = generate_study(tmp_path / "b", instances=2, rows=16, seed=3)
    other = generate_study(tmp_path / "c", instances=2, rows=16, seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert (
        parse_instance(first[0]).study_instance_uid != parse_instance(other[0]).study_instance_uid
    )


def test_it_reads_a_binary_file_object(ct_file):
    from_path = parse_instance(ct_file)
    assert parse_instance(io.BytesIO(ct_file.read_bytes())) == from_path


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("CT_small.dcm", pydicom.uid.ExplicitVRLittleEndian),
        ("MR_small.dcm", pydicom.uid.ExplicitVRLittleEndian),
        ("MR_small_implicit.dcm", pydicom.uid.ImplicitVRLittleEndian),
        ("MR_small_bigendian.dcm", pydicom.uid.ExplicitVRBigEndian),
        ("MR_small_RLE.dcm", pydicom.uid.RLELossless),
        ("MR_small_jpeg_ls_lossless.dcm", pydicom.uid.JPEGLSLossless),
        ("MR_small_jp2klossless.dcm", pydicom.uid.JPEG2000Lossless),
        ("JPEG2000.dcm", pydicom.uid.JPEG2000),
        ("JPEG-lossy.dcm", pydicom.uid.JPEGExtended12Bit),
        ("SC_rgb_jpeg_dcmtk.dcm", pydicom.uid.JPEGBaseline8Bit),
        ("SC_rgb_jpeg_gdcm.dcm", pydicom.uid.JPEGLosslessSV1),
        ("SC_rgb_rle.dcm", pydicom.uid.RLELossless),
        ("examples_ybr_color.dcm", pydicom.uid.JPEGBaseline8Bit),
        ("rtplan.dcm", pydicom.uid.ImplicitVRLittleEndian),
        ("rtdose.dcm", pydicom.uid.ImplicitVRLittleEndian),
    ],
)
def test_it_parses_pydicoms_bundled_files(name, syntax):
    parsed = parse_instance(get_testdata_file(name))
    assert parsed.transfer_syntax_uid == syntax
    assert parsed.patient.patient_id
    assert parsed.number_of_frames >= 1


def test_it_reads_the_values_of_a_known_file():
    parsed = parse_instance(get_testdata_file("CT_small.dcm"))
    assert parsed.series.modality == "CT"
    assert parsed.patient.name == "CompressedSamples^CT1"
    assert parsed.patient.patient_id == "1CT1"
    assert parsed.study.study_date == date(2004, 1, 19)
    assert (parsed.rows, parsed.columns) == (128, 128)


def test_it_refuses_a_text_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("Patient SYNTHETIC^ROUNDTRIP, ID SYN424242: see attached images.\n" * 5)
    error = rejected(path)
    assert error.reason_code == RejectionReason.NOT_DICOM
    assert error.message == "This file is not a DICOM image."
    assert error.dimse_status == 0xC000
    assert error.stow_failure_reason == 0xC000


def test_it_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    error = rejected(path)
    assert error.reason_code == RejectionReason.NOT_DICOM
    assert "empty" in error.message


def test_it_accepts_a_raw_implicit_data_set_without_preamble(ct_file, tmp_path):
    data_set = pydicom.dcmread(ct_file)
    del data_set.file_meta
    path = tmp_path / "raw.dcm"
    data_set.save_as(path, implicit_vr=True, little_endian=True)
    # pydicom keeps the preamble it read; what old CDs carry starts straight at (0008,0005).
    path.write_bytes(path.read_bytes()[132:])
    assert path.read_bytes()[:4] == b"\x08\x00\x05\x00"
    parsed = parse_instance(path)
    assert parsed.transfer_syntax_uid == pydicom.uid.ImplicitVRLittleEndian
    assert parsed.patient.patient_id == "SYN424242"


def test_it_refuses_a_file_cut_off_in_its_header(ct_file):
    data = ct_file.read_bytes()
    error = rejected(io.BytesIO(data[:400]))
    assert error.reason_code == RejectionReason.TRUNCATED
    assert "cut off" in error.message
    assert error.dimse_status == 0xC000


def test_it_refuses_a_file_cut_off_in_its_pixel_data(ct_file):
    data = ct_file.read_bytes()
    error = rejected(io.BytesIO(data[:-100]))
    assert error.reason_code == RejectionReason.TRUNCATED


def test_it_refuses_a_cut_off_encapsulated_file(tmp_path):
    path = generate_study(tmp_path, instances=1, rows=32, patient=PATIENT, transfer_syntax="rle")[0]
    error = rejected(io.BytesIO(path.read_bytes()[:-40]))
    assert error.reason_code == RejectionReason.TRUNCATED


def test_it_refuses_a_cut_off_deflated_file(tmp_path):
    path = generate_study(
        tmp_path, instances=1, rows=32, patient=PATIENT, transfer_syntax="deflate"
    )
    error = rejected(io.BytesIO(path[0].read_bytes()[:-40]))
    assert error.reason_code == RejectionReason.TRUNCATED


def test_it_accepts_garbage_pixels_of_the_right_length_without_reading_them(ct_file, monkeypatch):
    data = bytearray(ct_file.read_bytes())
    pixel_start = len(data) - 64 * 64 * 2
    data[pixel_start:] = b"\xde\xad" * (64 * 64)
    parsed = parse_instance(io.BytesIO(bytes(data)))
    assert parsed.rows == 64

    def no_pixel_decoding(*args, **kwargs):
        raise AssertionError("the ingest path must not decode pixel data")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_pixel_decoding))
    monkeypatch.setattr(pydicom.pixels.utils, "pixel_array", no_pixel_decoding)
    assert parse_instance(io.BytesIO(bytes(data))) == parsed


def test_it_refuses_an_element_longer_than_the_file(ct_file):
    data = bytearray(ct_file.read_bytes())
    # StudyDescription (0008,1030) is LO: a 2-byte length in Explicit VR Little Endian.
    tag = struct.pack("<HH", 0x0008, 0x1030) + b"LO"
    at = data.index(tag)
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    error = rejected(io.BytesIO(bytes(data)))
    assert error.reason_code == RejectionReason.BAD_LENGTH
    assert error.dimse_status == 0xC000
    assert error.stow_failure_reason == 0xC000


def nested(depth: int) -> Sequence:
    item = Dataset()
    item.CodeValue = "X"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ContentSequence = Sequence([item])
        item = outer
    return Sequence([item])


def test_it_refuses_sequences_nested_too_deep(ct_file):
    rewrite(ct_file, lambda ds: setattr(ds, "ContentSequence", nested(10)))
    error = rejected(ct_file)
    assert error.reason_code == RejectionReason.TOO_DEEP
    assert error.dimse_status == 0xC000


def test_it_takes_the_nesting_limit_as_an_argument(ct_file):
    rewrite(ct_file, lambda ds: setattr(ds, "ContentSequence", nested(3)))
    assert parse_instance(ct_file).patient.patient_id == "SYN424242"
    assert rejected(ct_file, max_sequence_depth=2).reason_code == RejectionReason.TOO_DEEP


def test_it_refuses_a_file_over_the_size_limit_before_parsing(ct_file):
    error = rejected(ct_file, max_bytes=1024)
    assert error.reason_code == RejectionReason.TOO_LARGE
    assert "1 KiB" in error.message
    assert error.dimse_status == 0xA700
    assert error.stow_failure_reason == 0xA700


def test_it_refuses_a_deflated_file_that_inflates_past_the_limit(tmp_path):
    path = generate_study(
        tmp_path, instances=1, rows=256, patient=PATIENT, transfer_syntax="deflate"
    )
    size = path[0].stat().st_size
    assert size < 100_000
    error = rejected(path[0], max_bytes=size + 1000)
    assert error.reason_code == RejectionReason.TOO_LARGE


@pytest.mark.parametrize(
    "keyword",
    ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "PatientID"],
)
def test_it_refuses_a_missing_required_attribute(ct_file, keyword):
    rewrite(ct_file, lambda ds: delattr(ds, keyword))
    error = rejected(ct_file)
    assert error.reason_code == RejectionReason.MISSING_ATTRIBUTE
    assert keyword in error.message
    assert error.dimse_status == 0xA900
    assert error.stow_failure_reason == 0xA900


def test_it_refuses_an_empty_patient_id(ct_file):
    rewrite(ct_file, lambda ds: setattr(ds, "PatientID", ""))
    assert rejected(ct_file).reason_code == RejectionReason.MISSING_ATTRIBUTE


@pytest.mark.parametrize("bad_uid", ["1.2.03.4", "1.2.abc", "1." + "2" * 70, "1..2"])
def test_it_refuses_a_malformed_uid(ct_file, bad_uid):
    rewrite(ct_file, lambda ds: setattr(ds, "SeriesInstanceUID", bad_uid))
    error = rejected(ct_file)
    assert error.reason_code == RejectionReason.BAD_UID
    assert "SeriesInstanceUID" in error.message
    assert error.dimse_status == 0xC000


def test_it_refuses_a_sop_class_that_is_not_storage(ct_file):
    # Modality Worklist Information Model - FIND: a query, not something to store.
    rewrite(ct_file, lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.31"))
    error = rejected(ct_file)
    assert error.reason_code == RejectionReason.UNSUPPORTED_SOP_CLASS
    assert error.dimse_status == 0xA900
    assert error.stow_failure_reason == 0x0122


def test_it_refuses_an_unsupported_transfer_syntax(ct_file):
    def as_mpeg2(data_set):
        # Video is refused; the pixels go so pydicom will write the file at all.
        del data_set.PixelData
        data_set.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML

    rewrite(ct_file, as_mpeg2)
    error = rejected(ct_file)
    assert error.reason_code == RejectionReason.UNSUPPORTED_TRANSFER_SYNTAX
    assert error.dimse_status == 0xC000
    assert error.stow_failure_reason == 0xC122


def test_it_refuses_a_missing_transfer_syntax():
    error = rejected(get_testdata_file("meta_missing_tsyntax.dcm"))
    assert error.reason_code == RejectionReason.MISSING_ATTRIBUTE


def test_it_validates_uids():
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.2")
    assert is_valid_uid("2.25.0.1")
    assert not is_valid_uid("")
    assert not is_valid_uid("1.2.840.01")
    assert not is_valid_uid("1.2.840.")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240229", date(2024, 2, 29)),
        ("2024.02.29", date(2024, 2, 29)),
        (" 20240101 ", date(2024, 1, 1)),
        ("20230229", None),
        ("2024", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_it_parses_dates_leniently(value, expected):
    assert parse_da(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("093015.123", time(9, 30, 15, 123000)),
        ("0930", time(9, 30)),
        ("09", time(9)),
        ("09:30:15", time(9, 30, 15)),
        ("235960", time(23, 59, 59)),
        ("2561", None),
        ("noon", None),
        ("", None),
    ],
)
def test_it_parses_times_leniently(value, expected):
    assert parse_tm(value) == expected


def test_it_keeps_a_malformed_date_as_none(ct_file):
    rewrite(ct_file, lambda ds: setattr(ds, "StudyDate", "2024-13-45"))
    assert parse_instance(ct_file).study.study_date is None


def test_a_file_meta_naming_another_sop_class_is_refused(tmp_path):
    source = generate_study(tmp_path / "in", modality="CT", instances=1, rows=16)[0]
    data_set = pydicom.dcmread(source)
    data_set.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    path = tmp_path / "other-class.dcm"
    data_set.save_as(path)
    with pytest.raises(DicomRejected) as refusal:
        parse_instance(path)
    assert refusal.value.reason_code == RejectionReason.UNSUPPORTED_SOP_CLASS


def test_a_stale_media_storage_instance_uid_is_accepted_under_the_data_sets_own(tmp_path):
    source = generate_study(tmp_path / "in", modality="CT", instances=1, rows=16)[0]
    data_set = pydicom.dcmread(source)
    data_set.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    path = tmp_path / "stale-meta.dcm"
    data_set.save_as(path)
    assert parse_instance(path).sop_instance_uid == data_set.SOPInstanceUID
