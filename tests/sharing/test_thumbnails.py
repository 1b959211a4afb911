"""Study thumbnails: decrypted and rendered for whoever the access decision allows, audited."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.urls import reverse
from PIL import Image

from audit.codes import Action, Outcome
from audit.models import AuditEvent
from sharing.services import publish_spooled
from studies.models import Patient, Study


@pytest.fixture
def published(received_study, store, patient) -> Study:
    study = received_study(instances=3, rows=256)
    publish_spooled(settings.PORTAL_NODE)
    Patient.objects.filter(pk=study.patient_id).update(account=patient)
    study.refresh_from_db()
    return study


def url(study: Study) -> str:
    return reverse("sharing:study-thumbnail", kwargs={"study_id": study.public_id})


def test_the_patient_sees_a_thumbnail_of_their_study(client, patient, published) -> None:
    client.force_login(patient)
    response = client.get(url(published))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, max-age=300"
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) == 128
    read = AuditEvent.objects.get(action=Action.INSTANCE_READ)
    assert (read.actor_id, read.purpose, read.study_id) == (str(patient.pk), "PATRQT", published.pk)


def test_the_originating_facility_s_staff_see_it(client, front_desk, published) -> None:
    client.force_login(front_desk)
    assert client.get(url(published)).status_code == 200


@pytest.mark.parametrize("who", ["other_patient", "stranger"])
def test_anyone_else_gets_404_and_a_denied_audit_row(client, request, who, published) -> None:
    client.force_login(request.getfixturevalue(who))
    assert client.get(url(published)).status_code == 404
    event = AuditEvent.objects.get(action=Action.INSTANCE_READ)
    assert event.outcome == Outcome.DENIED


def test_a_plain_square_stands_in_until_something_is_published(
    client, patient, received_study
) -> None:
    study = received_study(instances=1)
    Patient.objects.filter(pk=study.patient_id).update(account=patient)
    client.force_login(patient)
    response = client.get(url(study))
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    assert image.getextrema() == (17, 17)  # one dark grey, no picture of anyone
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


def test_anonymous_visitors_are_sent_to_sign_in(client, published) -> None:
    response = client.get(url(published))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_an_unknown_study_is_404(client, patient) -> None:
    client.force_login(patient)
    response = client.get("/sharing/studies/00000000-0000-0000-0000-000000000000/thumbnail")
    assert response.status_code == 404
