"""Rendered frames: the one read path for pictures of study data.

The viewer's frames and series thumbnails, and later the DICOMweb WADO-RS `rendered` and
`thumbnail` resources, all come from here, whoever asks (a signed-in patient or staff member, a
share-link session, a facility's API token): the caller resolves a `ReadAccess`, and these
functions ask its decision again, read the instance through `read_instance` (which decrypts it
and audits the read) and render it. Nothing here knows a URL.

No plaintext is kept between requests (DESIGN.md rule 1, and rule 2: the decision is asked at
every request): each frame is decrypted, rendered and dropped. What makes the first frame fast
is therefore the work per request (bench/render.py measures it):

- the instance is decrypted segment by segment into one buffer and parsed from it in place
  (`render_frame` wraps the bytes in a BytesIO, which shares them rather than copying);
- the grayscale pipeline (modality LUT, window) is a lookup table over the frame's stored
  values (studies/rendering.py), not float arithmetic over every pixel;
- frames go out as JPEG by default: a 512x512 slice encodes in about 1 ms, PNG takes 10 to
  60 ms depending on the noise in the picture.

Refusals raise `FrameRefused`, already audited; callers answer them as "not found" (404), so
nobody learns whether a study, an instance or a frame exists that they may not read.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from django.http import HttpResponse
from PIL import Image

from audit.codes import Outcome
from sharing.access import ReadAccess
from sharing.services import ObjectUnavailable, Reader, audit_instance_read, read_instance
from studies.models import Instance, Series
from studies.rendering import (
    THUMBNAIL_SIZE,
    DisplayFacts,
    ImageFormat,
    RenderError,
    Window,
    display_facts,
    render_frame,
)

logger = logging.getLogger(__name__)

# Long multi-frame cines are not worth decrypting whole for 128 pixels.
THUMBNAIL_SOURCE_MAX_BYTES = 64 * 1024**2
# The header of an instance is in its first segment (1 MiB) but for freak private data; reading
# stops after this much plaintext without the image attributes.
HEADER_READ_MAX_BYTES = 4 * 1024**2


class FrameRefused(Exception):
    """Nothing is served: access denied or withdrawn, or no such frame. Already audited; the
    `reason` is the audit row's. Callers answer 404."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SeriesDisplay:
    """How a viewer starts showing a series, from the header of one of its instances."""

    grayscale: bool
    window: Window | None
    window_from_header: bool
    frame_time_ms: float | None

    @classmethod
    def of(cls, facts: DisplayFacts) -> SeriesDisplay:
        return cls(facts.grayscale, facts.window, facts.window_from_header, facts.frame_time_ms)


def rendered_frame(
    instance: Instance,
    access: ReadAccess,
    *,
    frame: int = 1,
    window: Window | None = None,
    size: int | None = None,
    image_format: ImageFormat = "jpeg",
) -> bytes:
    """Frame `frame` (from 1) of a published instance as JPEG or PNG, for whoever `access`
    allows now; at most `size` pixels on its longer side when given.

    Raises FrameRefused (audited) when the decision denies the study, the frame does not
    exist, the instance is not in the store, or access was withdrawn while it was read;
    RenderError when the instance holds nothing that can be shown.
    """
    study = instance.study
    if not access.allows(study):
        raise _refused(instance, access.reader, "denied")
    if not 1 <= frame <= instance.number_of_frames:
        raise _refused(instance, access.reader, "no_such_frame", frame=frame)
    plaintext = _plaintext(instance, access)
    return render_frame(plaintext, frame=frame, window=window, size=size, image_format=image_format)


def series_display(instance: Instance, access: ReadAccess) -> SeriesDisplay | None:
    """The display facts of an instance (its header window, colour or not, cine speed), from
    the first segment of its plaintext only; None when its header cannot be read.

    An audited read like any other. Raises FrameRefused as `rendered_frame` does."""
    if not access.allows(instance.study):
        raise _refused(instance, access.reader, "denied")
    chunks = _chunks(instance, access)
    header = bytearray()
    try:
        for chunk in chunks:
            header += chunk
            try:
                return SeriesDisplay.of(display_facts(bytes(header)))
            except RenderError:
                if len(header) >= HEADER_READ_MAX_BYTES:
                    return None
        # The whole instance was read: either the decision changed under the read, or the
        # header is not one that can be shown.
        if len(header) < instance.size_bytes:
            raise _refused(instance, access.reader, "withdrawn")
        return None
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # let go of the store's stream now, not when the generator is collected


def series_thumbnail_instance(series: Series) -> Instance | None:
    """The middle image of a series, once published; small enough to decrypt for a thumbnail."""
    images = (
        Instance.objects.filter(
            series=series,
            state=Instance.State.PUBLISHED,
            rows__isnull=False,
            size_bytes__lte=THUMBNAIL_SOURCE_MAX_BYTES,
        )
        .select_related("study")
        .order_by("instance_number", "pk")
    )
    count = images.count()
    return images[count // 2] if count else None


def series_thumbnail(series: Series, access: ReadAccess) -> bytes | None:
    """A small JPEG of the series' middle image, or None when nothing is published or the
    image cannot be shown. Raises FrameRefused as `rendered_frame` does."""
    instance = series_thumbnail_instance(series)
    if instance is None:
        return None
    try:
        return rendered_frame(instance, access, size=THUMBNAIL_SIZE)
    except RenderError:
        return None


def thumbnail_response(image: bytes | None) -> HttpResponse:
    """A thumbnail as a response; a plain dark square when there is no picture (nothing
    published yet, or only reports), so a list of thumbnails never shows a broken image."""
    response = (
        HttpResponse(image, content_type="image/jpeg")
        if image is not None
        else HttpResponse(_no_picture_png(), content_type="image/png")
    )
    # Only this browser may keep it, briefly: it is a picture of the patient.
    response["Cache-Control"] = "private, max-age=300"
    return response


@functools.cache
def _no_picture_png() -> bytes:
    output = io.BytesIO()
    Image.new("L", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), 17).save(output, "PNG")
    return output.getvalue()


def _chunks(instance: Instance, access: ReadAccess) -> Iterator[bytes]:
    try:
        return read_instance(
            instance, access.reader, still_allowed=access.still_allowed(instance.study)
        )
    except ObjectUnavailable:
        raise _refused(instance, access.reader, "not_published") from None


def _plaintext(instance: Instance, access: ReadAccess) -> bytes:
    """The whole instance in one buffer. Joining the segments is the only copy: the parser and
    the decoder work on this buffer in place. A read cut short means the decision changed
    between two segments (a withdrawal committed meanwhile): nothing of it is rendered."""
    plaintext = b"".join(_chunks(instance, access))
    if len(plaintext) != instance.size_bytes:
        raise _refused(instance, access.reader, "withdrawn")
    return plaintext


def _refused(instance: Instance, reader: Reader, reason: str, **detail: int) -> FrameRefused:
    audit_instance_read(
        instance, reader, outcome=Outcome.DENIED, detail={"reason": reason, **detail}
    )
    return FrameRefused(reason)
