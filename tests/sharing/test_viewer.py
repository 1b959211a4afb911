"""The image viewer: its page, the series manifest, rendered frames and series thumbnails.

Frames are decrypted from the real store and rendered per request for whoever the access
decision allows now; everything else gets 404, audited as denied. Nothing of the viewer shows a
DICOM UID, an MRN or the patient's name.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.http import HttpResponse
from django.urls import include, path, reverse
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from accounts.policies import PUBLIC
from audit.codes import Action, ActorKind, Outcome, PurposeOfUse
from audit.models import AuditEvent
from consent.models import ConsentGrant, Purpose
from consent.services import GrantRequest, grant_consent, withdraw_consent
from portal.urls import urlpatterns as portal_urlpatterns
from sharing.access import ReadAccess
from sharing.frames import FrameRefused, rendered_frame, series_thumbnail_instance
from sharing.services import Reader, publish_spooled
from sharing.viewer_views import viewer_urlpatterns
from studies.models import Instance, Patient, Series, Study
from studies.rendering import RenderError, Window, display_facts
from tests.factories import PatientFactory

pytestmark = pytest.mark.stack

SLICES = 5
ROWS = 64


def publish(received_study, account, **options: Any) -> Study:
    study = received_study(**options)
    publish_spooled(settings.PORTAL_NODE)
    Patient.objects.filter(pk=study.patient_id).update(account=account)
    study.refresh_from_db()
    return study


@pytest.fixture
def ct(received_study, store, patient) -> Study:
    """A published 5-slice CT of Jane Doe (MRN100), whose record is the `patient` account's."""
    return publish(received_study, patient, instances=SLICES, rows=ROWS)


@pytest.fixture
def series(ct) -> Series:
    return ct.series.get()


@pytest.fixture
def slices(series) -> list[Instance]:
    return list(series.instances.select_related("study").order_by("instance_number"))


def page_url(study: Study) -> str:
    return reverse("viewer:study", kwargs={"study_id": study.public_id})


def manifest_url(study: Study, series: Series) -> str:
    ids = {"study_id": study.public_id, "series_id": series.public_id}
    return reverse("viewer:manifest", kwargs=ids)


def frame_url(instance: Instance, frame: int = 1, series: Series | None = None) -> str:
    return reverse(
        "viewer:frame",
        kwargs={
            "study_id": instance.study.public_id,
            "series_id": (series or instance.series).public_id,
            "instance_id": instance.public_id,
            "frame": frame,
        },
    )


def picture(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def secrets_of(study: Study) -> list[str]:
    """What must never appear in anything the viewer sends: UIDs, the MRN, the name."""
    instances = Instance.objects.filter(study=study)
    return [
        study.study_instance_uid,
        *Series.objects.filter(study=study).values_list("series_instance_uid", flat=True),
        *instances.values_list("sop_instance_uid", flat=True),
        *{uid for uid in instances.values_list("sop_class_uid", flat=True)},
        study.patient_id_value,
        study.patient_name,
        "Jane Doe",
        "1980-03-05",
        "19800305",
        "1.2.840.10008",  # any DICOM UID root: transfer syntaxes, SOP classes
    ]


def reads(outcome: str = Outcome.ALLOWED) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=Action.INSTANCE_READ, outcome=outcome))


# --- The page and the manifest ---------------------------------------------------------------


def test_it_shows_the_patient_their_study_s_series_and_stack(client, patient, ct, series):
    client.force_login(patient)
    response = client.get(page_url(ct))
    assert response.status_code == 200
    html = response.content.decode()
    assert "SYNTHETIC CT STUDY" in html
    assert "SYNTHETIC CT SERIES" in html
    assert f"{SLICES} images" in html
    ids = {"study_id": ct.public_id, "series_id": series.public_id}
    assert f'data-manifest-url="{reverse("viewer:manifest", kwargs=ids)}"' in html
    assert reverse("viewer:series-thumbnail", kwargs=ids) in html
    first = series.instances.order_by("instance_number").first()
    assert f'data-first-frame-url="{frame_url(first)}"' in html
    assert reverse("studies:patient-study", args=[ct.public_id]) in html  # the way back
    assert "/static/js/viewer." in html
    assert "/static/css/viewer." in html
    for secret in secrets_of(ct):
        assert secret.lower() not in html.lower(), secret
    viewed = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (viewed.actor_id, viewed.study_id, viewed.purpose) == (
        str(patient.pk),
        ct.pk,
        PurposeOfUse.PATIENT_REQUEST,
    )


