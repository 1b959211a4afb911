"""Synthetic DICOM studies with real pixel data, for the demo, the tests and the benchmarks.

Every name is synthetic ("SYNTHETIC^PATIENT"); nothing here comes from a real person. The
same seed gives the same UIDs and the same pixels, so tests and benchmarks are repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

MODALITIES = ("CT", "MR", "CR", "US")

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": pydicom.uid.ExplicitVRLittleEndian,
    "implicit": pydicom.uid.ImplicitVRLittleEndian,
    "rle": pydicom.uid.RLELossless,
    "deflate": pydicom.uid.DeflatedExplicitVRLittleEndian,
}

_SOP_CLASSES: dict[str, UID] = {
    "CT": pydicom.uid.CTImageStorage,
    "MR": pydicom.uid.MRImageStorage,
    "CR": pydicom.uid.ComputedRadiographyImageStorage,
    "US": pydicom.uid.UltrasoundMultiFrameImageStorage,
}

_BODY_PARTS = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST", "US": "ABDOMEN"}
_US_FRAMES = 10


@dataclass(frozen=True)
class SyntheticPatient:
    patient_id: str = "SYN000001"
    name: str = "SYNTHETIC^PATIENT"
    birth_date: str = "19700101"
    sex: str = "O"
    issuer: str = "SYNTHETIC"


def generate_study(
    out_dir: Path,
    *,
    modality: str = "CT",
    instances: int = 10,
    rows: int = 512,
    patient: SyntheticPatient | None = None,
    study_date: str = "20260102",
    seed: int = 0,
    transfer_syntax: str = "explicit",
) -> list[Path]:
    """Write one study of `instances` files of `modality` into `out_dir`; return the paths."""
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}")
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    patient = patient or SyntheticPatient()
    chooser = random.Random(seed)  # noqa: S311 - test data, not secrets
    entropy = [str(seed), modality, patient.patient_id, study_date]
    study_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"])
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"])
    accession = f"ACC{chooser.randrange(10**6):06d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(instances):
        data_set = _base_data_set(modality, patient, study_date, study_uid, series_uid, accession)
        data_set.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[*entropy, str(index)])
        data_set.InstanceNumber = index + 1
        _add_pixels(data_set, modality, rows, index, instances, seed)
        data_set.file_meta = _file_meta(data_set, syntax)
        if syntax == pydicom.uid.RLELossless:
            data_set.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
        path = out_dir / f"{modality}_{index + 1:05d}.dcm"
        data_set.save_as(path, implicit_vr=syntax.is_implicit_VR, enforce_file_format=True)
        paths.append(path)
    return paths


def _file_meta(data_set: Dataset, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = data_set.SOPClassUID
    meta.MediaStorageSOPInstanceUID = data_set.SOPInstanceUID
    meta.TransferSyntaxUID = (
        pydicom.uid.ExplicitVRLittleEndian if syntax == pydicom.uid.RLELossless else syntax
    )
    return meta


def _base_data_set(
    modality: str,
    patient: SyntheticPatient,
    study_date: str,
    study_uid: str,
    series_uid: str,
    accession: str,
) -> Dataset:
    data_set = Dataset()
    data_set.SpecificCharacterSet = "ISO_IR 100"
    data_set.SOPClassUID = _SOP_CLASSES[modality]
    data_set.StudyDate = study_date
    data_set.SeriesDate = study_date
    data_set.StudyTime = "093000"
    data_set.SeriesTime = "093100"
    data_set.AccessionNumber = accession
    data_set.Modality = modality
    data_set.Manufacturer = "SYNTHETIC"
    data_set.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    data_set.StudyDescription = f"SYNTHETIC {modality} STUDY"
    data_set.SeriesDescription = f"SYNTHETIC {modality} SERIES"
    data_set.PatientName = patient.name
    data_set.PatientID = patient.patient_id
    data_set.IssuerOfPatientID = patient.issuer
    data_set.PatientBirthDate = patient.birth_date
    data_set.PatientSex = patient.sex
    data_set.BodyPartExamined = _BODY_PARTS[modality]
    data_set.StudyInstanceUID = study_uid
    data_set.SeriesInstanceUID = series_uid
    data_set.StudyID = "1"
    data_set.SeriesNumber = 1
    data_set.PerformedProcedureStepStartDate = study_date
    data_set.PerformedProcedureStepStartTime = "093000"
    data_set.FrameOfReferenceUID = pydicom.uid.generate_uid(entropy_srcs=[study_uid, "frame"])
    return data_set


def _phantom(rows: int, slice_fraction: float) -> np.ndarray:
    """An axial body: water-like ellipse, lungs, spine; values in Hounsfield units."""
    axis = np.linspace(-1.0, 1.0, rows)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    image = np.full((rows, rows), -1000.0)
    image[(x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1] = 40.0
    lung_scale = 0.25 + 0.1 * np.sin(np.pi * slice_fraction)
    for centre in (-0.38, 0.38):
        image[((x - centre) / lung_scale) ** 2 + (y / 0.4) ** 2 <= 1] = -850.0
    image[(x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 <= 1] = 700.0
    return image


def _add_pixels(
    data_set: Dataset, modality: str, rows: int, index: int, instances: int, seed: int
) -> None:
    noise = np.random.default_rng(seed * 100003 + index)
    slice_fraction = index / max(instances - 1, 1)
    data_set.Rows = rows
    data_set.Columns = rows
    data_set.PixelSpacing = [round(350 / rows, 4)] * 2
    if modality == "US":
        _add_ultrasound_frames(data_set, rows, noise)
        return
    hounsfield = _phantom(rows, slice_fraction) + noise.normal(0, 10, (rows, rows))
    data_set.SamplesPerPixel = 1
    data_set.PhotometricInterpretation = "MONOCHROME2"
    data_set.BitsAllocated = 16
    data_set.BitsStored = 16 if modality == "CT" else 12
    data_set.HighBit = data_set.BitsStored - 1
    data_set.PixelRepresentation = 1 if modality == "CT" else 0
    if modality == "CT":
        pixels = np.clip(hounsfield + 1024, -32768, 32767).astype(np.int16)
        data_set.RescaleIntercept = -1024
        data_set.RescaleSlope = 1
        data_set.RescaleType = "HU"
        data_set.WindowCenter = 40
        data_set.WindowWidth = 400
        data_set.KVP = 120
    else:
        pixels = np.clip((hounsfield + 1000) * 1.5, 0, 4095).astype(np.uint16)
        data_set.WindowCenter = 1500
        data_set.WindowWidth = 3000
    if modality in ("CT", "MR"):
        slice_thickness = 1.25
        location = -150.0 + index * slice_thickness
        data_set.SliceThickness = slice_thickness
        data_set.SliceLocation = location
        data_set.ImagePositionPatient = [-175.0, -175.0, location]
        data_set.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    data_set.PixelData = pixels.tobytes()


def _add_ultrasound_frames(data_set: Dataset, rows: int, noise: np.random.Generator) -> None:
    axis = np.linspace(-1.0, 1.0, rows)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    frames = np.zeros((_US_FRAMES, rows, rows, 3), dtype=np.uint8)
    for frame in range(_US_FRAMES):
        speckle = noise.rayleigh(40, (rows, rows))
        radius = 0.3 + 0.05 * np.sin(2 * np.pi * frame / _US_FRAMES)
        speckle[(x**2 + (y - 0.1) ** 2) <= radius**2] *= 0.2
        grey = np.clip(speckle, 0, 255).astype(np.uint8)
        frames[frame] = np.stack([grey] * 3, axis=-1)
    data_set.SamplesPerPixel = 3
    data_set.PhotometricInterpretation = "RGB"
    data_set.PlanarConfiguration = 0
    data_set.BitsAllocated = 8
    data_set.BitsStored = 8
    data_set.HighBit = 7
    data_set.PixelRepresentation = 0
    data_set.NumberOfFrames = _US_FRAMES
    data_set.FrameTime = 33.3
    data_set.PixelData = frames.tobytes()


def parse_yyyymmdd(value: str) -> str:
    """Validate a YYYYMMDD argument and return it unchanged."""
    if len(value) != 8 or not value.isdigit():
        raise ValueError(value)
    date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    return value
