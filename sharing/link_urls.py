"""Share links, mounted at the site root (portal/urls.py) in the `links` namespace.

The recipient's pages: `/s/<token>` (the e-mailed link; the token appears in no other URL)
and `/shared/<link id>/...`. The patient's pages under `/sharing/links/` and
`/sharing/access-log/`; the front desk's under `/sharing/front-desk/`. Ids are opaque.
"""

from django.urls import include, path

from accounts.policies import PUBLIC
from sharing import link_views as views
from sharing.viewer_views import viewer_urlpatterns

app_name = "links"
urlpatterns = [
    # The recipient
    path("s/<str:token>", views.link_open, name="open"),
    path("shared/<uuid:link_id>/", views.link_home, name="home"),
    path("shared/<uuid:link_id>/code/", views.link_code, name="code"),
    # The same viewer as signed-in people's, over the link session's access.
    path(
        "shared/<uuid:link_id>/view/",
        include(
            (
                viewer_urlpatterns(
                    views.link_access_resolver,
                    access_policy=PUBLIC,
                    back_link=views.link_back_link,
                ),
                "viewer",
            )
        ),
    ),
    path(
        "shared/<uuid:link_id>/download/studies/<uuid:study_id>/",
        views.link_download,
        name="download-study",
    ),
    path(
        "shared/<uuid:link_id>/download/studies/<uuid:study_id>/series/<uuid:series_id>/",
        views.link_download,
        name="download-series",
    ),
    # The patient
    path("sharing/links/", views.link_list, name="list"),
    path("sharing/links/new/", views.link_new, name="new"),
    path("sharing/links/<uuid:link_id>/end/", views.link_end, name="end"),
    path("sharing/access-log/", views.access_log, name="access-log"),
    # The front desk, for a patient at the desk
    path(
        "sharing/front-desk/<int:facility_id>/patients/<uuid:patient_id>/links/",
        views.front_desk_links,
        name="front-desk-links",
    ),
    path(
        "sharing/front-desk/<int:facility_id>/patients/<uuid:patient_id>/links/new/",
        views.front_desk_link_new,
        name="front-desk-new",
    ),
    path(
        "sharing/front-desk/<int:facility_id>/patients/<uuid:patient_id>/links/<uuid:link_id>/end/",
        views.front_desk_link_end,
        name="front-desk-end",
    ),
]