def test_the_series_page_selects_that_series(client, patient, ct, series):
    client.force_login(patient)
    url = reverse("viewer:series", kwargs={"study_id": ct.public_id, "series_id": series.public_id})
    response = client.get(url)
    assert response.status_code == 200
    assert f'href="{url}" aria-current="page"' in response.content.decode()


def test_a_study_with_nothing_published_says_so(client, patient, received_study):
    study = received_study(instances=1)  # in the spool, not in the store
    Patient.objects.filter(pk=study.patient_id).update(account=patient)
    client.force_login(patient)
    response = client.get(page_url(study))
    assert response.status_code == 200
    html = response.content.decode()
    assert "No images of this study can be shown yet." in html
    assert "data-manifest-url" not in html
    assert not reads()


def test_the_manifest_lists_the_stack_in_order_without_uids(client, patient, ct, series, slices):
    client.force_login(patient)
    response = client.get(manifest_url(ct, series))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "private, no-store"
    manifest = response.json()
    assert [item["id"] for item in manifest["instances"]] == [str(i.public_id) for i in slices]
    assert [item["number"] for item in manifest["instances"]] == list(range(1, SLICES + 1))
    assert {(item["frames"], item["rows"], item["columns"]) for item in manifest["instances"]} == {
        (1, ROWS, ROWS)
    }
    assert manifest["study"] == {
        "id": str(ct.public_id),
        "date": "2026-01-02",
        "description": "SYNTHETIC CT STUDY",
        "modalities": ["CT"],
    }
    assert manifest["series"]["id"] == str(series.public_id)
    # The header's window of the synthetic CT, and the presets the buttons offer.
    assert manifest["window"] == {"center": 40.0, "width": 400.0}
    assert manifest["window_from_header"] is True
    assert manifest["grayscale"] is True
    assert manifest["frame_time_ms"] is None
    assert set(manifest["presets"]) == {"soft_tissue", "lung", "bone", "brain"}
    template = manifest["frame_url"]
    assert template == frame_url(slices[0]).replace(str(slices[0].public_id), "{instance}").replace(
        "/frames/1/", "/frames/{frame}/"
    )
    filled = template.replace("{instance}", manifest["instances"][2]["id"]).replace("{frame}", "1")
    assert client.get(filled).status_code == 200
    text = json.dumps(manifest)
    for secret in secrets_of(ct):
        assert secret.lower() not in text.lower(), secret
    # Reading the header for the window is an audited read, like any other.
    assert len(reads()) == 2
    assert AuditEvent.objects.filter(action=Action.STUDY_VIEWED, detail__viewer="manifest").exists()


def test_the_stack_follows_instance_numbers_not_arrival(client, patient, ct, series, slices):
    for position, instance in enumerate(slices):
        Instance.objects.filter(pk=instance.pk).update(instance_number=100 - position)
    client.force_login(patient)
    manifest = client.get(manifest_url(ct, series)).json()
    assert [item["id"] for item in manifest["instances"]] == [
        str(instance.public_id) for instance in reversed(slices)
    ]
    assert [item["number"] for item in manifest["instances"]] == list(range(96, 101))


def test_without_a_header_window_a_viewer_starts_from_the_stored_range() -> None:
    data_set = Dataset()
    data_set.file_meta = FileMetaDataset()
    data_set.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data_set.file_meta.MediaStorageSOPClassUID = data_set.SOPClassUID = CTImageStorage
    data_set.file_meta.MediaStorageSOPInstanceUID = data_set.SOPInstanceUID = generate_uid()
    data_set.Rows = data_set.Columns = 2
    data_set.PhotometricInterpretation = "MONOCHROME2"
    data_set.BitsAllocated, data_set.BitsStored, data_set.PixelRepresentation = 16, 12, 0
    data_set.RescaleSlope, data_set.RescaleIntercept = 1, -1024
    data_set.PixelData = bytes(8)
    out = io.BytesIO()
    data_set.save_as(out, enforce_file_format=True)
    facts = display_facts(out.getvalue()[:-8])  # the header alone, as the manifest reads it
    assert facts.grayscale
    assert not facts.window_from_header
    assert facts.window == Window(1023.5, 4095)  # stored 0..4095 is -1024..3071 HU
    with pytest.raises(RenderError):
        display_facts(out.getvalue()[:200])  # cut before the image attributes


