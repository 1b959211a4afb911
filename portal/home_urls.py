from django.urls import path

from portal import views

app_name = "portal"
urlpatterns = [
    path("", views.home, name="home"),
    path("patient/", views.patient_home, name="patient-home"),
    path("staff/", views.staff_home, name="staff-home"),
]
