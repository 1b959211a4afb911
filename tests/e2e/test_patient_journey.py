"""A patient joins by invitation, in a real browser: the front desk checks who they are and
invites them, the e-mail crosses the real SMTP sink, the patient signs up and opens a study."""

from __future__ import annotations

import datetime
import re
import time

import pytest
from playwright.sync_api import expect

from studies.models import Patient, Study
from tests.e2e.test_reconciliation import sign_in
from tests.factories import (
    PASSWORD,
    PatientFactory,
    PatientIdentifierFactory,
    SeriesFactory,
    StudyFactory,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]

INVITED = "jane.roe@example.org"


def _text_of(message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    raise AssertionError("the invitation has no plain-text part")


def test_front_desk_invites_and_the_patient_signs_up_and_opens_a_study(
    live_server, page, shoot, front_desk, origin, elsewhere, mailbox
):
    record = PatientFactory(name="ROE^JANE", birth_date=datetime.date(1981, 2, 3))
    PatientIdentifierFactory(patient=record, facility=origin, issuer="RGH", value="RGH-7777")
    ct = StudyFactory(
        source_facility=origin,
        patient=record,
        description="CT CHEST W/O CONTRAST",
        modalities_in_study="CT",
        study_date=datetime.date(2026, 3, 14),
        number_of_series=2,
        number_of_instances=180,
        number_of_published_instances=180,
        state=Study.State.AVAILABLE,
    )
    SeriesFactory(
        study=ct,
        series_number=1,
        description="AXIAL 5MM",
        body_part="CHEST",
        number_of_instances=120,
    )
    SeriesFactory(
        study=ct,
        series_number=2,
        description="CORONAL MPR",
        body_part="CHEST",
        number_of_instances=60,
    )
    xr = StudyFactory(
        source_facility=elsewhere,
        patient=record,
        description="",
        modalities_in_study="CR",
        study_date=datetime.date(2025, 11, 2),
        number_of_instances=2,
        number_of_published_instances=1,
        state=Study.State.PUBLISHING,
    )
    SeriesFactory(study=xr, modality="CR", body_part="KNEE", number_of_instances=2)

    # The front desk finds the patient, checks who they are and sends the invitation.
    sign_in(page, live_server, front_desk)
    page.goto(f"{live_server.url}/staff/")
    page.get_by_role("link", name="Find a patient").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    page.get_by_label("Name or MRN").fill("RGH-7777")
    page.get_by_label("Date of birth").fill("1981-02-03")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("cell", name="Jane Roe (ROE^JANE)")).to_be_visible()
    shoot("front-desk-search")
    page.get_by_role("link", name="Open Jane Roe").click()
    expect(page.get_by_role("heading", name="1. Check who the patient is")).to_be_visible()
    shoot("front-desk-patient")
    page.get_by_label("How you checked").select_option("in_person")
    page.get_by_label("Document looked at").select_option("drivers_license")
    page.get_by_role("button", name="Record the identity check").click()
    expect(page.get_by_text("Identity of Jane Roe checked.")).to_be_visible()
    shoot("front-desk-identity-checked")
    page.locator("#id_invite-email").fill(INVITED)
    page.get_by_role("button", name="Send the invitation").click()
    expect(page.get_by_text(f"Invitation sent to {INVITED}.")).to_be_visible()
    shoot("front-desk-invited")

    # The e-mail, from the real SMTP sink: the facility's name, a link, nothing clinical.
    deadline = time.monotonic() + 10
    while not len(mailbox) and time.monotonic() < deadline:
        time.sleep(0.1)
    (message,) = list(mailbox)
    assert message["To"] == INVITED
    subject = " ".join(message["Subject"].split())  # long headers are folded on the wire
    assert subject.endswith(
        "You are invited to see your imaging records at Riverside General Hospital"
    )
    body = _text_of(message)
    for phi in ("ROE", "RGH-7777", "1981", "CT CHEST", "KNEE"):
        assert phi.lower() not in (body + subject).lower()
    link = re.search(r"https?://\S+/studies/join/[A-Za-z0-9_-]{43}/", body)
    assert link is not None

    # The patient, in a browser of their own, follows the link and signs up.
    page.context.clear_cookies()
    page.goto(link.group(0))
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    expect(page.locator("#id_email")).to_have_value(INVITED)
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    shoot("patient-sign-up")
    page.get_by_role("button", name="Create my account").click()

    expect(page.get_by_role("heading", name="My images")).to_be_visible()
    expect(page.get_by_text("Welcome. Your account now shows your images.")).to_be_visible()
    rows = page.locator("table.patient-study-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("CT CHEST W/O CONTRAST")
    expect(rows.nth(1)).to_contain_text("Knee")
    expect(rows.nth(1)).to_contain_text("Hilltop Clinic")
    assert "RGH-7777" not in page.url
    shoot("patient-studies")

    page.get_by_role("link", name="CT CHEST W/O CONTRAST").click()
    expect(page.get_by_role("heading", name="Series")).to_be_visible()
    expect(page.get_by_role("cell", name="AXIAL 5MM")).to_be_visible()
    expect(page.get_by_text("180 of 180 images published")).to_be_visible()
    shoot("patient-study")

    assert Patient.objects.get(pk=record.pk).account.email == INVITED
