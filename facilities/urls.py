from django.urls import path

from facilities import views

app_name = "facilities"
urlpatterns = [
    path("<int:facility_id>/staff/", views.staff, name="staff"),
    path(
        "<int:facility_id>/staff/<int:membership_id>/remove/",
        views.membership_remove,
        name="membership-remove",
    ),
    path(
        "<int:facility_id>/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation-revoke",
    ),
    path("<int:facility_id>/tokens/", views.tokens, name="tokens"),
    path(
        "<int:facility_id>/tokens/<int:token_id>/revoke/",
        views.token_revoke,
        name="token-revoke",
    ),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation-accept"),
]
