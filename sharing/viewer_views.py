"""The image viewer: a study's series, a stack viewer for one series, and its rendered frames.

Every view here is a thin layer over two steps: resolve who reads (a `ReadAccess`), then call
the shared functions below, which take that access and know nothing of how it was resolved.
`viewer_urlpatterns(resolve, access_policy=...)` builds the same five URLs for any resolver:

    name               URL (below wherever they are mounted)
    study              studies/<study>/                        the viewer, first series
    series             studies/<study>/series/<series>/        the viewer, that series
    manifest           .../series/<series>/manifest.json       the series' stack as JSON
    series-thumbnail   .../series/<series>/thumbnail           the series' middle image
    frame              .../series/<series>/instances/<instance>/frames/<n>/rendered
                       ?window=center,width or ?preset=lung, &size=512, &format=jpeg|png

`sharing/viewer_urls.py` mounts them for signed-in people (`signed_in_access`: the patient,
or staff for a facility) under /view/. A share-link session gets the same views by mounting
`viewer_urlpatterns(link_resolver, access_policy=PUBLIC)` under its own prefix and namespace,
with a resolver that takes the extra URL arguments (e.g. `link_id`) and returns the link
session's `ReadAccess`. The pages reverse their own URLs in whatever namespace served them,
with those extra arguments, so a share-link page links only to share-link URLs.

What a resolver returns: a ReadAccess (go on), None (404, audited as denied, like a study
that does not exist), or an HttpResponse to send as it is (e.g. "verify your e-mail first" or
"access was withdrawn"; the resolver audits those itself).

Nothing a person sees here carries a DICOM UID or an MRN: URLs and the manifest use public ids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    QueryDict,
)
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_GET

from accounts.policies import LOGIN, policy
from audit.codes import Action, Outcome, PurposeOfUse, TargetKind
from audit.services import audit_record
from sharing.access import AccessResolver, ReadAccess
from sharing.frames import (
    FrameRefused,
    rendered_frame,
    series_display,
    series_thumbnail,
    thumbnail_response,
)
from sharing.services import Reader
from sharing.store import StoreUnavailable
from studies.models import Instance, Series, Study
from studies.rendering import WINDOW_PRESETS, ImageFormat, RenderError, Window

View = Callable[..., HttpResponse]

# The URL arguments the viewer's own routes use; any other argument of a route (a share link's
# id) belongs to whoever mounted the routes, and is carried into every URL the pages link to.
ROUTE_IDS = frozenset({"study_id", "series_id", "instance_id", "frame"})

# Rendered frames may stay in the person's own browser a short while (scrolling back and
# forth), never in a shared cache. A withdrawal stops every new request at once.
FRAME_CACHE_CONTROL = "private, max-age=300"

# Query values of the frame endpoint. Windows are in the frame's output units (HU for CT);
# these bounds hold every real modality with room to spare and keep the arithmetic sane.
WINDOW_CENTER_LIMIT = 1_000_000
WINDOW_WIDTH_LIMIT = 2_000_000
SIZE_RANGE = (16, 2048)
DEFAULT_PRESET = "default"  # the header's own window (or VOI LUT)
IMAGE_FORMATS: dict[str, ImageFormat] = {"jpeg": "jpeg", "png": "png"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
_NUMBER = re.compile(r"[-+]?\d{1,7}(?:\.\d{1,4})?")
_WHOLE_NUMBER = re.compile(r"\d{1,5}")
# Placeholders reversed into the frame URL template, then replaced by the template's fields.
_INSTANCE_PLACEHOLDER = uuid.UUID(int=0)
_FRAME_PLACEHOLDER = 987654321


BackLink = Callable[[HttpRequest, Study, ReadAccess], tuple[str, str] | None]


# --- What the viewer shows, for any access ----------------------------------------------------


class BadQuery(ValueError):
    """A query value the frame endpoint refuses; the message says what to send instead."""


@dataclass(frozen=True)
class RenderOptions:
    window: Window | None = None
    size: int | None = None
    image_format: ImageFormat = "jpeg"


def render_options(query: QueryDict) -> RenderOptions:
    """The frame endpoint's query: `window=center,width` or `preset=<name>`, `size`, `format`.

    Each may appear once; other parameters are ignored (a cache-busting `_=` harms nobody)."""
    for name in ("window", "preset", "size", "format"):
        if len(query.getlist(name)) > 1:
            raise BadQuery(f"Give {name} only once.")
    window_text, preset = query.get("window"), query.get("preset")
    if window_text is not None and preset is not None:
        raise BadQuery("Give a window or a preset, not both.")
    window = None
    if preset is not None and preset != DEFAULT_PRESET:
        if preset not in WINDOW_PRESETS:
            names = ", ".join([DEFAULT_PRESET, *WINDOW_PRESETS])
            raise BadQuery(f"There is no preset {preset[:40]!r}; the presets are {names}.")
        window = WINDOW_PRESETS[preset]
    if window_text is not None:
        window = _window(window_text)
    size = None
    if "size" in query:
        size_text = str(query.get("size", ""))
        low, high = SIZE_RANGE
        if not _WHOLE_NUMBER.fullmatch(size_text) or not low <= int(size_text) <= high:
            raise BadQuery(f"The size is a whole number of pixels from {low} to {high}.")
        size = int(size_text)
    image_format = IMAGE_FORMATS.get(query.get("format", "jpeg"))
    if image_format is None:
        raise BadQuery("The format is jpeg or png.")
    return RenderOptions(window, size, image_format)


def _window(text: str) -> Window:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(_NUMBER.fullmatch(part) for part in parts):
        raise BadQuery("The window is two numbers, center and width: for example window=40,400.")
    center, width = float(parts[0]), float(parts[1])
    if abs(center) > WINDOW_CENTER_LIMIT or not 1 <= width <= WINDOW_WIDTH_LIMIT:
        raise BadQuery(
            f"The window's center must be between -{WINDOW_CENTER_LIMIT} and "
            f"{WINDOW_CENTER_LIMIT}, and its width between 1 and {WINDOW_WIDTH_LIMIT}."
        )
    return Window(center, width)


@dataclass(frozen=True)
class ViewerUrls:
    """Reverses the viewer's URL names in the namespace that served the request, carrying its
    extra route arguments (a share link's id) into every URL."""

    namespace: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, request: HttpRequest) -> ViewerUrls:
        match = request.resolver_match
        if match is None or not match.namespace:
            raise LookupError("the viewer's URLs must be mounted in a namespace")
        extra = {key: value for key, value in match.kwargs.items() if key not in ROUTE_IDS}
        return cls(match.namespace, extra)

    def __call__(self, name: str, **ids: Any) -> str:
        return reverse(f"{self.namespace}:{name}", kwargs={**self.extra, **ids})

    def frame_template(self, study: Study, series: Series) -> str:
        """The frame URL with `{instance}` and `{frame}` for the browser to fill in."""
        url = self(
            "frame",
            study_id=study.public_id,
            series_id=series.public_id,
            instance_id=_INSTANCE_PLACEHOLDER,
            frame=_FRAME_PLACEHOLDER,
        )
        return url.replace(str(_INSTANCE_PLACEHOLDER), "{instance}").replace(
            str(_FRAME_PLACEHOLDER), "{frame}"
        )


