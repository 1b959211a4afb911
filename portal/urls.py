from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from portal import views

# The admin signs people in through allauth, so platform admins get the same rate limits,
# MFA and audit as everyone else instead of Django's bare admin form.
admin.site.login = secure_admin_login(admin.site.login)  # type: ignore[method-assign]
admin.site.site_header = "Imaging Consent Portal: platform admin"
admin.site.site_title = "Platform admin"

urlpatterns = [
    path("", include("portal.home_urls")),
    path("healthz", views.health, name="health"),
    path("accounts/", include("allauth.urls")),
    path("facilities/", include("facilities.urls")),
    path("studies/", include("studies.urls")),
    path("dicomweb/", include("studies.dicomweb_urls")),
    path("sharing/", include("sharing.urls")),
    # Share links: the recipient's pages (/s/<token>, /shared/...) and the patient's.
    path("", include("sharing.link_urls")),
    path("view/", include("sharing.viewer_urls")),
    path("download/", include("sharing.download_urls")),
    path("consent/", include("consent.urls")),
    path("fhir/", include(("consent.fhir_urls", "fhir"))),
    path("admin/", admin.site.urls),
]

handler400 = "portal.views.bad_request"
handler403 = "portal.views.permission_denied"
handler404 = "portal.views.page_not_found"
handler500 = "portal.views.server_error"