def test_a_multi_frame_series_is_colour_with_a_cine_speed(client, patient, received_study, store):
    study = publish(received_study, patient, modality="US", instances=1, rows=32)
    series = study.series.get()
    client.force_login(patient)
    manifest = client.get(manifest_url(study, series)).json()
    assert [item["frames"] for item in manifest["instances"]] == [10]
    assert manifest["grayscale"] is False
    assert manifest["window"] is None
    assert manifest["frame_time_ms"] == pytest.approx(33.3)
    instance = series.instances.select_related("study").get()
    last = client.get(frame_url(instance, frame=10))
    assert last.status_code == 200
    assert picture(last.content).mode == "RGB"
    assert client.get(frame_url(instance, frame=11)).status_code == 404


# --- Rendered frames ---------------------------------------------------------------------------


def test_a_frame_is_a_real_jpeg_of_the_instance_s_size(client, patient, slices):
    client.force_login(patient)
    response = client.get(frame_url(slices[0]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, max-age=300"
    image = picture(response.content)
    assert (image.format, image.mode, image.size) == ("JPEG", "L", (ROWS, ROWS))
    assert np.asarray(image).std() > 10, "a blank picture"
    (read,) = reads()
    assert (read.target_id, read.actor_id, read.purpose) == (
        str(slices[0].pk),
        str(patient.pk),
        PurposeOfUse.PATIENT_REQUEST,
    )


def test_it_renders_png_and_smaller_sizes_on_request(client, patient, slices):
    client.force_login(patient)
    png = client.get(frame_url(slices[1]), {"format": "png"})
    assert png["Content-Type"] == "image/png"
    assert picture(png.content).format == "PNG"
    small = client.get(frame_url(slices[1]), {"size": "32"})
    assert picture(small.content).size == (32, 32)


def test_presets_and_windows_change_the_picture(client, patient, slices):
    client.force_login(patient)
    url = frame_url(slices[2])

    def gray(**query: str) -> np.ndarray:
        response = client.get(url, {"format": "png", **query})
        assert response.status_code == 200, response.content
        return np.asarray(picture(response.content))

    default, lung = gray(), gray(preset="lung")
    assert np.array_equal(default, gray(window="40,400"))  # the header's own window
    assert np.array_equal(default, gray(preset="default"))
    assert np.array_equal(lung, gray(window="-600,1500"))
    assert np.array_equal(gray(preset="soft_tissue"), default)
    assert not np.array_equal(default, lung)
    # Lungs (-850 HU) are black in the soft-tissue window and grey in the lung window.
    assert default.min() == 0
    assert lung.min() > 0


BAD_QUERIES = [
    ({"window": "wide"}, "two numbers"),
    ({"window": "40"}, "two numbers"),
    ({"window": "40,400,3"}, "two numbers"),
    ({"window": "nan,400"}, "two numbers"),
    ({"window": "40,inf"}, "two numbers"),
    ({"window": "1e3,400"}, "two numbers"),
    ({"window": ""}, "two numbers"),
    ({"window": "40,0"}, "width between 1"),
    ({"window": "40,-400"}, "width between 1"),
    ({"window": "2000000,400"}, "center must be between"),
    ({"preset": "liver"}, "no preset 'liver'"),
    ({"preset": ""}, "no preset"),
    ({"preset": "lung", "window": "40,400"}, "not both"),
    ({"window": ["40,400", "50,400"]}, "only once"),
    ({"size": "0"}, "from 16 to 2048"),
    ({"size": "4096"}, "from 16 to 2048"),
    ({"size": "-32"}, "from 16 to 2048"),
    ({"size": "12.5"}, "from 16 to 2048"),
    ({"size": "big"}, "from 16 to 2048"),
    ({"format": "gif"}, "jpeg or png"),
]


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES, ids=lambda v: str(v))
def test_bad_query_values_get_400_with_a_message_and_nothing_is_read(
    client, patient, slices, query, message
):
    client.force_login(patient)
    response = client.get(frame_url(slices[0]), query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert message in response.content.decode()
    assert not reads()  # nothing decrypted, nothing served


@pytest.mark.parametrize("frame", [0, 2, 999999999999])
def test_a_frame_outside_the_instance_is_404_and_audited(client, patient, slices, frame):
    client.force_login(patient)
    response = client.get(frame_url(slices[0], frame=frame))
    assert response.status_code == 404
    assert not reads()
    (refused,) = reads(Outcome.DENIED)
    assert refused.detail == {"reason": "no_such_frame", "frame": frame}


def test_an_instance_of_another_series_or_study_is_404_and_audited(
    client, patient, ct, series, slices, received_study
):
    other = publish(received_study, patient, instances=1, rows=32, seed=7)
    stranger_instance = other.instances.select_related("study", "series").get()
    client.force_login(patient)
    # The other study's instance under this study and series, and under its own study with
    # this study's series: the patient may read both studies, and still gets 404.
    wrong = [
        reverse(
            "viewer:frame",
            kwargs={
                "study_id": ct.public_id,
                "series_id": series.public_id,
                "instance_id": stranger_instance.public_id,
                "frame": 1,
            },
        ),
        frame_url(stranger_instance, series=series),
        frame_url(slices[0]).replace(
            str(slices[0].public_id), "00000000-0000-0000-0000-00000000abcd"
        ),
    ]
    for url in wrong:
        assert client.get(url).status_code == 404, url
    assert not reads()
    denied = reads(Outcome.DENIED)
    assert len(denied) == 3
    assert {event.detail["reason"] for event in denied} == {"instance_not_in_series"}


def test_a_series_of_another_study_is_404_and_audited(client, patient, ct, received_study):
    other = publish(received_study, patient, instances=1, rows=32, seed=7)
    other_series = other.series.get()
    client.force_login(patient)
    assert client.get(manifest_url(ct, other_series)).status_code == 404
    event = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (event.outcome, event.detail) == (Outcome.DENIED, {"reason": "series_not_in_study"})


# --- Who may see what --------------------------------------------------------------------------


def viewer_urls(study: Study, series: Series, instance: Instance) -> list[str]:
    ids = {"study_id": study.public_id, "series_id": series.public_id}
    return [
        page_url(study),
        reverse("viewer:series", kwargs=ids),
        reverse("viewer:manifest", kwargs=ids),
        reverse("viewer:series-thumbnail", kwargs=ids),
        frame_url(instance),
    ]


def test_another_patient_gets_404_everywhere_and_denied_audit_rows(
    client, other_patient, ct, series, slices
):
    PatientFactory(account=other_patient, name="ROE^OLIVE")
    client.force_login(other_patient)
    urls = viewer_urls(ct, series, slices[0])
    for url in urls:
        assert client.get(url).status_code == 404, url
    assert not reads()
    denied = AuditEvent.objects.filter(outcome=Outcome.DENIED)
    assert denied.count() == len(urls)
    assert {(event.actor_id, event.study_id) for event in denied} == {
        (str(other_patient.pk), ct.pk)
    }


def test_staff_of_an_unrelated_facility_get_404(client, stranger, slices):
    client.force_login(stranger)
    assert client.get(frame_url(slices[0])).status_code == 404
    assert reads(Outcome.DENIED)


def test_the_originating_facility_s_staff_see_frames(client, front_desk, ct, slices):
    client.force_login(front_desk)
    assert client.get(frame_url(slices[0])).status_code == 200
    page = client.get(page_url(ct)).content.decode()
    assert reverse("studies:study", args=[ct.public_id]) in page


def test_withdrawn_consent_refuses_the_very_next_frame(client, patient, clinician, receiver, ct,
                                                       slices):  # fmt: skip
    record = Patient.objects.get(pk=ct.patient_id)
    grant = grant_consent(
        GrantRequest(patient=record, purpose=Purpose.TREATMENT, scope=ConsentGrant.Scope.ALL,
                     grantee_facility=receiver),
        by=patient,
    )  # fmt: skip
    client.force_login(clinician)
    assert client.get(frame_url(slices[0])).status_code == 200
    assert client.get(page_url(ct)).status_code == 200
    withdraw_consent(grant, by=patient)
    response = client.get(frame_url(slices[1]))
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert len(reads()) == 1
    (refused,) = reads(Outcome.DENIED)
    assert (refused.actor_id, refused.study_id) == (str(clinician.pk), ct.pk)
    assert client.get(manifest_url(ct, slices[0].series)).status_code == 404


def test_a_withdrawal_between_two_segments_stops_the_read(slices):
    """The decision is asked again before each segment: a withdrawal committed after the
    first check leaves nothing rendered, and the refusal is audited."""
    answers = iter([True, False])
    access = ReadAccess(Reader(ActorKind.SYSTEM, "test"), lambda study: next(answers, False))
    with pytest.raises(FrameRefused) as refused:
        rendered_frame(slices[0], access)
    assert refused.value.reason == "withdrawn"
    assert reads(Outcome.DENIED)[0].detail == {"reason": "withdrawn"}


def test_anonymous_visitors_are_sent_to_sign_in(client, ct, series, slices):
    for url in viewer_urls(ct, series, slices[0]):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


def test_other_methods_are_refused(client, patient, ct, series, slices):
    client.force_login(patient)
    for url in viewer_urls(ct, series, slices[0]):
        assert client.post(url).status_code == 405, url
    assert not reads()


def test_an_unknown_study_is_404(client, patient):
    client.force_login(patient)
    url = reverse("viewer:study", kwargs={"study_id": "00000000-0000-0000-0000-000000000000"})
    assert client.get(url).status_code == 404


# --- Series thumbnails -------------------------------------------------------------------------


def test_the_series_thumbnail_is_its_middle_image(client, patient, ct, series, slices):
    client.force_login(patient)
    ids = {"study_id": ct.public_id, "series_id": series.public_id}
    response = client.get(reverse("viewer:series-thumbnail", kwargs=ids))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, max-age=300"
    assert max(picture(response.content).size) <= 128
    assert series_thumbnail_instance(series) == slices[SLICES // 2]
    (read,) = reads()
    assert read.target_id == str(slices[SLICES // 2].pk)


# --- The same views over another resolver (how share-link sessions reuse them) ----------------


def link_resolver(request, study, /, *, link_id: str) -> ReadAccess | HttpResponse | None:
    """Stands in for a share-link session: `good` reads, `moved` answers itself, others none."""
    if link_id == "moved":
        return HttpResponse("Verify your e-mail address first.", status=403)
    if link_id != "good":
        return None
    reader = Reader(ActorKind.SHARE_LINK, link_id, request, purpose=PurposeOfUse.TREATMENT)
    return ReadAccess(reader, lambda study: True)


urlpatterns = [
    path(
        "shared/<str:link_id>/view/",
        include((viewer_urlpatterns(link_resolver, access_policy=PUBLIC), "link-viewer")),
    ),
    *portal_urlpatterns,
]


@pytest.mark.urls(__name__)
def test_another_resolver_serves_the_same_viewer_under_its_own_urls(client, ct, series, slices):
    page = client.get(f"/shared/good/view/studies/{ct.public_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    prefix = f"/shared/good/view/studies/{ct.public_id}/series/{series.public_id}/"
    assert f'data-manifest-url="{prefix}manifest.json"' in html
    assert f'src="{prefix}thumbnail"' in html
    assert "/view/studies/" not in html.replace("/shared/good/view/studies/", "")
    manifest = client.get(f"{prefix}manifest.json").json()
    assert manifest["frame_url"] == f"{prefix}instances/{{instance}}/frames/{{frame}}/rendered"
    frame = client.get(f"{prefix}instances/{slices[0].public_id}/frames/1/rendered")
    assert frame.status_code == 200
    assert {(e.actor_kind, e.actor_id) for e in reads()} == {(ActorKind.SHARE_LINK, "good")}
    assert client.get(f"/shared/gone/view/studies/{ct.public_id}/").status_code == 404
    moved = client.get(f"{prefix}instances/{slices[0].public_id}/frames/1/rendered".replace(
        "/good/", "/moved/"))  # fmt: skip
    assert (moved.status_code, moved.content) == (403, b"Verify your e-mail address first.")


def test_frame_urls_carry_no_dicom_uid(ct, slices):
    pattern = re.compile(r"\d+(\.\d+){3,}")  # a dotted UID
    for url in viewer_urls(ct, slices[0].series, slices[0]):
        assert not pattern.search(url), url
