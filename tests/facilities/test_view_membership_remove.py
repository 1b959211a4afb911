from __future__ import annotations

import pytest
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from facilities.models import Membership, Role
from tests.factories import PASSWORD, MembershipFactory, UserFactory


def membership_of(user, facility):
    return Membership.objects.get(user=user, facility=facility)


@pytest.fixture
def desk_membership(origin, front_desk):
    return membership_of(front_desk, origin)


@pytest.fixture
def url(origin, desk_membership):
    return reverse("facilities:membership-remove", args=[origin.pk, desk_membership.pk])


def test_it_asks_to_confirm_in_plain_words(facility_admin_client, url, front_desk):
    front_desk.first_name, front_desk.last_name = "Dana", "Xu"
    front_desk.save()

    response = facility_admin_client.get(url)

    assert response.status_code == 200
    page = response.content.decode()
    assert (
        "Dana Xu (desk@riverside.example.org, Front desk) will no longer be able to sign in to "
        "Riverside General Hospital's staff pages" in page
    )
    assert "Remove Dana Xu from Riverside General Hospital</button>" in page
    assert Membership.objects.filter(user=front_desk).exists()


def test_it_removes(facility_admin_client, url, origin, desk_membership):
    response = facility_admin_client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("facilities:staff", args=[origin.pk])
    assert not Membership.objects.filter(pk=desk_membership.pk).exists()
    event = AuditEvent.objects.get(action=Action.STAFF_REMOVED)
    assert event.facility_id == origin.pk
    assert event.target_id == str(desk_membership.pk)


def test_the_removed_person_loses_the_staff_pages_at_once(
    client, facility_admin_client, url, front_desk, origin
):
    facility_admin_client.post(url)
    client.force_login(front_desk)
    assert client.get(reverse("portal:staff-home")).status_code == 403


def test_it_redirects_anonymous_visitors_to_sign_in(client, url, desk_membership):
    for response in (client.get(url), client.post(url)):
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))
    assert Membership.objects.filter(pk=desk_membership.pk).exists()


def test_it_hides_the_facility_from_a_stranger(client, stranger, url, reauthenticate):
    client.force_login(stranger)
    reauthenticate(client, stranger)
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404
    assert Membership.objects.count() == 2


def test_it_hides_members_of_other_facilities(facility_admin_client, origin, stranger, elsewhere):
    foreign = membership_of(stranger, elsewhere)
    url = reverse("facilities:membership-remove", args=[origin.pk, foreign.pk])

    assert facility_admin_client.get(url).status_code == 404
    assert facility_admin_client.post(url).status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_it_forbids_other_roles(client, front_desk, origin, url, reauthenticate, facility_admin):
    client.force_login(front_desk)
    reauthenticate(client, front_desk)
    admin_membership = membership_of(facility_admin, origin)
    admin_url = reverse("facilities:membership-remove", args=[origin.pk, admin_membership.pk])

    assert client.get(url).status_code == 403
    assert client.post(admin_url).status_code == 403
    assert Membership.objects.count() == 2


def test_it_refuses_other_methods(facility_admin_client, url):
    assert facility_admin_client.put(url).status_code == 405
    assert facility_admin_client.delete(url).status_code == 405


def test_it_refuses_to_remove_the_last_facility_admin(
    facility_admin_client, origin, facility_admin
):
    membership = membership_of(facility_admin, origin)
    url = reverse("facilities:membership-remove", args=[origin.pk, membership.pk])

    response = facility_admin_client.post(url)

    assert response.status_code == 400
    assert "is the last facility admin of Riverside General Hospital" in response.content.decode()
    assert Membership.objects.filter(pk=membership.pk).exists()
    assert not AuditEvent.objects.filter(action=Action.STAFF_REMOVED).exists()


def test_it_lets_an_admin_leave_and_sends_them_home(
    facility_admin_client, origin, facility_admin, second_admin
):
    membership = membership_of(facility_admin, origin)
    url = reverse("facilities:membership-remove", args=[origin.pk, membership.pk])
    assert "You will no longer be able to reach" in facility_admin_client.get(url).content.decode()

    response = facility_admin_client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("portal:home")
    assert not Membership.objects.filter(pk=membership.pk).exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_it_needs_a_recent_reauthentication(client, facility_admin, url, desk_membership, method):
    client.force_login(facility_admin)  # signed in, but has not re-entered the password

    response = getattr(client, method)(url)

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_reauthenticate"))
    assert Membership.objects.filter(pk=desk_membership.pk).exists()


def test_it_asks_a_stranger_nothing_before_saying_404(client, stranger, url):
    client.force_login(stranger)  # not re-authenticated: still 404, not a password prompt
    assert client.post(url).status_code == 404


def test_it_replays_the_removal_after_the_password(client, facility_admin, url, desk_membership):
    client.force_login(facility_admin)
    response = client.post(url)

    response = client.post(response.url, {"password": PASSWORD})

    assert response.status_code == 302
    assert not Membership.objects.filter(pk=desk_membership.pk).exists()
    assert AuditEvent.objects.filter(action=Action.STAFF_REMOVED).count() == 1


def test_it_refuses_a_wrong_password(client, facility_admin, url, desk_membership):
    client.force_login(facility_admin)
    response = client.post(url)

    response = client.post(response.url, {"password": "not it"})

    assert response.status_code == 200  # the re-authentication form, with its error
    assert Membership.objects.filter(pk=desk_membership.pk).exists()


def test_it_removes_a_clinician_with_memberships_elsewhere(facility_admin_client, origin, receiver):
    user = UserFactory(email="roaming@example.org")
    here = MembershipFactory(user=user, facility=origin, role=Role.CLINICIAN)
    there = MembershipFactory(user=user, facility=receiver, role=Role.CLINICIAN)

    facility_admin_client.post(reverse("facilities:membership-remove", args=[origin.pk, here.pk]))

    assert not Membership.objects.filter(pk=here.pk).exists()
    assert Membership.objects.filter(pk=there.pk).exists()
