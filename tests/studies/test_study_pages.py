"""Staff's study list, the study page and the progress JSON that keeps its bar moving."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.codes import Action, TargetKind
from audit.models import AuditEvent
from facilities.models import Role
from studies.access import get_study_for_staff
from studies.models import Study
from tests.factories import PatientFactory, SeriesFactory, StudyFactory, make_staff

pytestmark = pytest.mark.django_db

UNTIL = datetime.date(2027, 3, 4)


@pytest.fixture
def study(origin) -> Study:
    study = StudyFactory(
        source_facility=origin,
        patient=PatientFactory(name="DOE^JANE"),
        description="CT CHEST W/O CONTRAST",
        modalities_in_study="CT\\SR",
        study_date=datetime.date(2026, 1, 2),
        number_of_series=2,
        number_of_instances=4,
        number_of_published_instances=1,
        state=Study.State.PUBLISHING,
        available_until=UNTIL,
    )
    SeriesFactory(study=study, series_number=1, description="AXIAL 5MM", number_of_instances=3)
    SeriesFactory(study=study, series_number=2, modality="SR", description="DOSE REPORT",
                  number_of_instances=1)  # fmt: skip
    return study


def list_url(**query: str) -> str:
    url = reverse("studies:study-list")
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def page_url(study: Study) -> str:
    return reverse("studies:study", kwargs={"study_id": study.public_id})


def progress_url(study: Study) -> str:
    return reverse("studies:study-progress", kwargs={"study_id": study.public_id})


def views_of(study: Study) -> int:
    return AuditEvent.objects.filter(action=Action.STUDY_VIEWED, study_id=study.pk).count()


# --- Access -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [list_url, page_url, progress_url], ids=["list", "page", "json"])
def test_it_sends_anonymous_visitors_to_sign_in(client, study, url):
    target = url() if url is list_url else url(study)
    response = client.get(target)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize("url", [page_url, progress_url], ids=["page", "json"])
def test_it_hides_a_study_from_staff_of_another_facility(client, stranger, study, url):
    client.force_login(stranger)
    assert client.get(url(study)).status_code == 404
    assert views_of(study) == 0


@pytest.mark.parametrize("url", [page_url, progress_url], ids=["page", "json"])
def test_it_hides_a_study_from_patients_and_platform_admins(
    client, patient, platform_admin, study, url
):
    for person in (patient, platform_admin):
        client.force_login(person)
        assert client.get(url(study)).status_code == 404


def test_the_list_is_for_people_with_a_role(client, patient, platform_admin, study):
    for person in (patient, platform_admin):  # platform admins see no patient's data this way
        client.force_login(person)
        assert client.get(list_url()).status_code == 403


def test_every_role_at_the_facility_sees_its_studies(client, origin, front_desk, study):
    clinician = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    for person in (front_desk, clinician):
        client.force_login(person)
        assert client.get(page_url(study)).status_code == 200
        assert client.get(progress_url(study)).status_code == 200


@pytest.mark.parametrize("url", [list_url, page_url, progress_url], ids=["list", "page", "json"])
def test_it_refuses_other_methods(client, front_desk, study, url):
    client.force_login(front_desk)
    target = url() if url is list_url else url(study)
    assert client.post(target).status_code == 405
    assert views_of(study) == 0


def test_an_unknown_or_malformed_study_id_is_not_found(client, front_desk, study):
    client.force_login(front_desk)
    unknown = uuid.uuid4()
    assert client.get(reverse("studies:study", kwargs={"study_id": unknown})).status_code == 404
    assert (
        client.get(reverse("studies:study-progress", kwargs={"study_id": unknown})).status_code
        == 404
    )
    assert client.get("/studies/not-a-uuid/").status_code == 404
    assert client.get("/studies/not-a-uuid/progress/").status_code == 404
    with pytest.raises(Http404):
        get_study_for_staff(front_desk, "not-a-uuid")


# --- The list -----------------------------------------------------------------------------


def test_it_lists_only_the_users_facilities_studies_newest_received_first(
    client, front_desk, origin, elsewhere, study
):
    newer = StudyFactory(source_facility=origin, description="MR KNEE")
    StudyFactory(source_facility=elsewhere, description="NOT OURS")
    client.force_login(front_desk)

    response = client.get(list_url())

    assert response.status_code == 200
    assert list(response.context["studies"]) == [newer, study]
    content = response.content.decode()
    assert "NOT OURS" not in content
    assert "CT CHEST W/O CONTRAST" in content
    assert "CT, SR" in content
    assert "Jane Doe" in content
    assert "Publishing" in content
    assert "1 of 4 images published" in content
    assert page_url(study) in content
    assert "data-progress-url" not in content  # the list does not poll


def test_it_names_the_patient_only_for_matched_studies(client, front_desk, origin, study):
    StudyFactory(source_facility=origin, patient=None, match=Study.Match.PENDING,
                 patient_name="QUIMBY^RICHARD")  # fmt: skip
    client.force_login(front_desk)
    content = client.get(list_url()).content.decode()
    assert "Jane Doe" in content
    assert "Waiting for a person to match it" in content
    assert "QUIMBY" not in content.upper()


def test_it_shows_the_day_a_study_stays_available_until_and_a_legal_hold(client, front_desk, study):
    Study.objects.filter(pk=study.pk).update(legal_hold=True)
    client.force_login(front_desk)
    content = client.get(list_url()).content.decode()
    assert "March 4, 2027" in content
    assert "Legal hold" in content


def test_it_says_so_when_nothing_was_received(client, front_desk, elsewhere):
    StudyFactory(source_facility=elsewhere)
    client.force_login(front_desk)
    response = client.get(list_url())
    assert response.status_code == 200
    assert "No study has been received yet." in response.content.decode()


def test_it_shows_fifty_studies_a_page(client, front_desk, origin):
    StudyFactory.create_batch(51, source_facility=origin)
    client.force_login(front_desk)

    first = client.get(list_url())
    second = client.get(list_url(page="2"))
    beyond = client.get(list_url(page="99"))
    nonsense = client.get(list_url(page="x"))

    assert len(first.context["studies"]) == 50
    assert len(second.context["studies"]) == 1
    assert 'rel="next"' in first.content.decode()
    assert beyond.context["page"].number == 2
    assert nonsense.context["page"].number == 1


def test_the_list_asks_the_same_number_of_queries_for_3_or_30_studies(client, front_desk, origin):
    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(list_url())
        assert response.status_code == 200
        return len(captured)

    client.force_login(front_desk)
    client.get(list_url())  # the session's first request also records when it began
    StudyFactory.create_batch(3, source_facility=origin)
    with_three = queries_for_the_list()
    StudyFactory.create_batch(27, source_facility=origin, patient=None, match=Study.Match.PENDING)
    with_thirty = queries_for_the_list()

    assert with_three == with_thirty
    # Session, user, MFA check, navigation, the user's facilities, the count and the page.
    assert with_thirty == 8


def test_the_staff_home_links_to_the_list(client, front_desk):
    client.force_login(front_desk)
    response = client.get(reverse("portal:staff-home"))
    assert list_url() in response.content.decode()


# --- The study page -----------------------------------------------------------------------


def test_the_study_page_shows_the_study_and_its_progress(client, front_desk, study):
    client.force_login(front_desk)

    response = client.get(page_url(study))

    assert response.status_code == 200
    content = response.content.decode()
    for text in ("CT CHEST W/O CONTRAST", "Jan. 2, 2026", "CT, SR", "Jane Doe",
                 "Riverside General Hospital", "AXIAL 5MM", "DOSE REPORT", "Publishing",
                 "1 of 4 images published", "March 4, 2027", "No legal hold"):  # fmt: skip
        assert text in content, text
    assert 'max="4" value="1"' in content
    assert f'data-progress-url="{progress_url(study)}"' in content
    assert 'aria-live="polite"' in content
    assert "/static/js/progress." in content


def test_opening_the_study_page_is_audited(client, front_desk, study, origin):
    client.force_login(front_desk)
    client.get(page_url(study))

    event = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (event.actor_id, event.facility_id, event.target_kind, event.target_id) == (
        str(front_desk.pk), origin.pk, TargetKind.STUDY, str(study.pk))  # fmt: skip
    assert (event.patient_id, event.study_id) == (study.patient_id, study.pk)


def test_a_study_without_a_patient_has_a_page_too(client, front_desk, origin):
    waiting = StudyFactory(source_facility=origin, patient=None, match=Study.Match.PENDING,
                           patient_name="QUIMBY^RICHARD", number_of_instances=0)  # fmt: skip
    client.force_login(front_desk)

    response = client.get(page_url(waiting))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Waiting for a person to match it" in content
    assert "QUIMBY" not in content.upper()
    assert "No images received yet." in content
    assert "No series received yet." in content
    event = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (event.patient_id, event.study_id) == (None, waiting.pk)


def test_a_deleted_study_says_so_instead_of_showing_a_bar(client, front_desk, study):
    Study.objects.filter(pk=study.pk).update(
        state=Study.State.SHREDDED, number_of_published_instances=4
    )
    client.force_login(front_desk)
    content = client.get(page_url(study)).content.decode()
    assert "Deleted: the images can no longer be opened." in content
    assert 'value="4" hidden' in content
    assert "No legal hold" not in content


def test_the_study_page_shows_a_legal_hold(client, front_desk, study):
    Study.objects.filter(pk=study.pk).update(legal_hold=True)
    client.force_login(front_desk)
    content = client.get(page_url(study)).content.decode()
    assert "Legal hold" in content
    assert "until the hold is lifted" in content


# --- The progress JSON --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "published", "total", "label", "percent", "done"),
    [
        (Study.State.RECEIVING, 0, 0, "Receiving", 0, False),
        (Study.State.RECEIVING, 0, 5, "Receiving", 0, False),
        (Study.State.PUBLISHING, 1, 4, "Publishing", 25, False),
        (Study.State.PUBLISHING, 2, 3, "Publishing", 66, False),
        (Study.State.AVAILABLE, 4, 4, "Available", 100, True),
        (Study.State.SHREDDED, 4, 4, "Deleted", 100, True),
    ],
)
def test_the_progress_json_for_each_state(
    client, front_desk, study, state, published, total, label, percent, done
):
    Study.objects.filter(pk=study.pk).update(
        state=state, number_of_published_instances=published, number_of_instances=total
    )
    client.force_login(front_desk)

    response = client.get(progress_url(study))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "state": state,
        "label": label,
        "published": published,
        "total": total,
        "percent": percent,
        "available_until": "2027-03-04",
        "done": done,
    }


def test_the_progress_json_carries_no_phi_is_not_cached_and_not_audited(client, front_desk, study):
    client.force_login(front_desk)
    before = AuditEvent.objects.count()

    response = client.get(progress_url(study))

    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    for phi in ("DOE", "Jane", "CT CHEST", study.patient_id_value, study.study_instance_uid):
        assert phi not in body
    assert AuditEvent.objects.count() == before
