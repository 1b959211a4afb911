"""The share-link journey end to end, in two real browsers: the patient shares a published CT
with a clinician; the clinician gets the e-mail (through the SMTP sink), proves the address
with the code, scrolls the series, changes the window and downloads the study; then the patient
withdraws the consent behind the link and the clinician's next action is refused.

Every picture and every byte of the zip comes decrypted from the real store. Screenshots of
every page go to test-artifacts/screenshots/<test name>/.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from email.message import Message
from mailbox import Maildir

import pydicom
import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from consent.models import ConsentWithdrawal
from sharing.models import ShareLink
from studies.models import Instance, Study
from tests.e2e.test_reconciliation import sign_in
from tests.e2e.test_viewer import (
    SLICES,
    published_ct,  # noqa: F401 (a fixture)
    wait_for_new_picture,
)
from tests.sharing.conftest import store  # noqa: F401 (the fixture published_ct uses)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]

CLINICIAN = "dr.okafor@clinic.example.org"


@pytest.fixture
def tasks_in_process() -> Iterator[None]:
    """The notices the pages queue run at once, in the live server's thread (real workers are
    the publish fault tests' subject)."""
    from portal.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def assert_no_identifiers(html: str, study: Study) -> None:
    """No page of the recipient's side shows an MRN or a DICOM UID, in its text or its URLs."""
    assert study.patient_id_value not in html
    uids = [study.study_instance_uid]
    uids += study.series.values_list("series_instance_uid", flat=True)
    uids += study.instances.values_list("sop_instance_uid", flat=True)
    assert not [uid for uid in uids if uid in html]


def text_of(message: Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "".join(
        part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        for part in parts
        if part.get_content_type() == "text/plain"
    )


def latest_to(mailbox: Maildir, address: str) -> str:
    """The text of the newest message the sink delivered to `address`."""
    messages = [message for message in mailbox if message["X-RcptTo"] == address]
    assert messages, f"nothing was delivered to {address}"
    return text_of(max(messages, key=lambda message: message.get_date()))


def test_a_clinician_opens_views_downloads_and_loses_access_on_withdrawal(
    live_server,
    browser: Browser,
    page: Page,
    shoot,
    patient,
    published_ct: Study,  # noqa: F811 (the fixture)
    mailbox,
    tasks_in_process,
) -> None:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    # The patient shares the study from its page.
    sign_in(page, live_server, patient)
    page.goto(f"{live_server.url}{reverse('studies:patient-study', args=[published_ct.public_id])}")
    page.get_by_role("link", name="Share this study").click()
    expect(page.get_by_label(re.compile("SYNTHETIC CT STUDY"))).to_be_checked()
    page.get_by_label("The clinician's e-mail address").fill(CLINICIAN)
    page.get_by_label("Their hospital or clinic").select_option(
        label="Not listed: I will type its name"
    )
    page.get_by_label("Its name, if not listed").fill("Harbour Clinic")
    page.get_by_label("Second opinion or consultation", exact=False).check()
    shoot("patient-share-form")
    page.get_by_role("button", name="Review").click()
    shoot("patient-share-confirm")
    page.get_by_role("button", name="Make the link and send it").click()
    expect(page.get_by_role("heading", name="The link is ready")).to_be_visible()
    shoot("patient-link-ready")

    # The clinician's e-mail, as delivered: the link, and nothing clinical.
    invitation = latest_to(mailbox, CLINICIAN)
    url = re.search(rf"{re.escape(live_server.url)}/s/\S+", invitation).group(0)
    assert "SYNTHETIC" not in invitation
    assert "CT" not in invitation.split()

    clinician = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    clinician.set_default_timeout(10_000)
    clinician.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    shoot.page = clinician
    clinician.goto(url)
    expect(clinician.get_by_role("heading", name="Confirm your e-mail address")).to_be_visible()
    shoot("clinician-code-step")
    clinician.get_by_role("button", name="Send me the code").click()
    code = re.search(r"^\s*(\d{6})\s*$", latest_to(mailbox, CLINICIAN), re.MULTILINE).group(1)
    clinician.get_by_label("The 6-digit code").fill(code)
    clinician.get_by_role("button", name="Open the images").click()
    expect(clinician.get_by_role("heading", name="Images shared with you")).to_be_visible()
    clinician.wait_for_function(  # the series' thumbnail, decrypted and rendered for the link
        "() => [...document.querySelectorAll('img.study-thumbnail')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    shoot("clinician-shared-studies")
    assert_no_identifiers(clinician.content(), published_ct)

    # The viewer: the first slice, the wheel, a preset.
    clinician.get_by_role("link", name="View the images").click()
    position = clinician.locator("#viewer-position")
    first = wait_for_new_picture(clinician, "")
    expect(position).to_have_text(f"1 / {SLICES}")
    shoot("clinician-viewer")
    clinician.locator("#viewer-stage").hover()
    clinician.mouse.wheel(0, 100)
    expect(position).to_have_text(f"2 / {SLICES}")
    second = wait_for_new_picture(clinician, first)
    clinician.get_by_role("button", name="Lung").click()
    lung = wait_for_new_picture(clinician, second)
    assert lung.endswith("?preset=lung")
    expect(clinician.locator("#viewer-window")).to_have_text("Lung · W 1500 · L -600")
    shoot("clinician-viewer-lung")
    assert_no_identifiers(clinician.content(), published_ct)

    # The download: every file exactly as received, with a DICOMDIR.
    clinician.get_by_role("link", name=re.compile("Back to the shared studies")).click()
    with clinician.expect_download() as download:
        clinician.get_by_role("link", name="Download the study (DICOM, zip)").click()
    archive = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes()))
    assert archive.testzip() is None
    names = archive.namelist()
    assert "DICOMDIR" in names
    received = {instance.sha256 for instance in Instance.objects.filter(study=published_ct)}
    files = [name for name in names if name != "DICOMDIR"]
    assert {hashlib.sha256(archive.read(name)).hexdigest() for name in files} == received
    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    images = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    assert len(images) == SLICES
    shoot("clinician-downloaded")

    # The patient is told of the download, and withdraws the consent behind the link.
    assert "downloaded" in latest_to(mailbox, patient.email).lower()
    shoot.page = page
    page.goto(f"{live_server.url}{reverse('consent:consents')}")
    shoot("patient-consent-page")
    page.get_by_role("link", name="Withdraw…").click()
    shoot("patient-withdraw-confirm")
    page.get_by_role("button", name="Withdraw access").click()
    expect(page.get_by_text("Withdrawn.", exact=False)).to_be_visible()
    shoot("patient-withdrawn")
    link = ShareLink.objects.get()
    assert ConsentWithdrawal.objects.filter(grant=link.grant).exists()

    # The clinician's next action, whatever it is, gets nothing.
    shoot.page = clinician
    frame = clinician.request.get(lung if lung.startswith("http") else live_server.url + lung)
    assert frame.status in (404, 410)
    assert not frame.headers["content-type"].startswith("image/")
    clinician.reload()
    expect(
        clinician.get_by_role("heading", name="Access to these images was withdrawn")
    ).to_be_visible()
    shoot("clinician-refused")
    # The browser reports the refused requests itself; nothing else went wrong on any page.
    assert [p for p in problems if not re.search(r"status of (404|410)", p)] == []
    clinician.context.close()
