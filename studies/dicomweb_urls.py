from django.urls import path

from studies import dicomweb

# Named after the DICOMweb resources, not the transaction: search (QIDO-RS, GET) and store
# (STOW-RS, POST) share these URLs.
app_name = "dicomweb"
urlpatterns = [
    path("studies", dicomweb.stow, name="studies"),
    path("studies/<str:study_instance_uid>", dicomweb.stow, name="study"),
]
