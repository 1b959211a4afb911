"""A platform admin invites a new facility's first admin through the ordinary staff page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from facilities.models import Role, StaffInvitation
from tests.factories import PASSWORD, FacilityFactory

pytestmark = pytest.mark.django_db


def test_platform_admins_see_every_facility_on_the_staff_home(client, platform_admin, origin):
    client.force_login(platform_admin)
    response = client.get(reverse("portal:staff-home"))
    assert response.status_code == 200
    assert reverse("facilities:staff", args=[origin.pk]).encode() in response.content


def test_a_platform_admin_invites_the_first_admin_of_a_new_facility(client, platform_admin):
    facility = FacilityFactory(name="Brand New Clinic")
    client.force_login(platform_admin)
    staff_url = reverse("facilities:staff", args=[facility.pk])
    assert client.get(staff_url).status_code == 200
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    response = client.post(
        staff_url, {"email": "chief@newclinic.example.org", "role": Role.FACILITY_ADMIN}
    )
    assert response.status_code == 302
    invitation = StaffInvitation.objects.get(facility=facility)
    assert (invitation.email, invitation.role) == (
        "chief@newclinic.example.org",
        Role.FACILITY_ADMIN,
    )


def test_other_staff_still_do_not_reach_a_facility_they_do_not_administer(client, stranger, origin):
    client.force_login(stranger)
    assert client.get(reverse("facilities:staff", args=[origin.pk])).status_code == 404
