"""A facility admin sets or lifts a study's legal hold; nobody else can."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit.codes import Action
from audit.models import AuditEvent
from studies.models import Study
from tests.factories import StudyFactory


@pytest.fixture
def study(origin) -> Study:
    return StudyFactory(source_facility=origin)


def hold_url(study: Study) -> str:
    return reverse("sharing:legal-hold", kwargs={"study_id": study.public_id})


def held(study: Study) -> bool:
    study.refresh_from_db()
    return study.legal_hold


def test_a_facility_admin_sets_and_lifts_a_hold(client, facility_admin, study) -> None:
    client.force_login(facility_admin)
    response = client.post(hold_url(study), {"held": "on", "reason": "Litigation 2026-17"})
    assert response.status_code == 302
    assert response["Location"] == reverse("studies:study", kwargs={"study_id": study.public_id})
    assert held(study)
    client.post(hold_url(study), {"reason": "Case closed"})
    assert not held(study)
    events = AuditEvent.objects.filter(action=Action.LEGAL_HOLD_CHANGED).order_by("sequence")
    assert [event.detail["held"] for event in events] == [True, False]
    assert events[0].actor_id == str(facility_admin.pk)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201])
def test_a_hold_needs_a_reason(client, facility_admin, study, reason) -> None:
    client.force_login(facility_admin)
    response = client.post(hold_url(study), {"held": "on", "reason": reason}, follow=True)
    assert not held(study)
    assert b"Give the reason" in response.content
    assert not AuditEvent.objects.filter(action=Action.LEGAL_HOLD_CHANGED).exists()


def test_front_desk_cannot_set_a_hold(client, front_desk, study) -> None:
    client.force_login(front_desk)
    assert client.post(hold_url(study), {"held": "on", "reason": "x"}).status_code == 403
    assert not held(study)


def test_another_facility_s_admin_gets_404(client, stranger, study) -> None:
    client.force_login(stranger)
    assert client.post(hold_url(study), {"held": "on", "reason": "x"}).status_code == 404
    assert not held(study)


def test_a_shredded_study_cannot_be_held(client, facility_admin, origin) -> None:
    study = StudyFactory(source_facility=origin, state=Study.State.SHREDDED)
    client.force_login(facility_admin)
    assert client.post(hold_url(study), {"held": "on", "reason": "x"}).status_code == 404


def test_it_takes_posts_with_a_csrf_token_only(facility_admin, study) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(facility_admin)
    assert client.get(hold_url(study)).status_code == 405
    assert client.post(hold_url(study), {"held": "on", "reason": "x"}).status_code == 403
    assert not held(study)


def test_anonymous_visitors_are_sent_to_sign_in(client, study) -> None:
    response = client.post(hold_url(study), {"held": "on", "reason": "x"})
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
    assert not held(study)


def test_the_study_page_offers_the_hold_to_facility_admins_only(
    client, facility_admin, front_desk, study
) -> None:
    page = reverse("studies:study", kwargs={"study_id": study.public_id})
    client.force_login(front_desk)
    assert hold_url(study).encode() not in client.get(page).content
    client.force_login(facility_admin)
    content = client.get(page).content
    assert hold_url(study).encode() in content
    assert b"Set a legal hold" in content
    client.post(hold_url(study), {"held": "on", "reason": "Litigation"})
    assert b"Lift the legal hold" in client.get(page).content
