"""Front desk captures a signed authorization in a real browser: drawn, and scanned on paper."""

from __future__ import annotations

import re
import zlib

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import expect

from consent.models import ConsentGrant, SignedAuthorization
from sharing.documents import DOCUMENT_KIND
from sharing.store import get_object_store

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]"
             b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")  # fmt: skip


@pytest.fixture(autouse=True)
def _documents(stack_env):
    stack_env["S3_BUCKET"]
    store = get_object_store()
    for name in list(store.names(DOCUMENT_KIND)):
        store.delete(name)


def sign_in(page, live_server, user) -> None:
    """A signed-in session (the sign-in journey itself is tested in test_sign_in.py)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])


def pdf_text(pdf: bytes) -> str:
    chunks = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            chunks.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return b"\n".join(chunks).decode("latin-1")


def open_form(page, live_server, shoot) -> None:
    page.goto(f"{live_server.url}/consent/authorizations/")
    expect(page.get_by_role("heading", name="Capture a signed authorization")).to_be_visible()
    page.get_by_label("Name or patient ID").fill("doe")
    page.get_by_role("button", name="Search").click()
    shoot("search")
    page.get_by_role("link", name="Authorization for Pat Doe").click()
    expect(
        page.get_by_role("heading", name="Authorization to share imaging studies")
    ).to_be_visible()
    page.get_by_label("Lakeside Imaging Center").check()
    page.get_by_label("Treatment", exact=True).check()


def test_front_desk_captures_a_drawn_signature(live_server, page, shoot, front_desk, origin,
                                               receiver, patient_record):  # fmt: skip
    sign_in(page, live_server, front_desk)
    open_form(page, live_server, shoot)
    pad = page.locator("#signature-pad")
    expect(pad).to_be_visible()
    pad.scroll_into_view_if_needed()  # the mouse moves in viewport coordinates
    box = pad.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 30, box["y"] + box["height"] * 0.7)
    page.mouse.down()
    for step in range(1, 25):
        x = box["x"] + 30 + step * (box["width"] - 60) / 24
        y = box["y"] + box["height"] * (0.3 if step % 2 else 0.7)
        page.mouse.move(x, y, steps=4)
    page.mouse.up()
    page.get_by_label("I checked the patient's identity").check()
    shoot("signed")
    page.get_by_role("button", name="Record the authorization").click()
    expect(page.get_by_text("The authorization of Pat Doe is recorded")).to_be_visible()
    link = page.get_by_role("link", name="Download the PDF to print")
    expect(link).to_be_visible()
    shoot("confirmation")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    pdf = download.path().read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert "Pat Doe" in pdf_text(pdf)
    authorization = SignedAuthorization.objects.get()
    assert download.suggested_filename == f"authorization-{authorization.public_id}.pdf"
    assert ConsentGrant.objects.filter(authorization=authorization).count() == 1


def test_front_desk_uploads_a_scanned_paper_form(live_server, page, shoot, front_desk, origin,
                                                 receiver, patient_record, tmp_path):  # fmt: skip
    scan = tmp_path / "signed-form.pdf"
    scan.write_bytes(SMALL_PDF)
    sign_in(page, live_server, front_desk)
    open_form(page, live_server, shoot)
    page.get_by_label("Upload the signed paper form").check()
    expect(page.locator("#signature-pad")).to_be_hidden()
    page.get_by_label("Signed paper form (PDF, JPEG or PNG)").set_input_files(str(scan))
    page.get_by_label("I checked the patient's identity").check()
    shoot("paper")
    page.get_by_role("button", name="Record the authorization").click()
    expect(page.get_by_text("The authorization of Pat Doe is recorded")).to_be_visible()
    expect(page.get_by_role("link", name="Download the scanned form")).to_be_visible()
    shoot("confirmation")
    authorization = SignedAuthorization.objects.get()
    assert authorization.method == SignedAuthorization.Method.PAPER


def test_a_blank_signature_is_refused(live_server, page, shoot, front_desk, origin, receiver,
                                      patient_record):  # fmt: skip
    sign_in(page, live_server, front_desk)
    open_form(page, live_server, shoot)
    page.get_by_label("I checked the patient's identity").check()
    page.get_by_role("button", name="Record the authorization").click()
    expect(page.get_by_text("The patient has not signed yet")).to_be_visible()
    shoot("refused")
    assert not SignedAuthorization.objects.exists()
