"""A patient gives a facility access to their images and withdraws it, in a real browser."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from consent.decision import FacilityActor, decide
from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from studies.models import Study
from tests.factories import StudyFactory

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(page, live_server, user) -> None:
    """A signed-in session (the sign-in journey itself is tested in test_sign_in.py)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])


def test_patient_gives_and_withdraws_access(
    live_server, page, shoot, patient, patient_record, origin, receiver, elsewhere
):
    today = timezone.localdate()
    chest = StudyFactory(
        patient=patient_record,
        source_facility=origin,
        description="CT CHEST",
        modalities_in_study="CT",
        study_date=today - timedelta(days=40),
        state=Study.State.AVAILABLE,
    )
    StudyFactory(
        patient=patient_record,
        source_facility=origin,
        description="MRI KNEE LEFT",
        modalities_in_study="MR",
        study_date=today - timedelta(days=200),
        state=Study.State.AVAILABLE,
    )
    sign_in(page, live_server, patient)

    page.goto(f"{live_server.url}/consent/")
    expect(page.get_by_role("heading", name="Who may see my images")).to_be_visible()
    expect(page.get_by_text("You have not given any other facility access")).to_be_visible()
    shoot("consent-page-empty")

    page.get_by_role("link", name="Give a facility access").click()
    expect(page.get_by_role("heading", name="Give a facility access")).to_be_visible()
    # The script shows only the part of the form the chosen scope uses.
    expect(page.get_by_text("Kinds of exam")).to_be_hidden()
    page.get_by_label("Facility").select_option(label="Lakeside Imaging Center")
    page.get_by_label("Treatment", exact=False).first.check()
    page.get_by_label("All studies, including future ones").check()
    shoot("grant-form")
    page.get_by_role("button", name="Review").click()

    expect(page.get_by_role("heading", name="Check and confirm")).to_be_visible()
    statement = page.locator(".consent-statement")
    expect(statement).to_contain_text("Lakeside Imaging Center will be able to search for and open")
    expect(statement).to_contain_text("all your studies (2 now)")
    shoot("grant-confirm")
    page.get_by_role("button", name="Give access").click()

    expect(
        page.get_by_text("Done. Lakeside Imaging Center may now see your images")
    ).to_be_visible()
    grid = page.locator(".consent-grid")
    expect(grid.get_by_role("rowheader", name="Lakeside Imaging Center")).to_be_visible()
    expect(grid.get_by_text("Allowed until")).to_be_visible()
    expect(page.get_by_text("Gave consent: Lakeside Imaging Center, for treatment")).to_be_visible()
    shoot("consent-page-granted")
    assert decide(FacilityActor(receiver.pk), chest, Purpose.TREATMENT, timezone.now())

    page.get_by_role("link", name="Withdraw…").click()
    expect(
        page.get_by_role("heading", name="Withdraw access for Lakeside Imaging Center")
    ).to_be_visible()
    expect(page.locator(".consent-statement")).to_contain_text(
        "Lakeside Imaging Center will no longer be able to search for or open these 2 studies"
    )
    page.get_by_label("Why (optional)").fill("I finished treatment there")
    shoot("withdraw-confirm")
    page.get_by_role("button", name="Withdraw access").click()

    expect(page.get_by_text("Withdrawn. Lakeside Imaging Center can no longer")).to_be_visible()
    expect(
        page.get_by_text("Withdrew consent: Lakeside Imaging Center, for treatment")
    ).to_be_visible()
    expect(page.get_by_text("I finished treatment there")).to_be_visible()
    expect(page.locator(".consent-grid")).to_have_count(0)
    shoot("consent-page-withdrawn")

    grant = ConsentGrant.objects.get()
    assert ConsentWithdrawal.objects.filter(grant=grant).exists()
    assert not decide(FacilityActor(receiver.pk), chest, Purpose.TREATMENT, timezone.now())
