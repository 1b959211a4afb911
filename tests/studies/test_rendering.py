"""Rendering frames: the grayscale pipeline's arithmetic, every photometric interpretation and
compressed transfer syntax among pydicom's bundled files, and refusals of what cannot be shown."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from studies.rendering import WINDOW_PRESETS, RenderError, Window, render_frame


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def ct_bytes(stored: list[int], *, photometric: str = "MONOCHROME2", **header) -> bytes:
    """A 2x2 CT frame of stored values, Rescale Intercept -1024: HU = stored - 1024."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.array(stored, dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


HU = [-1000, 0, 40, 1000]
STORED = [value + 1024 for value in HU]


def test_it_applies_the_rescale_and_a_linear_window() -> None:
    gray = np.asarray(picture(render_frame(ct_bytes(STORED), window=WINDOW_PRESETS["soft_tissue"])))
    # PS3.3 C.11.2.1.2.1 for center 40, width 400: -1000 HU black, 1000 HU white.
    assert gray.ravel().tolist() == [0, 102, 127, 255]


def test_it_uses_the_header_s_first_window_when_none_is_asked_for() -> None:
    data = ct_bytes(STORED, WindowCenter=[-600, 40], WindowWidth=[1500, 400])
    gray = np.asarray(picture(render_frame(data))).ravel().tolist()
    assert (
        gray == np.asarray(picture(render_frame(data, window=Window(-600, 1500)))).ravel().tolist()
    )
    assert gray[0] > 0
    assert gray[3] == 255


def test_without_a_window_it_spreads_the_frame_s_own_range() -> None:
    gray = np.asarray(picture(render_frame(ct_bytes(STORED)))).ravel().tolist()
    assert (gray[0], gray[3]) == (0, 255)
    assert gray == sorted(gray)


def test_monochrome1_is_inverted() -> None:
    normal = np.asarray(picture(render_frame(ct_bytes(STORED), window=Window(0, 2000))))
    inverted = np.asarray(picture(render_frame(ct_bytes(STORED, photometric="MONOCHROME1"),
                                               window=Window(0, 2000))))  # fmt: skip
    assert (inverted.astype(int) == 255 - normal.astype(int)).all()


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("CT_small.dcm", "L"),
        ("MR_small_RLE.dcm", "L"),
        ("MR_small_jpeg_ls_lossless.dcm", "L"),
        ("MR_small_jp2klossless.dcm", "L"),
        ("JPGExtended.dcm", "L"),
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
        ("SC_rgb_rle.dcm", "RGB"),
        ("SC_ybr_full_422_uncompressed.dcm", "RGB"),
        ("examples_palette.dcm", "RGB"),
        ("examples_ybr_color.dcm", "RGB"),
        ("liver_1frame.dcm", "L"),
    ],
)
def test_it_renders_every_kind_of_image_pydicom_ships(name: str, mode: str) -> None:
    data = open(get_testdata_file(name), "rb").read()  # noqa: SIM115
    rows, columns = (lambda ds: (ds.Rows, ds.Columns))(
        dcmread(io.BytesIO(data), stop_before_pixels=True)
    )
    image = picture(render_frame(data))
    assert image.mode == mode
    assert image.size == (columns, rows)
    assert np.asarray(image).std() > 0, "a blank picture"


def test_it_makes_thumbnails_and_jpegs() -> None:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115
    thumbnail = picture(render_frame(data, size=32, image_format="jpeg"))
    assert thumbnail.format == "JPEG"
    assert max(thumbnail.size) == 32


def test_it_renders_any_frame_of_a_multi_frame_instance() -> None:
    data = open(get_testdata_file("SC_rgb_rle_2frame.dcm"), "rb").read()  # noqa: SIM115
    first, second = (np.asarray(picture(render_frame(data, frame=n))) for n in (1, 2))
    assert first.shape == second.shape
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("frame", [0, 3, -1])
def test_it_refuses_a_frame_that_does_not_exist(frame: int) -> None:
    data = open(get_testdata_file("SC_rgb_rle_2frame.dcm"), "rb").read()  # noqa: SIM115
    with pytest.raises(RenderError, match="no frame"):
        render_frame(data, frame=frame)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not DICOM at all" * 20, "not a readable DICOM"),
        (b"", "not a readable DICOM"),
        ("test-SR.dcm", "holds no image"),
        ("rtplan.dcm", "holds no image"),
        ("MR_truncated.dcm", "cannot be decoded"),
    ],
)
def test_it_refuses_what_cannot_be_shown(data, message: str) -> None:
    if isinstance(data, str):
        data = open(get_testdata_file(data), "rb").read()  # noqa: SIM115
    with pytest.raises(RenderError, match=message):
        render_frame(data)


@pytest.mark.parametrize(("center", "width"), [(40, 0), (float("nan"), 400), (40, float("inf"))])
def test_a_window_must_make_sense(center: float, width: float) -> None:
    with pytest.raises(ValueError, match="window"):
        Window(center, width)
