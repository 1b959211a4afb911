from django.urls import path

from sharing import views

app_name = "sharing"
urlpatterns = [
    path("studies/<uuid:study_id>/legal-hold/", views.legal_hold, name="legal-hold"),
    path("studies/<uuid:study_id>/thumbnail", views.study_thumbnail, name="study-thumbnail"),
]
