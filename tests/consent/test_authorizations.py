"""Front-desk signed authorizations: the form, the service, the PDF and its downloads."""

from __future__ import annotations

import base64
import io
import re
import zlib
from datetime import date, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image, ImageDraw

from audit.codes import Action, Outcome
from audit.models import AuditEvent
from consent.models import ConsentGrant, Purpose, SignedAuthorization
from sharing.documents import DOCUMENT_KIND
from sharing.store import get_object_store
from studies.models import Study
from tests.factories import StudyFactory


@pytest.fixture(autouse=True)
def _documents(stack_env):
    """The real S3 store, without documents earlier tests left."""
    stack_env["S3_BUCKET"]
    store = get_object_store()
    for name in list(store.names(DOCUMENT_KIND)):
        store.delete(name)
    return store


def stored_documents() -> list[str]:
    return list(get_object_store().names(DOCUMENT_KIND))


def signature_png(*, blank: bool = False, size=(600, 200)) -> bytes:
    image = Image.new("RGBA", size, (255, 255, 255, 0))
    if not blank:
        draw = ImageDraw.Draw(image)
        draw.line([(40, 150), (120, 40), (200, 160), (300, 50), (420, 150), (540, 60)],
                  fill=(16, 32, 74, 255), width=4)  # fmt: skip
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def tiny_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]"
            b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")  # fmt: skip


def pdf_text(pdf: bytes) -> str:
    """The PDF's text as its content streams hold it (fpdf2 writes Flate-compressed streams
    of literal strings), enough to find a name in it."""
    chunks = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            chunks.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return b"\n".join(chunks).decode("latin-1")


@pytest.fixture
def ct(patient_record, origin) -> Study:
    return StudyFactory(patient=patient_record, source_facility=origin, modalities_in_study="CT",
                        study_date=date(2026, 6, 1), state=Study.State.AVAILABLE,
                        available_until=date(2027, 6, 1))  # fmt: skip


def new_url(facility, patient) -> str:
    return reverse("consent:authorization-new", args=[facility.pk, patient.public_id])


def form_data(receiver, **overrides):
    data = {
        "grantee_facilities": [receiver.pk],
        "purposes": [Purpose.TREATMENT, Purpose.SECOND_OPINION],
        "scope": ConsentGrant.Scope.ALL,
        "method": "drawn",
        "signature": data_url(signature_png()),
        "identity_checked": "on",
    }
    data.update(overrides)
    return data


def post_paper(client, origin, patient_record, receiver, upload):
    data = form_data(receiver, method="paper", signature="", scan=upload)
    return client.post(new_url(origin, patient_record), data)


def nothing_written() -> bool:
    return (not SignedAuthorization.objects.exists() and not ConsentGrant.objects.exists()
            and not stored_documents())  # fmt: skip


def test_it_records_a_drawn_authorization_with_its_grants_and_pdf(
    client, front_desk, origin, receiver, patient_record, ct
):
    client.force_login(front_desk)
    response = client.post(new_url(origin, patient_record), form_data(receiver))
    authorization = SignedAuthorization.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("consent:authorization", args=[authorization.public_id])
    grants = ConsentGrant.objects.filter(authorization=authorization)
    assert grants.count() == 2
    assert {g.source for g in grants} == {ConsentGrant.Source.SIGNED_AUTHORIZATION}
    assert authorization.method == SignedAuthorization.Method.DRAWN
    assert authorization.witnessed_by == front_desk
    assert stored_documents() == [authorization.pdf_object_name]
    # The object store holds ciphertext only.
    with get_object_store().open(authorization.pdf_object_name) as body:
        assert not body.read().startswith(b"%PDF")
    event = AuditEvent.objects.get(action=Action.AUTHORIZATION_SIGNED)
    assert event.patient_id == patient_record.pk
    assert event.detail["content_sha256"] == authorization.content_sha256
    assert AuditEvent.objects.filter(action=Action.GRANT_CREATED).count() == 2

    page = client.get(response.url)
    assert b"Download the PDF to print" in page.content

    download = client.get(reverse("consent:authorization-pdf", args=[authorization.public_id]))
    assert download.status_code == 200
    assert download["Content-Type"] == "application/pdf"
    disposition = download["Content-Disposition"]
    assert disposition == f'attachment; filename="authorization-{authorization.public_id}.pdf"'
    assert download.content.startswith(b"%PDF-")
    text = pdf_text(download.content)
    for expected in ("Pat Doe", "1978-04-12", "Lakeside Imaging Center", "Second opinion",
                     "Riverside General Hospital", authorization.content_sha256, "UTC",
                     "desk@riverside.example.org", "RGH-0042"):  # fmt: skip
        assert expected in text, expected
    assert "/Subtype /Image" in text  # the signature
    assert AuditEvent.objects.filter(action=Action.AUTHORIZATION_DOWNLOADED,
                                     outcome=Outcome.ALLOWED).count() == 1  # fmt: skip


