"""A share link in real browsers: the patient makes it, the clinician opens it with the code,
the patient ends it and the clinician's next page says so. Screenshots of every page are saved
under test-artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from sharing.models import ShareLink
from tests.e2e.test_reconciliation import sign_in
from tests.sharing.conftest import LINK_RECIPIENT, second_study, shared_study  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_patient_shares_clinician_opens_patient_ends(
    live_server,
    browser,
    page,
    shoot,
    patient,
    patient_record,
    shared_study,  # noqa: F811 (a fixture)
    second_study,  # noqa: F811 (a fixture)
):
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, live_server, patient)

    page.goto(f"{live_server.url}/sharing/links/")
    expect(page.get_by_role("heading", name="My share links")).to_be_visible()
    shoot("links-empty")
    page.get_by_role("link", name="Share images with a clinician").click()
    # The name field shows only for a facility that is not listed.
    expect(page.get_by_label("Its name, if not listed")).to_be_hidden()
    page.get_by_label(re.compile("CT CHEST W/O CONTRAST")).check()
    page.get_by_label("The clinician's e-mail address").fill(LINK_RECIPIENT)
    page.get_by_label("Their hospital or clinic").select_option(
        label="Not listed: I will type its name"
    )
    page.get_by_label("Its name, if not listed").fill("Dr Who's Clinic")
    page.get_by_label("Second opinion or consultation", exact=False).check()
    shoot("link-form")
    page.get_by_role("button", name="Review").click()

    expect(page.get_by_role("heading", name="Check and confirm")).to_be_visible()
    expect(page.locator(".consent-statement")).to_contain_text(LINK_RECIPIENT)
    shoot("link-confirm")
    page.get_by_role("button", name="Make the link and send it").click()

    expect(page.get_by_role("heading", name="The link is ready")).to_be_visible()
    expect(page.locator(".share-link-qr svg")).to_be_visible()
    url = page.locator("#share-link-url").inner_text().strip()
    assert url.startswith(f"{live_server.url}/s/")
    page.get_by_role("button", name="Copy the link").click()
    expect(page.get_by_text("Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == url
    shoot("link-created")
    [invitation] = mail.outbox
    assert url in invitation.body

    # The clinician, in a browser of their own.
    clinician = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    clinician.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    shoot.page = clinician  # one numbered series of screenshots, in the order things happen
    clinician.goto(url)
    expect(clinician.get_by_role("heading", name="Confirm your e-mail address")).to_be_visible()
    assert "/s/" not in clinician.url
    shoot("recipient-code-step")
    clinician.get_by_role("button", name="Send me the code").click()
    expect(
        clinician.get_by_text("We sent a 6-digit code to d***@clinic.example.org")
    ).to_be_visible()
    code = re.search(r"^\s+(\d{6})$", mail.outbox[-1].body, re.MULTILINE).group(1)
    clinician.get_by_label("The 6-digit code").fill(code)
    shoot("recipient-code-entered")
    clinician.get_by_role("button", name="Open the images").click()
    expect(clinician.get_by_role("heading", name="Images shared with you")).to_be_visible()
    expect(clinician.get_by_text("AXIAL 5MM")).to_be_visible()
    expect(clinician.get_by_text("MR KNEE LEFT")).to_have_count(0)
    shoot("recipient-home")

    # The patient sees the access, then ends the link.
    shoot.page = page
    page.goto(f"{live_server.url}/sharing/access-log/")
    expect(page.get_by_text("opened the link", exact=False).first).to_be_visible()
    shoot("access-log")
    page.goto(f"{live_server.url}/sharing/links/")
    expect(page.locator(".share-link-table")).to_contain_text("Opened")
    shoot("links-opened")
    page.get_by_role("link", name="End this link").click()
    shoot("link-end-confirm")
    page.get_by_role("button", name="End this link").click()
    expect(page.get_by_text("Ended.", exact=False)).to_be_visible()
    shoot("links-ended")
    assert ShareLink.objects.get().revoked_at is not None

    shoot.page = clinician
    clinician.reload()
    expect(
        clinician.get_by_role("heading", name="Access to these images was withdrawn")
    ).to_be_visible()
    shoot("recipient-withdrawn")
    # The browser reports the 410 of the last page itself; nothing else (no CSP refusals).
    assert [problem for problem in problems if "status of 410" not in problem] == []
    clinician.context.close()
