"""The patient's own consent pages, under /consent/."""

from django.urls import URLPattern, path

from consent import views

urlpatterns: list[URLPattern] = [
    path("", views.consent_page, name="consents"),
    path("give/", views.grant_new, name="grant-new"),
    path("<uuid:grant_id>/withdraw/", views.grant_withdraw, name="grant-withdraw"),
]
