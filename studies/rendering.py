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
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if window is not None:
        gray = _linear_window(values, window)
    elif "VOILUTSequence" in dataset:
        lut = apply_voi_lut(pixels, dataset, index=0).astype(np.float64)
        gray = _to_uint8(lut, float(lut.min()), float(lut.max()))
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        gray = _linear_window(values, _header_window(dataset) or _full_range(values))
    else:
        gray = _linear_window(values, _full_range(values))
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, "L")


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