def test_it_lets_the_patient_download_their_own(client, front_desk, patient, origin, receiver,
                                                 patient_record, ct):  # fmt: skip
    client.force_login(front_desk)
    client.post(new_url(origin, patient_record), form_data(receiver))
    authorization = SignedAuthorization.objects.get()
    client.force_login(patient)
    download = client.get(reverse("consent:authorization-pdf", args=[authorization.public_id]))
    assert download.status_code == 200
    assert "Pat Doe" in pdf_text(download.content)


def test_it_hides_authorizations_from_anyone_else(client, front_desk, other_patient, stranger,
                                                  clinician, origin, receiver, patient_record,
                                                  ct):  # fmt: skip
    client.force_login(front_desk)
    client.post(new_url(origin, patient_record), form_data(receiver))
    authorization = SignedAuthorization.objects.get()
    for someone in (other_patient, stranger, clinician):
        client.force_login(someone)
        for name in ("consent:authorization-pdf", "consent:authorization"):
            assert client.get(reverse(name, args=[authorization.public_id])).status_code == 404
    denied = AuditEvent.objects.filter(action=Action.AUTHORIZATION_DOWNLOADED,
                                       outcome=Outcome.DENIED)  # fmt: skip
    assert denied.count() == 6


def test_it_stores_a_scanned_pdf_as_its_own_document(client, front_desk, origin, receiver,
                                                      patient_record, ct):  # fmt: skip
    client.force_login(front_desk)
    scan = io.BytesIO(tiny_pdf())
    scan.name = "form.pdf"
    response = post_paper(client, origin, patient_record, receiver, scan)
    assert response.status_code == 302
    authorization = SignedAuthorization.objects.get()
    assert authorization.method == SignedAuthorization.Method.PAPER
    assert sorted(stored_documents()) == sorted([authorization.pdf_object_name,
                                                 authorization.scan_object_name])  # fmt: skip
    pdf = client.get(reverse("consent:authorization-pdf", args=[authorization.public_id]))
    assert "Paper form attached" in pdf_text(pdf.content)
    scan_back = client.get(reverse("consent:authorization-scan", args=[authorization.public_id]))
    assert scan_back.content == tiny_pdf()


def test_it_prints_a_scanned_image_inside_the_pdf(client, front_desk, origin, receiver,
                                                  patient_record, ct):  # fmt: skip
    client.force_login(front_desk)
    page = Image.new("RGB", (850, 1100), "white")
    ImageDraw.Draw(page).rectangle([100, 900, 500, 950], fill="black")
    raw = io.BytesIO()
    page.save(raw, format="JPEG")
    upload = io.BytesIO(raw.getvalue())
    upload.name = "form.pdf"  # the name says PDF; the content says JPEG, and wins
    response = post_paper(client, origin, patient_record, receiver, upload)
    assert response.status_code == 302
    authorization = SignedAuthorization.objects.get()
    assert not authorization.has_scan_document
    assert len(stored_documents()) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"signature": ""}, "has not signed yet"),
        ({"signature": data_url(signature_png(blank=True))}, "blank or nearly blank"),
        ({"signature": data_url(signature_png(size=(4000, 300)))}, "too large"),
        ({"signature": "data:image/png;base64,AAAA"}, "not received as an image"),
        ({"method": "paper", "signature": ""}, "Choose the scanned form"),
        ({"grantee_facilities": [987654]}, "not known here"),
        ({"purposes": []}, "at least one purpose"),
        ({"valid_until": "2001-01-01"}, "must be in the future"),
        ({"identity_checked": ""}, "checked who the patient is"),
    ],
)
def test_it_refuses_bad_input_and_writes_nothing(client, front_desk, origin, receiver,
                                                 patient_record, ct, overrides,
                                                 message):  # fmt: skip
    client.force_login(front_desk)
    response = client.post(new_url(origin, patient_record), form_data(receiver, **overrides))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert nothing_written()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>not a pdf</html>", "must be a PDF, JPEG or PNG"),
        (b"%PDF-1.4\n garbage without an end", "incomplete or damaged"),
        (b"\x89PNG\r\n\x1a\n broken", "damaged"),
        (b"", "Choose the scanned form"),
    ],
)
def test_it_refuses_uploads_that_are_not_what_they_claim(client, front_desk, origin, receiver,
                                                         patient_record, ct, content,
                                                         message):  # fmt: skip
    client.force_login(front_desk)
    upload = io.BytesIO(content)
    upload.name = "form.pdf"
    response = post_paper(client, origin, patient_record, receiver, upload)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert nothing_written()


