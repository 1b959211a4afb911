"""The patient's own studies: the list, a study with its series, and its progress JSON."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.codes import Action, TargetKind
from audit.models import AuditEvent
from studies.models import Study
from tests.factories import PatientFactory, SeriesFactory, StudyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(patient_record, origin) -> Study:
    study = StudyFactory(
        source_facility=origin,
        patient=patient_record,
        description="CT CHEST W/O CONTRAST",
        modalities_in_study="CT",
        study_date=datetime.date(2026, 1, 2),
        number_of_series=1,
        number_of_instances=4,
        number_of_published_instances=2,
        state=Study.State.PUBLISHING,
    )
    SeriesFactory(study=study, description="AXIAL 5MM", body_part="CHEST", number_of_instances=4)
    return study


@pytest.fixture
def foreign_study(origin) -> Study:
    return StudyFactory(source_facility=origin, patient=PatientFactory(), description="MR KNEE")


# --- The list ------------------------------------------------------------------------------------


def test_it_lists_the_patients_studies_newest_first(client, patient, patient_record, origin, study):
    older = StudyFactory(
        source_facility=origin,
        patient=patient_record,
        description="",
        study_date=datetime.date(2024, 5, 6),
        state=Study.State.AVAILABLE,
    )
    SeriesFactory(study=older, body_part="KNEE")
    StudyFactory(source_facility=origin, patient=PatientFactory(), description="NOT MINE")
    client.force_login(patient)

    response = client.get(reverse("studies:mine"))

    assert response.status_code == 200
    assert [s["public_id"] for s in response.context["studies"]] == [
        study.public_id,
        older.public_id,
    ]
    body = response.content.decode()
    assert "CT CHEST W/O CONTRAST" in body
    assert "Knee" in body  # no description: the body part stands in
    assert "Riverside General Hospital" in body
    assert "NOT MINE" not in body
    event = AuditEvent.objects.get(action=Action.PATIENT_STUDIES_LISTED)
    assert event.patient_id == patient_record.pk
    assert event.actor_id == str(patient.pk)


def test_it_leaves_out_studies_waiting_for_the_front_desk(client, patient, patient_record, origin):
    StudyFactory(source_facility=origin, patient=patient_record, match=Study.Match.PENDING)
    client.force_login(patient)

    assert client.get(reverse("studies:mine")).context["studies"] == []


def test_it_sends_an_account_without_records_to_the_empty_home(client, other_patient):
    client.force_login(other_patient)

    response = client.get(reverse("studies:mine"))

    assert response.status_code == 302
    assert response.url == reverse("portal:patient-home")


def test_the_patient_home_leads_a_linked_patient_to_their_studies(client, patient, patient_record):
    client.force_login(patient)

    response = client.get(reverse("portal:patient-home"))

    assert response.status_code == 302
    assert response.url == reverse("studies:mine")


def test_it_sends_anonymous_visitors_to_sign_in(client):
    response = client.get(reverse("studies:mine"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_it_refuses_other_methods(client, patient, patient_record):
    client.force_login(patient)

    assert client.post(reverse("studies:mine")).status_code == 405


def _list_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("studies:mine"))
    assert response.status_code == 200
    return len(queries)


def test_the_list_asks_the_same_number_of_queries_for_5_or_50_studies(
    client, patient, patient_record, origin, elsewhere
):
    def add(count: int) -> None:
        for n in range(count):
            study = StudyFactory(
                source_facility=origin if n % 2 else elsewhere,
                patient=patient_record,
                study_date=datetime.date(2020, 1, 1) + datetime.timedelta(days=n),
            )
            SeriesFactory(study=study, body_part="CHEST")

    client.force_login(patient)
    add(5)
    _list_queries(client)  # the first request of a session also reads and updates the session
    few = _list_queries(client)
    add(45)
    many = _list_queries(client)

    assert len(client.get(reverse("studies:mine")).context["studies"]) == 50
    assert few == many


# --- A study -------------------------------------------------------------------------------------


def test_it_shows_the_patients_study_with_its_series(client, patient, study):
    client.force_login(patient)

    response = client.get(reverse("studies:patient-study", args=[study.public_id]))

    assert response.status_code == 200
    body = response.content.decode()
    assert "AXIAL 5MM" in body
    assert "2 of 4 images published" in body
    assert reverse("studies:patient-study-progress", args=[study.public_id]) in body
    assert study.study_instance_uid not in body
    event = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (event.target_kind, event.target_id) == (TargetKind.STUDY, str(study.pk))
    assert event.patient_id == study.patient_id


@pytest.mark.parametrize("name", ["studies:patient-study", "studies:patient-study-progress"])
def test_another_patients_study_is_404_and_not_audited(
    client, patient, patient_record, foreign_study, name
):
    client.force_login(patient)

    response = client.get(reverse(name, args=[foreign_study.public_id]))

    assert response.status_code == 404
    assert not AuditEvent.objects.filter(action=Action.STUDY_VIEWED).exists()


@pytest.mark.parametrize("name", ["studies:patient-study", "studies:patient-study-progress"])
def test_staff_do_not_reach_a_patients_study_through_the_patient_pages(
    client, front_desk, study, name
):
    client.force_login(front_desk)

    assert client.get(reverse(name, args=[study.public_id])).status_code == 404


def test_an_unknown_study_is_404(client, patient, patient_record):
    client.force_login(patient)

    assert client.get(reverse("studies:patient-study", args=[uuid.uuid4()])).status_code == 404


def test_the_study_page_refuses_other_methods(client, patient, study):
    client.force_login(patient)

    assert client.post(reverse("studies:patient-study", args=[study.public_id])).status_code == 405


def test_the_progress_json_answers_like_the_staff_one(client, patient, study):
    client.force_login(patient)

    response = client.get(reverse("studies:patient-study-progress", args=[study.public_id]))

    assert response.status_code == 200
    assert response.json() == {
        "state": "publishing",
        "label": "Publishing",
        "published": 2,
        "total": 4,
        "percent": 50,
        "available_until": study.available_until.isoformat(),
        "done": False,
    }
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
