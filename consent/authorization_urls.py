"""Signed authorizations captured at the front desk (consent/authorization_views.py)."""

from django.urls import path

from consent import authorization_views as views

urlpatterns = [
    path("", views.authorization_start, name="authorization-start"),
    path(
        "new/<int:facility_id>/<uuid:patient_id>/",
        views.authorization_new,
        name="authorization-new",
    ),
    path("<uuid:authorization_id>/", views.authorization_detail, name="authorization"),
    path("<uuid:authorization_id>/pdf/", views.authorization_pdf, name="authorization-pdf"),
    path("<uuid:authorization_id>/scan/", views.authorization_scan, name="authorization-scan"),
]
