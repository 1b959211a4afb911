"""The front desk uploads a disc's images in a real browser: files, a zip, a CD folder.

What only a browser shows: the script runs under the Content-Security-Policy, sends each file
with the CSRF token from the page, and the results appear as each file is answered.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from playwright.sync_api import Browser, Page, expect
from pydicom.fileset import FileSet

from studies.models import Instance, Study
from studies.synthetic import SyntheticPatient
from tests.e2e.conftest import SCREENSHOTS, Shooter
from tests.factories import PASSWORD, enable_totp

pytestmark = pytest.mark.django_db(transaction=True)

FROM_A_DISC = SyntheticPatient(patient_id="CD-0815", name="DOE^JANE", issuer="")


def sign_in(page: Page, base_url: str, user) -> None:
    """Password, then the authenticator code: how staff sign in (see test_sign_in.py)."""
    Authenticator.objects.filter(user=user).delete()
    secret = enable_totp(user)
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Code").fill(format_hotp_value(hotp_value(secret, int(time.time()) // 30)))
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_role("heading", name="Staff home")).to_be_visible()


def slow_upload(bytes_per_second: int) -> dict:
    """Chromium's network emulation; -1 turns the limit off."""
    return {
        "offline": False,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": bytes_per_second,
    }


def wait_until_finished(page: Page) -> None:
    expect(page.locator("#upload-summary")).to_contain_text("Finished.", timeout=30_000)


@pytest.fixture
def disc_files(tmp_path, synthetic_study) -> list[Path]:
    """What a front desk gets handed: loose images, a zip of more, and some clutter."""
    images = synthetic_study(instances=5, patient=FROM_A_DISC, rows=128)
    loose = images[:3]
    archive = tmp_path / "from-patient.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in images[3:]:
            zipped.write(path, f"DICOM/{path.name}")
        zipped.writestr("../../escape.dcm", images[0].read_bytes())
        zipped.writestr("VIEWER/README.1ST", "Open VIEWER.EXE to see your images.")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(images[0].read_bytes()[:-200])
    notes = tmp_path / "letter.pdf"
    notes.write_bytes(b"%PDF-1.4 referral letter")
    return [*loose, archive, broken, notes]


def test_front_desk_uploads_files_and_a_zip(live_server, page, shoot, front_desk, disc_files):
    sign_in(page, live_server.url, front_desk)
    shoot("staff-home")
    page.get_by_role("link", name="Upload images").click()
    expect(page.get_by_role("heading", name="Upload images")).to_be_visible()
    shoot("upload-page")

    # A slow line, so that the page is seen while it sends (one bar per file, and one for all).
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    network.send("Network.emulateNetworkConditions", slow_upload(48 * 1024))
    page.get_by_label("Image files or zip files").set_input_files(disc_files)
    expect(page.locator("#upload-active progress")).to_have_count(3)
    page.wait_for_timeout(1200)
    shoot("uploading")
    network.send("Network.emulateNetworkConditions", slow_upload(-1))
    wait_until_finished(page)
    expect(page.locator("#upload-progress")).to_be_hidden()

    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("5 images received in 1 study.")
    expect(summary).to_contain_text("2 files could not be stored")
    expect(summary).to_contain_text("2 other files set aside")
    expect(summary).to_contain_text("1 study needs matching to a patient")
    expect(summary.get_by_role("link", name="Match studies to patients")).to_be_visible()
    problems = page.locator("#list-problem")
    expect(problems).to_contain_text("broken.dcm")
    expect(problems).to_contain_text("cut off while copying")
    expect(problems).to_contain_text("from-patient.zip/../../escape.dcm")
    expect(problems).to_contain_text("points outside")
    studies = page.locator("#list-studies")
    expect(studies).to_contain_text("CT")
    expect(studies).to_contain_text("5 images from this upload")
    expect(studies).to_contain_text("Needs matching to a patient")
    shoot("results")

    page.get_by_text("Received", exact=False).first.click()
    page.locator("#group-other summary").click()
    received = page.locator("#list-ok")
    expect(received.locator("li")).to_have_count(5)
    expect(received).to_contain_text("from-patient.zip/DICOM/")
    other = page.locator("#list-other")
    expect(other).to_contain_text("letter.pdf")
    expect(other).to_contain_text("from-patient.zip/VIEWER/README.1ST")
    shoot("results-expanded")

    assert Instance.objects.count() == 5
    assert Study.objects.get().match == Study.Match.PENDING


def test_front_desk_uploads_a_copied_cd_folder(
    live_server, page, shoot, front_desk, tmp_path, synthetic_study
):
    file_set = FileSet()
    for path in synthetic_study(instances=3, patient=FROM_A_DISC, modality="MR", rows=64):
        file_set.add(path)
    cd = tmp_path / "PATIENT_CD"
    file_set.write(cd)
    (cd / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER.EXE\n")
    (cd / "VIEWER.EXE").write_bytes(b"MZ" + b"\0" * 4096)
    sign_in(page, live_server.url, front_desk)
    page.goto(f"{live_server.url}/studies/upload/")

    page.get_by_label("A whole folder, such as a copied CD").set_input_files(cd)
    wait_until_finished(page)

    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("3 images received in 1 study.")
    expect(summary).to_contain_text("3 other files set aside")
    expect(page.locator("#group-problem")).to_be_hidden()
    page.locator("#group-other summary").click()
    other = page.locator("#list-other")
    expect(other).to_contain_text("PATIENT_CD/DICOMDIR")
    expect(other).to_contain_text("the CD's index (DICOMDIR), not an image")
    expect(other).to_contain_text("PATIENT_CD/VIEWER.EXE")
    shoot("cd-results")
    assert Instance.objects.count() == 3


def test_the_upload_works_without_javascript(
    live_server, browser: Browser, front_desk, tmp_path, synthetic_study, request
):
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    shoot = Shooter(page, SCREENSHOTS / request.node.name)
    try:
        sign_in(page, live_server.url, front_desk)
        page.goto(f"{live_server.url}/studies/upload/")
        page.get_by_label("Image files or zip files").set_input_files(
            synthetic_study(instances=2, patient=FROM_A_DISC)
        )
        shoot("form")
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-summary")).to_contain_text("2 images received in 1 study.")
        expect(page.locator("#group-studies")).to_contain_text("Needs matching to a patient")
        shoot("results")
    finally:
        context.close()
    assert Instance.objects.count() == 2
