"""Front desk matches a study the portal could not match, in a real browser."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import expect

from studies.models import Study
from tests.factories import PatientFactory, PatientIdentifierFactory, SeriesFactory, StudyFactory

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(page, live_server, user) -> None:
    """A signed-in session (the sign-in journey itself is tested in test_sign_in.py)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])


def test_front_desk_reviews_and_attaches_a_study(live_server, page, shoot, front_desk, origin):
    known = PatientFactory(name="DOE^JANE")
    PatientIdentifierFactory(patient=known, facility=origin, issuer="RGH", value="MRN100")
    study = StudyFactory(
        source_facility=origin,
        patient=None,
        match=Study.Match.PENDING,
        match_reason="The name differs from the patient on record.",
        candidate_patient=known,
        patient_name="DOE-SMITH^JANE",
        patient_id_value="MRN100",
        description="CT CHEST W/O CONTRAST",
    )
    SeriesFactory(study=study, description="AXIAL 5MM", number_of_instances=120)
    sign_in(page, live_server, front_desk)

    page.goto(f"{live_server.url}/studies/reconciliation/")
    expect(page.get_by_role("heading", name="Studies to match to a patient")).to_be_visible()
    expect(page.get_by_text("DOE-SMITH^JANE")).to_be_visible()
    shoot("queue")
    page.get_by_role("link", name="Review").click()
    expect(page.get_by_role("heading", name="Suggested patient")).to_be_visible()
    shoot("review")
    page.get_by_label("Name or patient ID").fill("jane")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("button", name="Attach to Jane Doe").first).to_be_visible()
    shoot("search")
    page.get_by_role("button", name="Attach to Jane Doe").first.click()
    expect(page.get_by_text("The study is now filed under Jane Doe.")).to_be_visible()
    shoot("attached")
    study.refresh_from_db()
    assert study.patient == known