def stack_instances(series: Series) -> list[dict[str, Any]]:
    """The series' published images in viewing order (instance number, then arrival)."""
    rows = (
        Instance.objects.filter(series=series, state=Instance.State.PUBLISHED, rows__isnull=False)
        .order_by("instance_number", "pk")
        .values("public_id", "instance_number", "number_of_frames", "rows", "columns")
    )
    return [dict(row) for row in rows]


def series_manifest(
    access: ReadAccess, study: Study, series: Series, urls: ViewerUrls
) -> dict[str, Any]:
    """The stack of one series as the viewer script reads it: public ids, frame counts,
    instance numbers, sizes, the frame URL template and how to start displaying it.

    The display facts come from the header of the middle image (an audited read)."""
    instances = stack_instances(series)
    display = None
    if instances:
        middle = Instance.objects.select_related("study").get(
            public_id=instances[len(instances) // 2]["public_id"]
        )
        display = series_display(middle, access)
    window = display.window if display is not None else None
    _audit_viewed(access.reader, study, series, what="manifest")
    return {
        "study": _study_facts(study),
        "series": {
            "id": str(series.public_id),
            "number": series.series_number,
            "modality": series.modality,
            "description": series.description,
            "body_part": series.body_part,
        },
        "frame_url": urls.frame_template(study, series),
        "grayscale": display.grayscale if display is not None else True,
        "window": {"center": window.center, "width": window.width} if window else None,
        "window_from_header": bool(display and display.window_from_header),
        "frame_time_ms": display.frame_time_ms if display is not None else None,
        "presets": {
            name: {"center": preset.center, "width": preset.width}
            for name, preset in WINDOW_PRESETS.items()
        },
        "instances": [
            {
                "id": str(row["public_id"]),
                "number": row["instance_number"],
                "frames": row["number_of_frames"],
                "rows": row["rows"],
                "columns": row["columns"],
            }
            for row in instances
        ],
    }


def viewer_page(
    request: HttpRequest,
    access: ReadAccess,
    study: Study,
    series: Series | None,
    *,
    urls: ViewerUrls,
    template: str,
    back: tuple[str, str] | None,
) -> HttpResponse:
    """The viewer page: the study's series (with thumbnails) and the stack of `series`, or of
    the first series with images when None."""
    all_series = list(
        Series.objects.filter(study=study)
        .annotate(
            images=Count(
                "instances",
                filter=Q(instances__state=Instance.State.PUBLISHED, instances__rows__isnull=False),
            )
        )
        .order_by("series_number", "pk")
    )
    if series is None:
        series = next((one for one in all_series if one.images), None)
    entries = [
        {
            "number": one.series_number,
            "modality": one.modality,
            "description": one.description,
            "body_part": one.body_part.title(),
            "images": one.images,
            "url": urls("series", study_id=study.public_id, series_id=one.public_id),
            "thumbnail_url": urls(
                "series-thumbnail", study_id=study.public_id, series_id=one.public_id
            )
            if one.images
            else "",
            "current": series is not None and one.pk == series.pk,
        }
        for one in all_series
    ]
    context: dict[str, Any] = {
        "study": _study_facts(study),
        "study_date": study.study_date,
        "series_entries": entries,
        "series": series,
        "back": back,
        "manifest_url": "",
        "first_frame_url": "",
        "image_count": 0,
    }
    if series is not None:
        stack = stack_instances(series)
        context["image_count"] = sum(row["number_of_frames"] for row in stack)
        if stack:
            ids = {"study_id": study.public_id, "series_id": series.public_id}
            context["manifest_url"] = urls("manifest", **ids)
            # Asked for at once by the script, beside the manifest: the first picture does
            # not wait for the manifest's round trip.
            context["first_frame_url"] = urls(
                "frame", **ids, instance_id=stack[0]["public_id"], frame=1
            )
    _audit_viewed(access.reader, study, series, what="page")
    return render(request, template, context)


def frame_response(
    access: ReadAccess, instance: Instance, frame: int, query: QueryDict
) -> HttpResponse:
    """A rendered frame, or 400 for a bad query, 404 for anything refused, 422 for an image
    that cannot be shown, 503 while the store is down."""
    try:
        options = render_options(query)
    except BadQuery as exc:
        return _plain(HttpResponseBadRequest, str(exc))
    try:
        image = rendered_frame(
            instance,
            access,
            frame=frame,
            window=options.window,
            size=options.size,
            image_format=options.image_format,
        )
    except FrameRefused:
        raise Http404("No such image") from None
    except RenderError as exc:
        return _plain(HttpResponse, str(exc), status=422)
    except StoreUnavailable:
        response = _plain(HttpResponse, "The images cannot be read right now.", status=503)
        response["Retry-After"] = "10"
        return response
    response = HttpResponse(image, content_type=CONTENT_TYPES[options.image_format])
    response["Cache-Control"] = FRAME_CACHE_CONTROL
    return response


def _plain(kind: Callable[..., HttpResponse], message: str, **kwargs: Any) -> HttpResponse:
    return kind(message, content_type="text/plain; charset=utf-8", **kwargs)


def _study_facts(study: Study) -> dict[str, Any]:
    """What the viewer says of a study: no patient identity, no UID, no MRN."""
    return {
        "id": str(study.public_id),
        "date": study.study_date.isoformat() if study.study_date else None,
        "description": study.description,
        "modalities": study.modalities,
    }


def _audit_viewed(reader: Reader, study: Study, series: Series | None, *, what: str) -> None:
    audit_record(
        action=Action.STUDY_VIEWED,
        request=reader.request,
        actor_kind=reader.actor_kind,
        actor_id=reader.actor_id,
        facility_id=reader.facility_id,
        target_kind=TargetKind.SERIES if series is not None else TargetKind.STUDY,
        target_id=series.pk if series is not None else study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
        purpose=reader.purpose,
        detail={"viewer": what},
    )


# --- The views: resolve the access, then the functions above -------------------------------


def _refuse(request: HttpRequest, study: Study, action: str, reason: str) -> Http404:
    """Denied looks exactly like missing (404); the audit log tells them apart."""
    audit_record(
        action=action,
        outcome=Outcome.DENIED,
        request=request,
        target_kind=TargetKind.STUDY,
        target_id=study.pk,
        patient_id=study.patient_id,
        study_id=study.pk,
        detail={"reason": reason},
    )
    return Http404("No such study")


@dataclass(frozen=True)
class ViewerViews:
    study: View
    series: View
    manifest: View
    series_thumbnail: View
    frame: View


def viewer_views(
    resolve: AccessResolver,
    *,
    access_policy: str = LOGIN,
    template: str = "sharing/viewer.html",
    back_link: BackLink | None = None,
) -> ViewerViews:
    """The viewer's views over one way of resolving access. Each view finds the study, asks
    `resolve`, then finds the series and instance *within* that study, so an id from another
    study is refused (404, audited) exactly like an unknown one."""

    def resolved(
        request: HttpRequest, study_id: uuid.UUID, route: dict[str, Any], action: str
    ) -> tuple[Study, ReadAccess] | HttpResponse:
        study = Study.objects.select_related("source_facility").filter(public_id=study_id).first()
        if study is None:
            raise Http404("No such study")
        access = resolve(request, study, **route)
        if isinstance(access, HttpResponse):
            return access
        if access is None:
            raise _refuse(request, study, action, "denied")
        return study, access

    def series_of(request: HttpRequest, study: Study, series_id: uuid.UUID, action: str) -> Series:
        series = Series.objects.filter(public_id=series_id, study=study).first()
        if series is None:
            raise _refuse(request, study, action, "series_not_in_study")
        return series

    def page(
        request: HttpRequest, study_id: uuid.UUID, series_id: uuid.UUID | None, route: Any
    ) -> HttpResponse:
        found = resolved(request, study_id, route, Action.STUDY_VIEWED)
        if isinstance(found, HttpResponse):
            return found
        study, access = found
        series = series_of(request, study, series_id, Action.STUDY_VIEWED) if series_id else None
        back = back_link(request, study, access) if back_link is not None else None
        return viewer_page(
            request,
            access,
            study,
            series,
            urls=ViewerUrls.of(request),
            template=template,
            back=back,
        )

    def study_view(request: HttpRequest, study_id: uuid.UUID, **route: Any) -> HttpResponse:
        return page(request, study_id, None, route)

    def series_view(
        request: HttpRequest, study_id: uuid.UUID, series_id: uuid.UUID, **route: Any
    ) -> HttpResponse:
        return page(request, study_id, series_id, route)

    def manifest_view(
        request: HttpRequest, study_id: uuid.UUID, series_id: uuid.UUID, **route: Any
    ) -> HttpResponse:
        found = resolved(request, study_id, route, Action.STUDY_VIEWED)
        if isinstance(found, HttpResponse):
            return found
        study, access = found
        series = series_of(request, study, series_id, Action.STUDY_VIEWED)
        try:
            manifest = series_manifest(access, study, series, ViewerUrls.of(request))
        except FrameRefused:
            raise Http404("No such series") from None
        response = JsonResponse(manifest)
        response["Cache-Control"] = "private, no-store"
        return response

    def thumbnail_view(
        request: HttpRequest, study_id: uuid.UUID, series_id: uuid.UUID, **route: Any
    ) -> HttpResponse:
        found = resolved(request, study_id, route, Action.INSTANCE_READ)
        if isinstance(found, HttpResponse):
            return found
        study, access = found
        series = series_of(request, study, series_id, Action.INSTANCE_READ)
        try:
            image = series_thumbnail(series, access)
        except FrameRefused:
            raise Http404("No such series") from None
        return thumbnail_response(image)

    def frame_view(
        request: HttpRequest,
        study_id: uuid.UUID,
        series_id: uuid.UUID,
        instance_id: uuid.UUID,
        frame: int,
        **route: Any,
    ) -> HttpResponse:
        found = resolved(request, study_id, route, Action.INSTANCE_READ)
        if isinstance(found, HttpResponse):
            return found
        study, access = found
        instance = (
            Instance.objects.select_related("study")
            .filter(
                public_id=instance_id,
                series__public_id=series_id,
                study=study,
                state=Instance.State.PUBLISHED,
            )
            .first()
        )
        if instance is None:
            raise _refuse(request, study, Action.INSTANCE_READ, "instance_not_in_series")
        return frame_response(access, instance, frame, request.GET)

    def wrap(view: View) -> View:
        return policy(access_policy)(require_GET(view))

    return ViewerViews(
        study=wrap(study_view),
        series=wrap(series_view),
        manifest=wrap(manifest_view),
        series_thumbnail=wrap(thumbnail_view),
        frame=wrap(frame_view),
    )


def viewer_urlpatterns(
    resolve: AccessResolver,
    *,
    access_policy: str = LOGIN,
    template: str = "sharing/viewer.html",
    back_link: BackLink | None = None,
) -> list[URLPattern]:
    """The viewer's URLs over `resolve`; include them in a namespace of your own (the pages
    reverse `<namespace>:frame` and friends)."""
    views = viewer_views(
        resolve, access_policy=access_policy, template=template, back_link=back_link
    )
    series = "studies/<uuid:study_id>/series/<uuid:series_id>/"
    return [
        path("studies/<uuid:study_id>/", views.study, name="study"),
        path(series, views.series, name="series"),
        path(f"{series}manifest.json", views.manifest, name="manifest"),
        path(f"{series}thumbnail", views.series_thumbnail, name="series-thumbnail"),
        path(
            f"{series}instances/<uuid:instance_id>/frames/<int:frame>/rendered",
            views.frame,
            name="frame",
        ),
    ]


# --- Signed-in people: the patient, or staff for a facility -----------------------------------


def signed_in_back_link(
    request: HttpRequest, study: Study, access: ReadAccess
) -> tuple[str, str] | None:
    """Back to the study's page the person came from: the patient's, or the facility's."""
    if access.reader.purpose == PurposeOfUse.PATIENT_REQUEST:
        return reverse("studies:patient-study", args=[study.public_id]), "Back to the study"
    if access.reader.facility_id == study.source_facility_id:
        return reverse("studies:study", args=[study.public_id]), "Back to the study"
    return None