def test_it_refuses_an_oversized_scan(client, settings, front_desk, origin, receiver,
                                      patient_record, ct):  # fmt: skip
    settings.CONSENT_SCAN_MAX_BYTES = 1024 * 1024
    client.force_login(front_desk)
    upload = io.BytesIO(tiny_pdf()[:-7] + b" " * (2 * 1024 * 1024) + b"%%EOF\n")
    upload.name = "form.pdf"
    response = post_paper(client, origin, patient_record, receiver, upload)
    assert response.status_code == 400
    assert "larger than 1 MB" in response.content.decode()
    assert nothing_written()


def test_it_refuses_a_scope_matching_no_study_and_audits_it(client, front_desk, origin, receiver,
                                                            patient_record, ct):  # fmt: skip
    client.force_login(front_desk)
    response = client.post(new_url(origin, patient_record),
                           form_data(receiver, scope=ConsentGrant.Scope.RULES,
                                     rule_modalities="MR"))  # fmt: skip
    assert response.status_code == 400
    assert "No study matches" in response.content.decode()
    assert nothing_written()
    refused = AuditEvent.objects.get(action=Action.AUTHORIZATION_REFUSED)
    assert (refused.outcome, refused.patient_id) == (Outcome.DENIED, patient_record.pk)


def test_it_refuses_a_period_shorter_than_the_minimum(client, front_desk, origin, receiver,
                                                      patient_record, ct):  # fmt: skip
    client.force_login(front_desk)
    soon = (timezone.localdate() + timedelta(days=3)).isoformat()
    response = client.post(new_url(origin, patient_record), form_data(receiver, valid_until=soon))
    assert response.status_code == 400
    assert "must last at least until" in response.content.decode()
    assert nothing_written()


def test_it_requires_the_csrf_token(front_desk, origin, receiver, patient_record, ct):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(front_desk)
    response = client.post(new_url(origin, patient_record), form_data(receiver))
    assert response.status_code == 403
    assert nothing_written()


def test_it_shows_the_form_and_finds_patients(client, front_desk, origin, patient_record, ct):
    client.force_login(front_desk)
    search = client.get(reverse("consent:authorization-start"), {"q": "doe"})
    assert search.status_code == 200
    assert new_url(origin, patient_record) in search.content.decode()
    form = client.get(new_url(origin, patient_record))
    assert form.status_code == 200
    assert b"signature-pad" in form.content


def test_it_sends_anonymous_visitors_to_sign_in(client, origin, patient_record):
    response = client.get(new_url(origin, patient_record))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_it_hides_patients_of_other_facilities(client, stranger, elsewhere, patient_record):
    client.force_login(stranger)
    assert client.get(new_url(elsewhere, patient_record)).status_code == 404
    refused = AuditEvent.objects.get(action=Action.AUTHORIZATION_REFUSED)
    assert refused.patient_id == patient_record.pk


def test_it_hides_the_facility_from_strangers(client, stranger, origin, patient_record):
    client.force_login(stranger)
    assert client.get(new_url(origin, patient_record)).status_code == 404


def test_it_refuses_other_roles(client, origin, patient_record):
    from facilities.models import Role
    from tests.factories import make_staff

    clinician = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    client.force_login(clinician)
    assert client.get(new_url(origin, patient_record)).status_code == 403
    assert client.get(reverse("consent:authorization-start")).status_code == 403


def test_it_refuses_other_methods(client, front_desk, origin, patient_record):
    client.force_login(front_desk)
    assert client.put(new_url(origin, patient_record)).status_code == 405
    assert client.post(reverse("consent:authorization-start")).status_code == 405


def test_key_rotation_rewraps_the_documents_keys_too(settings, tmp_path, front_desk, origin,
                                                      receiver, patient_record, ct):  # fmt: skip
    from django.core.management import call_command

    from consent.authorizations import (
        AuthorizationRequest,
        authorization_capture,
        authorization_read,
    )
    from consent.models import ConsentGrant
    from sharing.crypto import LocalKeyring

    keyring = tmp_path / "keyring"
    LocalKeyring.load_or_create(keyring)
    settings.PORTAL_KEYRING_FILE = str(keyring)
    authorization = authorization_capture(
        wanted=AuthorizationRequest(
            patient=patient_record, facility=origin, grantee_facilities=[receiver],
            purposes=["TREAT"], scope=ConsentGrant.Scope.ALL, signature_png=signature_png(),
        ),
        witness=front_desk,
    )  # fmt: skip
    before = authorization_read(authorization=authorization, actor=front_desk)

    call_command("rotate_kek")

    authorization.refresh_from_db()
    assert authorization.pdf_kek_id == "v2"
    # Only v2 is left to open it: drop v1 from the keyring, as an operator would after rotating.
    text = keyring.read_text()
    keyring.write_text("\n".join(line for line in text.splitlines() if not line.startswith("v1:")))
    settings.PORTAL_KEYRING_FILE = str(keyring)  # reloads the keyring
    assert authorization_read(authorization=authorization, actor=front_desk) == before
