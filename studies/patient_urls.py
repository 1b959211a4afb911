"""Patients' own pages, their invitation link, and the front desk's patient pages. Included
into the `studies` namespace by studies/urls.py. Opaque ids only: no MRN or DICOM UID."""

from django.urls import path

from studies import patient_views

urlpatterns = [
    path("mine/", patient_views.patient_studies, name="mine"),
    path("mine/<uuid:study_id>/", patient_views.patient_study, name="patient-study"),
    path(
        "mine/<uuid:study_id>/progress/",
        patient_views.patient_study_progress,
        name="patient-study-progress",
    ),
    path("join/sign-up/", patient_views.patient_signup, name="patient-signup"),
    path("join/<str:token>/", patient_views.patient_invitation, name="patient-invitation"),
    path(
        "front-desk/<int:facility_id>/patients/",
        patient_views.front_desk_patients,
        name="front-desk-patients",
    ),
    path(
        "front-desk/<int:facility_id>/patients/<uuid:patient_id>/",
        patient_views.front_desk_patient,
        name="front-desk-patient",
    ),
    path(
        "front-desk/<int:facility_id>/patients/<uuid:patient_id>/verify/",
        patient_views.front_desk_verify,
        name="front-desk-verify",
    ),
    path(
        "front-desk/<int:facility_id>/patients/<uuid:patient_id>/invite/",
        patient_views.front_desk_invite,
        name="front-desk-invite",
    ),
    path(
        "front-desk/<int:facility_id>/patients/<uuid:patient_id>/link/",
        patient_views.front_desk_link,
        name="front-desk-link",
    ),
]
