"""Frames as pictures: one frame of a DICOM instance rendered to PNG or JPEG.

For viewers and thumbnails (the WADO-RS `rendered` and `thumbnail` resources, the share-link
viewer, the patient's study list). Callers pass the instance's bytes as read through the
encrypted store; nothing here touches storage or decides access.

Grayscale frames go through the modality LUT (Rescale Slope/Intercept) and then a window: the
caller's, else the header's VOI LUT or first window, else the frame's own range. MONOCHROME1
is inverted so that it looks as it should. Colour frames (RGB, YBR_*) come out as RGB, palette
colour through its lookup table. Compressed transfer syntaxes are decoded by pydicom's
plugins (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO, Literal

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

ImageFormat = Literal["png", "jpeg"]
THUMBNAIL_SIZE = 128


class RenderError(Exception):
    """The instance has no frame that can be shown (no pixels, a bad frame number, or data
    the decoders cannot read); the message says which, in plain words."""


@dataclass(frozen=True)
class Window:
    """A VOI window in the frame's output units (e.g. Hounsfield units for CT)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.center) and np.isfinite(self.width)) or self.width < 1:
            raise ValueError("a window needs a finite center and a width of at least 1")


# Presets viewers offer by name; values as radiologists use them (center, width in HU).
WINDOW_PRESETS: dict[str, Window] = {
    "soft_tissue": Window(40, 400),
    "lung": Window(-600, 1500),
    "bone": Window(300, 1500),
    "brain": Window(40, 80),
}


def render_frame(
    source: IO[bytes] | bytes,
    *,
    frame: int = 1,
    window: Window | None = None,
    size: int | None = None,
    image_format: ImageFormat = "png",
) -> bytes:
    """The frame (counting from 1, as DICOM does) as an image, at most `size` pixels on its
    longer side when given."""
    dataset = _read(source)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise RenderError(f"The instance has {frames} frame(s); there is no frame {frame}.")
    try:
        pixels = pixel_array(dataset, index=frame - 1 if frames > 1 else None)
    except Exception as exc:  # decoders raise many kinds; all mean "cannot show this"
        raise RenderError("The image data cannot be decoded.") from exc
    picture = _to_image(dataset, pixels, window)
    if size is not None:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    output = io.BytesIO()
    if image_format == "jpeg":
        picture.convert("RGB" if picture.mode != "L" else "L").save(output, "JPEG", quality=90)
    else:
        picture.save(output, "PNG", optimize=False)
    return output.getvalue()


@dataclass(frozen=True)
class DisplayFacts:
    """What a viewer needs to know of an instance before it shows a frame, from the header."""

    grayscale: bool
    # The window a viewer starts from: the header's first, else the whole range the stored
    # values can take after the modality LUT; None for colour.
    window: Window | None
    window_from_header: bool
    # Cine speed of a multi-frame instance: Frame Time, else Recommended Display Frame Rate.
    frame_time_ms: float | None


# A cine faster than this is not worth asking the server for, slower looks like slides.
FRAME_TIME_RANGE_MS = (10.0, 2000.0)


def display_facts(header: IO[bytes] | bytes) -> DisplayFacts:
    """Read the facts from the start of an instance; the pixel data need not be there.

    Raises RenderError when the bytes do not start a DICOM instance or stop before the
    image attributes (group 0028); the caller then reads more of it and asks again."""
    stream = io.BytesIO(header) if isinstance(header, bytes | bytearray) else header
    try:
        dataset = dcmread(stream, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise RenderError("This is not a readable DICOM instance.") from exc
    if "Rows" not in dataset or "PhotometricInterpretation" not in dataset:
        raise RenderError("The header ends before its image attributes.")
    photometric = str(dataset.PhotometricInterpretation).upper()
    grayscale = photometric in ("MONOCHROME1", "MONOCHROME2")
    window, from_header = None, False
    if grayscale:
        header_window = (
            _header_window(dataset)
            if "WindowCenter" in dataset and "WindowWidth" in dataset
            else None
        )
        window, from_header = (
            (header_window, True) if header_window else (_stored_range(dataset), False)
        )
    return DisplayFacts(grayscale, window, from_header, _frame_time_ms(dataset))


def _stored_range(dataset: Dataset) -> Window | None:
    """Every value BitsStored allows, through the modality LUT."""
    try:
        bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 16)
        signed = int(dataset.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError):
        return None
    bits = min(max(bits, 1), 32)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    try:
        ends = apply_modality_lut(np.array([low, high], dtype=np.int64), dataset)
    except Exception:  # a malformed modality LUT: no starting window, the viewer copes
        return None
    first, last = float(np.min(ends)), float(np.max(ends))
    try:
        return Window((first + last) / 2, max(last - first, 1.0))
    except ValueError:
        return None


