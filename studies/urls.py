from django.urls import include, path

from studies import upload_views, views

app_name = "studies"
urlpatterns = [
    path("", views.study_list, name="study-list"),
    path("<uuid:study_id>/", views.study_detail, name="study"),
    path("<uuid:study_id>/progress/", views.study_progress_json, name="study-progress"),
    path("upload/", upload_views.upload, name="upload"),
    path("upload/receive/", upload_views.upload_receive, name="upload-receive"),
    path("reconciliation/", views.reconciliation, name="reconciliation"),
    path(
        "reconciliation/<uuid:study_id>/", views.reconciliation_study, name="reconciliation-study"
    ),
    path(
        "reconciliation/<uuid:study_id>/attach/",
        views.reconciliation_attach,
        name="reconciliation-attach",
    ),
    path(
        "reconciliation/<uuid:study_id>/split/",
        views.reconciliation_split,
        name="reconciliation-split",
    ),
    path(
        "reconciliation/<uuid:study_id>/hold/",
        views.reconciliation_hold,
        name="reconciliation-hold",
    ),
    path("", include("studies.patient_urls")),
]
