"""The image viewer for signed-in people (the patient, or staff for a facility), at /view/.

Share-link sessions mount the same views with their own resolver: see sharing/viewer_views.py.
"""

from accounts.policies import LOGIN
from sharing.access import signed_in_resolver
from sharing.viewer_views import signed_in_back_link, viewer_urlpatterns

app_name = "viewer"
urlpatterns = viewer_urlpatterns(
    signed_in_resolver, access_policy=LOGIN, back_link=signed_in_back_link
)