def _frame_time_ms(dataset: Dataset) -> float | None:
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames <= 1:
            return None
        if dataset.get("FrameTime"):
            milliseconds = float(dataset.FrameTime)
        elif dataset.get("RecommendedDisplayFrameRate"):
            milliseconds = 1000.0 / float(dataset.RecommendedDisplayFrameRate)
        else:
            return None
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not np.isfinite(milliseconds):
        return None
    low, high = FRAME_TIME_RANGE_MS
    return min(max(milliseconds, low), high)


def _read(source: IO[bytes] | bytes) -> Dataset:
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        dataset = dcmread(stream)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise RenderError("This is not a readable DICOM instance.") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise RenderError("The instance holds no image (a report or a structured document).")
    return dataset


def _to_image(dataset: Dataset, pixels: np.ndarray, window: Window | None) -> Image.Image:
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        return Image.fromarray(_to_uint8(rgb, 0, float(rgb.max()) or 1.0), "RGB")
    if pixels.ndim == 3:  # RGB (pydicom converts YBR to RGB while decoding)
        if pixels.dtype != np.uint8:
            pixels = _to_uint8(pixels, float(pixels.min()), float(pixels.max()))
        return Image.fromarray(pixels, "RGB")
    if window is None and "VOILUTSequence" in dataset:
        lut = apply_voi_lut(pixels, dataset, index=0).astype(np.float64)
        gray = _to_uint8(lut, float(lut.min()), float(lut.max()))
    elif pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        gray = _gray_by_lookup(dataset, pixels, window)
    else:
        gray = _gray(apply_modality_lut(pixels, dataset).astype(np.float64), dataset, window)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, "L")


def _gray_by_lookup(dataset: Dataset, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    """The same arithmetic as `_gray`, done once per stored value rather than once per pixel.

    A 16-bit frame holds at most 65536 distinct values, and a 512x512 CT slice a few thousand:
    building the table of the modality LUT and the window over the frame's range of stored
    values, then indexing it with the frame, costs a fraction of the float64 arithmetic and
    clipping over every pixel (about 1 ms instead of 8 for a CT slice).
    """
    low, high = int(pixels.min()), int(pixels.max())
    stored = np.arange(low, high + 1, dtype=np.int32)
    table = _gray(apply_modality_lut(stored, dataset).astype(np.float64), dataset, window)
    if low == 0:
        return table[pixels]
    return table[np.subtract(pixels, low, dtype=np.int32)]


def _gray(values: np.ndarray, dataset: Dataset, window: Window | None) -> np.ndarray:
    """Modality-LUT output onto 0..255: the caller's window, else the header's first, else the
    values' own range."""
    if window is not None:
        return _linear_window(values, window)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        return _linear_window(values, _header_window(dataset) or _full_range(values))
    return _linear_window(values, _full_range(values))


def _header_window(dataset: Dataset) -> Window | None:
    """The header's first window (a header may offer several, e.g. lung and mediastinum)."""

    def first(value: object) -> float:
        return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]

    try:
        return Window(first(dataset.WindowCenter), first(dataset.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None


def _full_range(values: np.ndarray) -> Window:
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1.0))


def _linear_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the "LINEAR" function, onto 0..255."""
    if window.width <= 1:  # a threshold (also a frame of one value): the standard's step
        return np.where(values > window.center - 0.5, 255, 0).astype(np.uint8)
    scaled = ((values - (window.center - 0.5)) / (window.width - 1) + 0.5) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low or 1.0
    return np.clip((values - low) * (255.0 / span), 0, 255).astype(np.uint8)
