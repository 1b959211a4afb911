"""Consent pages: the patient's own (patient_urls) and the front desk's authorizations
(authorization_urls). FHIR exports have their own prefix (portal/urls.py: fhir_urls)."""

from django.urls import include, path

app_name = "consent"
urlpatterns = [
    path("", include("consent.patient_urls")),
    path("authorizations/", include("consent.authorization_urls")),
]
