from django.contrib import admin
from django.urls import include, path

from portal import views

urlpatterns = [
    path("", include("portal.home_urls")),
    path("healthz", views.health, name="health"),
    path("accounts/", include("allauth.urls")),
    path("facilities/", include("facilities.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "portal.views.bad_request"
handler403 = "portal.views.permission_denied"
handler404 = "portal.views.page_not_found"
handler500 = "portal.views.server_error"
