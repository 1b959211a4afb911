"""FHIR R4 REST endpoints (mounted at `fhir/` in namespace "fhir"): the consent export."""

from django.urls import path

from consent import fhir_views

urlpatterns = [
    path("Consent", fhir_views.consent_search, name="consent-search"),
    path("Consent/<str:consent_id>", fhir_views.consent_read, name="consent-read"),
]
