from __future__ import annotations

import pytest
from django.urls import reverse

from audit.codes import Action, PurposeOfUse, TargetKind
from audit.models import AuditEvent
from facilities.models import AETitle, Facility, Membership, Role
from facilities.services import api_token_create, staff_invitation_create
from tests.factories import UserFactory


@pytest.fixture
def admin_site(client, platform_admin):
    client.force_login(platform_admin)
    return client


@pytest.fixture
def issued(origin, facility_admin):
    return api_token_create(
        facility=origin,
        name="Radiology PACS",
        scopes=["search"],
        purpose_of_use=PurposeOfUse.TREATMENT,
        expires_in_days=30,
        actor=facility_admin,
    )


@pytest.fixture
def invitation(origin, facility_admin, rf):
    return staff_invitation_create(
        facility=origin,
        email="invitee@example.org",
        role=Role.CLINICIAN,
        actor=facility_admin,
        request=rf.post("/"),
    )


@pytest.mark.parametrize("model", ["facility", "membership", "staffinvitation", "apitoken"])
def test_it_lists_each_model(admin_site, model, issued, invitation):
    assert admin_site.get(reverse(f"admin:facilities_{model}_changelist")).status_code == 200


def test_it_never_shows_a_token_secret_or_hash(admin_site, issued):
    token, raw = issued
    for url in (
        reverse("admin:facilities_apitoken_changelist"),
        reverse("admin:facilities_apitoken_change", args=[token.pk]),
    ):
        page = admin_site.get(url).content.decode()
        assert token.secret_hash not in page
        assert raw.split("_", 2)[2] not in page
        assert "Radiology PACS" in page


def test_it_makes_tokens_only_on_the_facility_page(admin_site, issued):
    token, _ = issued
    assert admin_site.get(reverse("admin:facilities_apitoken_add")).status_code == 403
    response = admin_site.post(
        reverse("admin:facilities_apitoken_change", args=[token.pk]), {"name": "Renamed"}
    )
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.name == "Radiology PACS"


def test_it_hides_the_invitation_token_hash(admin_site, invitation):
    record, token = invitation
    page = admin_site.get(
        reverse("admin:facilities_staffinvitation_change", args=[record.pk])
    ).content.decode()
    assert "invitee@example.org" in page
    assert record.token_hash not in page
    assert token not in page
    assert admin_site.get(reverse("admin:facilities_staffinvitation_add")).status_code == 403


def test_it_audits_a_membership_a_platform_admin_adds(admin_site, origin, platform_admin):
    person = UserFactory(email="first.admin@example.org")

    response = admin_site.post(
        reverse("admin:facilities_membership_add"),
        {"user": person.pk, "facility": origin.pk, "role": Role.FACILITY_ADMIN},
    )

    assert response.status_code == 302
    membership = Membership.objects.get(user=person)
    event = AuditEvent.objects.get(action=Action.STAFF_JOINED)
    assert event.actor_id == str(platform_admin.pk)
    assert event.facility_id == origin.pk
    assert (event.target_kind, event.target_id) == (TargetKind.MEMBERSHIP, str(membership.pk))
    assert event.detail["by_platform_admin"] is True


def test_it_audits_a_role_change_and_a_removal(admin_site, origin, front_desk):
    membership = Membership.objects.get(user=front_desk)
    change_url = reverse("admin:facilities_membership_change", args=[membership.pk])

    admin_site.post(
        change_url, {"user": front_desk.pk, "facility": origin.pk, "role": Role.CLINICIAN}
    )
    admin_site.post(
        reverse("admin:facilities_membership_delete", args=[membership.pk]), {"post": "yes"}
    )

    changed = AuditEvent.objects.get(action=Action.STAFF_ROLE_CHANGED)
    assert changed.detail["role"] == Role.CLINICIAN
    assert changed.detail["fields"] == "role"
    assert AuditEvent.objects.filter(action=Action.STAFF_REMOVED, facility_id=origin.pk).exists()
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_it_audits_a_new_facility_with_its_ae_titles(admin_site):
    response = admin_site.post(
        reverse("admin:facilities_facility_add"),
        {
            "name": "Harbor Imaging",
            "kind": Facility.Kind.ORIGINATING,
            "npi": "",
            "default_issuer_of_patient_id": "",
            "contact_email": "",
            "retention_months": "12",
            "ae_titles-TOTAL_FORMS": "1",
            "ae_titles-INITIAL_FORMS": "0",
            "ae_titles-MIN_NUM_FORMS": "0",
            "ae_titles-MAX_NUM_FORMS": "1000",
            "ae_titles-0-ae_title": "HARBOR_PACS",
        },
    )

    assert response.status_code == 302
    facility = Facility.objects.get(name="Harbor Imaging")
    assert AETitle.objects.get(facility=facility).ae_title == "HARBOR_PACS"
    event = AuditEvent.objects.get(action=Action.FACILITY_CHANGED)
    assert event.facility_id == facility.pk
    assert event.detail["created"] is True
    assert event.detail["ae_titles_changed"] is True


def test_it_is_for_platform_admins_only(client, facility_admin):
    client.force_login(facility_admin)
    response = client.get(reverse("admin:facilities_apitoken_changelist"))
    assert response.status_code == 302
    assert "login" in response.url
