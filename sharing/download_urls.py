"""Downloads for signed-in people; share-link downloads reuse `make_download_view`."""

from django.urls import path

from sharing import download_views

app_name = "downloads"
urlpatterns = [
    path("studies/<uuid:study_id>/", download_views.study_download, name="study"),
    path(
        "studies/<uuid:study_id>/series/<uuid:series_id>/",
        download_views.series_download,
        name="series",
    ),
]
