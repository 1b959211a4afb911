"""The browser upload: the page (studies:upload) and the endpoint that receives files."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import reverse

from audit.codes import Action, Outcome
from audit.models import AuditEvent
from facilities.models import Role
from studies.models import Instance, Patient, Study
from studies.services import Channel, IngestSource, study_ingest_instance
from studies.synthetic import SyntheticPatient
from tests.factories import MembershipFactory

MEDIA_PATIENT = SyntheticPatient(patient_id="CD-4711", name="DOE^JANE", issuer="")
RECEIVE = reverse("studies:upload-receive")
PAGE = reverse("studies:upload")


def receive_url(facility) -> str:
    return f"{RECEIVE}?facility={facility.pk}"


def send(client: Client, facility, body: bytes, name: str = "IM1", **headers):
    """What static/js/upload.js sends: the file as the raw body, its name in a header."""
    return client.post(
        receive_url(facility),
        data=body,
        content_type="application/octet-stream",
        headers={"X-Upload-Name": quote(name), **headers},
    )


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def spool_files(spool) -> list[Path]:
    return [path for path in spool.root.rglob("*") if path.is_file()] if spool.root.exists() else []


def assert_nothing_stored(spool) -> None:
    assert not Study.objects.exists()
    assert not Instance.objects.exists()
    assert not Patient.objects.exists()
    assert spool_files(spool) == []


@pytest.fixture
def desk(client, front_desk) -> Client:
    client.force_login(front_desk)
    return client


# --- The page ----------------------------------------------------------------------------------


def test_it_shows_the_upload_page_for_the_front_desk(desk, origin):
    response = desk.get(PAGE)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Upload images" in page
    assert origin.name in page
    assert f'action="{RECEIVE}?facility={origin.pk}"' in page
    assert 'name="files" multiple' in page
    assert "webkitdirectory" in page
    assert "js/upload" in page
    assert "<script>" not in page  # the policy forbids inline scripts


def test_facility_admins_may_upload_too(client, facility_admin, origin):
    client.force_login(facility_admin)

    assert client.get(f"{PAGE}?facility={origin.pk}").status_code == 200


def test_it_asks_which_facility_when_the_person_has_several(desk, front_desk, origin, elsewhere):
    MembershipFactory(user=front_desk, facility=elsewhere, role=Role.FACILITY_ADMIN)

    response = desk.get(PAGE)

    assert response.status_code == 200
    assert response.context["choices"]
    assert "Which facility are these images for?" in response.content.decode()
    assert desk.get(f"{PAGE}?facility={elsewhere.pk}").context["facility"] == elsewhere
    assert send(desk, origin, b"").status_code == 200
    no_choice = desk.post(RECEIVE, data=b"x", content_type="application/octet-stream")
    assert no_choice.status_code == 400
    assert "Choose the facility" in no_choice.json()["error"]


def test_the_staff_home_links_to_the_upload_page(desk, origin):
    page = desk.get(reverse("portal:staff-home")).content.decode()

    assert f"{PAGE}?facility={origin.pk}" in page


# --- Who may upload ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [PAGE, RECEIVE])
def test_anonymous_visitors_are_sent_to_sign_in(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_anonymous_uploads_are_sent_to_sign_in_and_store_nothing(client, origin, spool):
    response = send(client, origin, b"anything")

    assert response.status_code == 302
    assert_nothing_stored(spool)


def test_strangers_get_404(client, stranger, origin, spool, synthetic_study):
    client.force_login(stranger)
    [path] = synthetic_study(instances=1)

    assert client.get(f"{PAGE}?facility={origin.pk}").status_code == 404
    assert send(client, origin, path.read_bytes()).status_code == 404
    assert_nothing_stored(spool)


@pytest.mark.parametrize("query", ["", "?facility=not-a-number", "?facility=987654"])
def test_patients_and_platform_admins_without_a_role_get_404(
    client, patient, platform_admin, query
):
    for person in (patient, platform_admin):
        client.force_login(person)
        assert client.get(f"{PAGE}{query}").status_code == 404


def test_clinicians_get_403(client, clinician, receiver, origin, spool, synthetic_study):
    client.force_login(clinician)
    [path] = synthetic_study(instances=1)

    assert client.get(PAGE).status_code == 403
    assert client.get(f"{PAGE}?facility={receiver.pk}").status_code == 403
    assert send(client, receiver, path.read_bytes()).status_code == 403
    assert client.get(f"{PAGE}?facility={origin.pk}").status_code == 404
    assert_nothing_stored(spool)


def test_receiving_needs_post(desk, origin):
    response = desk.get(receive_url(origin))

    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_the_page_is_read_only(desk, origin):
    assert desk.post(f"{PAGE}?facility={origin.pk}").status_code == 405


def test_uploads_need_the_csrf_token(front_desk, origin, spool, synthetic_study):
    client = Client(enforce_csrf_checks=True)
    client.force_login(front_desk)
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)
    client.get(PAGE)  # sets the CSRF cookie, as opening the page does

    refused = send(client, origin, path.read_bytes())

    assert refused.status_code == 403
    assert_nothing_stored(spool)
    token = client.cookies["csrftoken"].value
    accepted = send(client, origin, path.read_bytes(), **{"X-CSRFToken": token})
    assert accepted.status_code == 200
    assert accepted.json()["results"][0]["outcome"] == "accepted"


def test_form_uploads_need_the_csrf_token_and_leave_nothing_behind(
    front_desk, origin, spool, synthetic_study
):
    client = Client(enforce_csrf_checks=True)
    client.force_login(front_desk)
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)

    with path.open("rb") as file:
        response = client.post(receive_url(origin), {"files": [file]})

    assert response.status_code == 403
    assert_nothing_stored(spool)


# --- Receiving files ---------------------------------------------------------------------------


def test_it_receives_files_one_request_each_and_says_where_they_went(
    desk, front_desk, origin, spool, synthetic_study
):
    paths = synthetic_study(instances=3, patient=MEDIA_PATIENT)

    responses = [send(desk, origin, p.read_bytes(), name=f"CD/DICOM/{p.name}") for p in paths]

    assert [r.status_code for r in responses] == [200] * 3
    results = [r.json()["results"] for r in responses]
    assert [[(x["name"], x["outcome"]) for x in r] for r in results] == [
        [(f"CD/DICOM/{p.name}", "accepted")] for p in paths
    ]
    assert results[0][0]["message"] == "Received."
    study = Study.objects.get()
    assert (study.number_of_instances, study.source_facility) == (3, origin)
    assert study.match == Study.Match.PENDING  # media: the patient ID has no issuer
    [described] = responses[-1].json()["studies"]
    assert described["id"] == str(study.public_id)
    assert described["waiting"] is True
    assert described["status"] == "Needs matching to a patient"
    assert "no issuer" in described["why"]
    assert "DOE" not in responses[-1].content.decode()  # no patient name is sent back
    assert all(r[0]["study"] == str(study.public_id) for r in results)
    events = AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED)
    assert {(e.detail["channel"], e.actor_id) for e in events} == {("upload", str(front_desk.pk))}
    assert list(spool.incoming_dir.glob("*")) == []


def test_it_streams_bodies_larger_than_django_keeps_in_memory(
    desk, origin, spool, settings, synthetic_study
):
    [path] = synthetic_study(instances=1, rows=1200, patient=MEDIA_PATIENT)
    assert path.stat().st_size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = send(desk, origin, path.read_bytes())

    assert response.json()["results"][0]["outcome"] == "accepted"
    assert Instance.objects.get().size_bytes == path.stat().st_size


def test_sending_the_same_file_again_changes_nothing(desk, origin, spool, synthetic_study):
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)
    send(desk, origin, path.read_bytes())
    before = list(Instance.objects.values())

    again = send(desk, origin, path.read_bytes()).json()["results"][0]

    assert (again["outcome"], again["label"]) == ("duplicate", "Already here")
    assert list(Instance.objects.values()) == before


def test_it_says_nothing_about_a_study_held_for_another_facility(
    desk, origin, elsewhere, spool, synthetic_study
):
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)
    with path.open("rb") as file:
        incoming = spool.receive(file)
    study_ingest_instance(
        path=incoming, source=IngestSource(elsewhere, Channel.STOW, "api_token", 1), spool=spool
    )

    body = send(desk, origin, path.read_bytes()).json()

    assert body["results"][0]["outcome"] == "duplicate"
    assert body["results"][0]["study"] is None
    assert body["studies"] == []


def test_it_unpacks_a_zip_into_one_result_per_file(desk, origin, spool, synthetic_study):
    paths = synthetic_study(instances=2, patient=MEDIA_PATIENT)
    archive = zipped(
        {
            **{f"DICOM/{p.name}": p.read_bytes() for p in paths},
            "DICOMDIR": b"not really an index",
            "VIEWER/viewer.exe": b"MZ" + os.urandom(2000),
        }
    )

    response = send(desk, origin, archive, name="from-patient.zip")

    assert response.status_code == 200
    results = {r["name"]: r for r in response.json()["results"]}
    assert {name: r["outcome"] for name, r in results.items()} == {
        "from-patient.zip/DICOMDIR": "skipped",
        f"from-patient.zip/DICOM/{paths[0].name}": "accepted",
        f"from-patient.zip/DICOM/{paths[1].name}": "accepted",
        "from-patient.zip/VIEWER/viewer.exe": "refused",
    }
    viewer = results["from-patient.zip/VIEWER/viewer.exe"]
    assert (viewer["group"], viewer["label"]) == ("other", "Not an image")
    assert "not a DICOM image" in viewer["message"]
    assert results["from-patient.zip/DICOMDIR"]["group"] == "other"
    assert Instance.objects.count() == 2
    assert list(spool.incoming_dir.glob("*")) == []


def test_the_page_works_without_javascript(desk, origin, spool, synthetic_study, tmp_path):
    paths = synthetic_study(instances=2, patient=MEDIA_PATIENT)
    junk = tmp_path / "notes.txt"
    junk.write_text("call the patient back")

    with paths[0].open("rb") as a, paths[1].open("rb") as b, junk.open("rb") as c:
        response = desk.post(receive_url(origin), {"files": [a, b, c]})

    assert response.status_code == 200
    assert response.templates[0].name == "studies/upload.html"
    page = response.content.decode()
    assert "2 images received in 1 study." in page
    assert "1 other file set aside" in page
    assert "1 study needs matching to a patient before it can be shared." in page
    assert "Match studies to patients" in page
    assert paths[0].name in page
    assert "notes.txt" in page
    assert Instance.objects.count() == 2
    assert list(spool.incoming_dir.glob("*")) == []


def test_a_form_without_files_is_answered_with_a_clear_error(desk, origin, spool):
    response = desk.post(receive_url(origin), {"other": "x"})

    assert response.status_code == 400
    assert "Choose at least one file" in response.content.decode()
    assert_nothing_stored(spool)


def test_other_kinds_of_body_are_refused(desk, origin, spool):
    response = desk.post(receive_url(origin), data="{}", content_type="application/json")

    assert response.status_code == 415
    assert_nothing_stored(spool)


# --- Bad input: a clear answer, nothing changed ------------------------------------------------


def refusal_of(response) -> dict:
    [result] = response.json()["results"]
    assert result["outcome"] == "refused"
    return result


def test_it_refuses_a_file_that_is_not_dicom(desk, origin, spool):
    result = refusal_of(send(desk, origin, b"Dear doctor, " * 40, name="letter.doc"))

    assert result["message"] == "This file is not a DICOM image."
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "upload", "reason": "NOT_DICOM"}


def test_it_refuses_a_truncated_file(desk, origin, spool, synthetic_study):
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)
    data = path.read_bytes()

    result = refusal_of(send(desk, origin, data[:-100]))

    assert "cut off while copying" in result["message"]
    assert result["group"] == "problem"
    assert_nothing_stored(spool)


def test_it_refuses_an_empty_body(desk, origin, spool):
    result = refusal_of(send(desk, origin, b""))

    assert "empty" in result["message"]
    assert_nothing_stored(spool)


def test_it_refuses_a_body_over_the_limit_without_keeping_it(
    desk, origin, spool, settings, synthetic_study
):
    settings.INGEST_MAX_INSTANCE_BYTES = 4096
    settings.INGEST_MAX_ARCHIVE_BYTES = 4096
    [path] = synthetic_study(instances=1, rows=64, patient=MEDIA_PATIENT)

    response = send(desk, origin, path.read_bytes())

    assert response.status_code == 413
    result = refusal_of(response)
    assert "larger than the 4 KiB" in result["message"]
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert (event.outcome, event.detail) == (
        Outcome.DENIED,
        {"channel": "upload", "reason": "TOO_LARGE"},
    )


def test_it_refuses_an_image_over_the_image_limit_even_under_the_zip_limit(
    desk, origin, spool, settings, synthetic_study
):
    settings.INGEST_MAX_INSTANCE_BYTES = 4096
    [path] = synthetic_study(instances=1, rows=64, patient=MEDIA_PATIENT)

    response = send(desk, origin, path.read_bytes())

    assert response.status_code == 413
    assert (
        "larger than the 4 KiB this portal accepts for one image" in refusal_of(response)["message"]
    )
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "upload", "reason": "TOO_LARGE"}


def test_it_refuses_a_zip_bomb(desk, origin, spool):
    bomb = zipped({"IM1": b"\0" * (30 * 1024**2)})

    result = refusal_of(send(desk, origin, bomb, name="images.zip"))

    assert result["name"] == "images.zip"
    assert "zip bomb" in result["message"]
    assert result["reason"] == "ARCHIVE_RATIO"
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "upload", "reason": "ARCHIVE_RATIO"}


def test_it_refuses_names_that_leave_the_zip(desk, origin, spool, synthetic_study):
    [path] = synthetic_study(instances=1, patient=MEDIA_PATIENT)

    result = refusal_of(send(desk, origin, zipped({"../../IM1": path.read_bytes()}), "x.zip"))

    assert result["name"] == "x.zip/../../IM1"
    assert "points outside" in result["message"]
    assert_nothing_stored(spool)


def test_a_name_header_cannot_smuggle_a_path(desk, origin, spool):
    result = refusal_of(send(desk, origin, b"junk" * 100, name="../../etc/passwd"))

    assert result["name"] == "etc/passwd"


def test_the_multipart_handler_stops_writing_at_the_limit(
    desk, origin, spool, settings, synthetic_study
):
    settings.INGEST_MAX_INSTANCE_BYTES = 4096
    settings.INGEST_MAX_ARCHIVE_BYTES = 4096
    [path] = synthetic_study(instances=1, rows=64, patient=MEDIA_PATIENT)

    with path.open("rb") as file:
        response = desk.post(receive_url(origin), {"files": [file]})

    assert response.status_code == 200
    assert "larger than the 4 KiB" in response.content.decode()
    assert_nothing_stored(spool)
