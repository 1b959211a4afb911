"""The patient's share-link pages (make, list, end), their access log, and the front desk's."""

from __future__ import annotations

import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from audit.services import audit_record
from consent.models import ConsentGrant, Purpose
from consent.services import GrantRequest, grant_consent
from sharing.links import revoke_share_link
from sharing.models import ShareLink
from studies.models import IdentityVerification, Study
from tests.factories import PatientFactory, StudyFactory
from tests.sharing.conftest import LINK_RECIPIENT

pytestmark = pytest.mark.django_db

NEW = reverse("links:new")
LIST = reverse("links:list")
LOG = reverse("links:access-log")


def form_data(study: Study, **changes) -> dict:
    data = {
        "studies": [str(study.public_id)],
        "recipient_email": LINK_RECIPIENT,
        "recipient_facility": "not-listed",
        "recipient_facility_name": "Dr Who's Clinic",
        "purpose": Purpose.SECOND_OPINION,
        "days": "14",
        "notify_on_open": "on",
        "notify_on_download": "on",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


# --- Making a link -------------------------------------------------------------------------------


def test_the_form_offers_the_patients_available_studies(
    client, patient, patient_record, shared_study, second_study, origin
):
    StudyFactory(patient=patient_record, source_facility=origin, description="STILL ARRIVING",
                 state=Study.State.PUBLISHING)  # fmt: skip
    StudyFactory(patient=PatientFactory(), source_facility=origin, description="NOT MINE",
                 state=Study.State.AVAILABLE)  # fmt: skip
    client.force_login(patient)
    response = client.get(NEW)
    page = response.content.decode()
    assert response.status_code == 200
    assert "CT CHEST W/O CONTRAST" in page
    assert "MR KNEE LEFT" in page
    assert "STILL ARRIVING" not in page
    assert "NOT MINE" not in page
    # Research and education are not offered: they need de-identified copies.
    assert 'value="HRESCH"' not in page
    assert 'value="HEDUC"' not in page
    assert 'value="CLINTRCH"' in page


def test_a_study_page_can_preselect_its_study(client, patient, patient_record, shared_study):
    client.force_login(patient)
    response = client.get(NEW, {"study": str(shared_study.public_id)})
    assert f'value="{shared_study.public_id}"' in response.content.decode()
    assert "checked" in response.content.decode()


def test_review_says_what_will_happen_and_makes_nothing(
    client, patient, patient_record, shared_study
):
    client.force_login(patient)
    response = client.post(NEW, form_data(shared_study))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Check and confirm" in page
    assert LINK_RECIPIENT in page
    assert "second opinion" in page
    assert ShareLink.objects.count() == 0
    assert ConsentGrant.objects.count() == 0
    assert mail.outbox == []


def test_confirming_makes_the_link_e_mails_it_and_shows_it_once(
    client, patient, patient_record, shared_study
):
    client.force_login(patient)
    review = client.post(NEW, form_data(shared_study))
    nonce = review.context["nonce"]
    response = client.post(NEW, {**form_data(shared_study), "action": "confirm", "nonce": nonce})
    assert response.status_code == 201
    link = ShareLink.objects.get()
    url = response.context["url"]
    assert url.startswith("http://testserver/s/")
    token = url.rsplit("/", 1)[1]
    assert link.token_hash != token
    page = response.content.decode()
    assert url in page
    assert "<svg" in page  # the QR code, drawn on the server
    assert (
        response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]
    )
    [message] = mail.outbox
    assert message.to == [LINK_RECIPIENT]
    assert url in message.body
    for detail in ("CT", "CHEST", "Pat", "Doe", "DOE", "RGH-0042", shared_study.study_instance_uid):
        # The token may spell anything: look around the link, not inside it.
        assert detail not in message.body.replace(url, "")
        assert detail not in message.subject
    assert link.notify_on_open
    assert link.notify_on_download


def test_sending_the_confirmation_twice_makes_one_link(
    client, patient, patient_record, shared_study
):
    client.force_login(patient)
    nonce = client.post(NEW, form_data(shared_study)).context["nonce"]
    confirm = {**form_data(shared_study), "action": "confirm", "nonce": nonce}
    assert client.post(NEW, confirm).status_code == 201
    again = client.post(NEW, confirm)
    assert again.status_code == 302
    assert again.url == LIST
    assert ShareLink.objects.count() == 1


def test_a_forged_nonce_makes_nothing(client, patient, patient_record, shared_study):
    client.force_login(patient)
    client.post(NEW, form_data(shared_study))
    response = client.post(NEW, {**form_data(shared_study), "action": "confirm", "nonce": "x"})
    assert response.status_code == 302
    assert ShareLink.objects.count() == 0


def test_the_switches_are_kept(client, patient, patient_record, shared_study):
    client.force_login(patient)
    data = form_data(shared_study, notify_on_open=None, notify_on_download=None)
    nonce = client.post(NEW, data).context["nonce"]
    client.post(NEW, {**data, "action": "confirm", "nonce": nonce})
    link = ShareLink.objects.get()
    assert not link.notify_on_open
    assert not link.notify_on_download


def test_a_facility_from_the_directory(client, patient, patient_record, shared_study, receiver):
    client.force_login(patient)
    data = form_data(shared_study, recipient_facility=str(receiver.pk), recipient_facility_name="x")
    review = client.post(NEW, data)
    assert "also through its own systems" in review.content.decode()
    client.post(NEW, {**data, "action": "confirm", "nonce": review.context["nonce"]})
    link = ShareLink.objects.get()
    assert link.recipient_facility == receiver
    assert link.recipient_facility_name == ""
    assert link.grant.grantee_facility == receiver


def test_the_edit_button_goes_back_to_the_form_as_filled(
    client, patient, patient_record, shared_study
):
    client.force_login(patient)
    response = client.post(NEW, {**form_data(shared_study), "action": "edit"})
    assert response.status_code == 200
    assert LINK_RECIPIENT in response.content.decode()
    assert ShareLink.objects.count() == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"studies": None}, "Choose at least one study to share."),
        ({"recipient_email": "nobody"}, "Enter a complete e-mail address"),
        ({"recipient_email": ""}, "Enter the clinician&#x27;s e-mail address."),
        ({"recipient_facility": ""}, "Choose the clinician"),
        ({"recipient_facility": "987654"}, "Choose a facility from the list"),
        ({"recipient_facility_name": ""}, "Type the name of the facility."),
        ({"purpose": "HRESCH"}, "Choose what the images are for."),
        ({"purpose": ""}, "Choose what the images are for."),
        ({"days": "5"}, "Choose how long the link works"),
        ({"days": "abc"}, "Choose how long the link works"),
        ({"days": "-14"}, "Choose how long the link works"),
    ],
)
def test_bad_input_gets_a_clear_error_and_makes_nothing(
    client, patient, patient_record, shared_study, changes, message
):
    client.force_login(patient)
    for action in ("review", "confirm"):
        response = client.post(NEW, {**form_data(shared_study, **changes), "action": action})
        assert response.status_code == 400
        assert message in response.content.decode()
    assert ShareLink.objects.count() == 0
    assert ConsentGrant.objects.count() == 0


@pytest.mark.parametrize("study_id", ["not-a-uuid", str(uuid.uuid4())])
def test_a_study_id_not_offered_is_404(client, patient, patient_record, shared_study, study_id):
    client.force_login(patient)
    response = client.post(NEW, form_data(shared_study, studies=[study_id]))
    assert response.status_code == 404


def test_another_patients_study_is_404(client, patient, patient_record, shared_study, origin):
    foreign = StudyFactory(patient=PatientFactory(), source_facility=origin,
                           state=Study.State.AVAILABLE)  # fmt: skip
    client.force_login(patient)
    data = form_data(shared_study, studies=[str(shared_study.public_id), str(foreign.public_id)])
    assert client.post(NEW, data).status_code == 404
    assert ShareLink.objects.count() == 0


def test_the_mail_server_failing_still_shows_the_link(
    client, patient, patient_record, shared_study
):
    client.force_login(patient)
    nonce = client.post(NEW, form_data(shared_study)).context["nonce"]
    with mock.patch("sharing.links.EmailMultiAlternatives.send", side_effect=OSError("down")):
        response = client.post(
            NEW, {**form_data(shared_study), "action": "confirm", "nonce": nonce}
        )
    assert response.status_code == 201
    assert "could not be sent" in response.content.decode()
    assert response.context["url"] in response.content.decode()


def test_an_account_without_a_record_is_told_so(client, other_patient):
    client.force_login(other_patient)
    for url in (NEW, LIST, LOG):
        response = client.get(url)
        assert response.status_code == 200
        assert "record isn't linked yet" in response.content.decode()


def test_the_pages_need_a_sign_in(client):
    for url in (NEW, LIST, LOG, reverse("links:end", args=[uuid.uuid4()])):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))


def test_wrong_methods_are_refused(client, patient, patient_record):
    client.force_login(patient)
    assert client.post(LIST).status_code == 405
    assert client.post(LOG).status_code == 405
    assert client.put(NEW).status_code == 405


# --- The list and ending a link ------------------------------------------------------------------


def test_the_list_shows_each_links_state(client, make_link, patient, patient_record):
    make_link(recipient_email="active@example.org")
    ended, _ = make_link(recipient_email="ended@example.org")
    revoke_share_link(ended, patient)
    opened, _ = make_link(recipient_email="opened@example.org")
    ShareLink.objects.filter(pk=opened.pk).update(first_opened_at=timezone.now())
    client.force_login(patient)
    response = client.get(LIST)
    page = response.content.decode()
    assert response.status_code == 200
    rows = {row.link.recipient_email: row.state for row in response.context["rows"]}
    assert rows == {
        "active@example.org": "active",
        "ended@example.org": "ended",
        "opened@example.org": "opened",
    }
    assert page.count("End this link") == 2
    assert AuditEvent.objects.filter(action=Action.CONSENT_PAGE_VIEWED,
                                     detail__page="share_links").exists()  # fmt: skip


def test_the_list_shows_no_other_patients_links(client, make_link, other_patient, origin):
    from tests.factories import PatientFactory as Patients

    make_link()
    Patients(account=other_patient)
    client.force_login(other_patient)
    response = client.get(LIST)
    assert response.context["rows"] == []


def test_ending_a_link_asks_first_then_ends_it(client, make_link, patient):
    link, _ = make_link()
    client.force_login(patient)
    url = reverse("links:end", args=[link.public_id])
    page = client.get(url)
    assert page.status_code == 200
    assert "End the link for" in page.content.decode()
    link.refresh_from_db()
    assert link.revoked_at is None
    response = client.post(url)
    assert response.status_code == 302
    assert response.url == LIST
    link.refresh_from_db()
    assert link.revoked_at is not None
    assert link.revoked_by == patient


def test_ending_an_ended_link_changes_nothing(client, make_link, patient):
    link, _ = make_link()
    revoke_share_link(link, patient)
    link.refresh_from_db()
    client.force_login(patient)
    response = client.post(reverse("links:end", args=[link.public_id]), follow=True)
    assert "already ended" in response.content.decode()
    assert ShareLink.objects.get().revoked_at == link.revoked_at
    assert AuditEvent.objects.filter(action=Action.LINK_REVOKED).count() == 1


def test_another_patient_cannot_end_the_link(client, make_link, other_patient, front_desk):
    link, _ = make_link()
    PatientFactory(account=other_patient)
    for person in (other_patient, front_desk):
        client.force_login(person)
        assert client.post(reverse("links:end", args=[link.public_id])).status_code == 404
    link.refresh_from_db()
    assert link.revoked_at is None


def test_ending_an_unknown_link_is_404(client, patient, patient_record):
    client.force_login(patient)
    assert client.post(reverse("links:end", args=[uuid.uuid4()])).status_code == 404


# --- The access log -------------------------------------------------------------------------------


def read_event(link: ShareLink, study: Study, action: str = Action.INSTANCE_READ, **extra):
    return audit_record(
        action=action,
        actor_kind=ActorKind.SHARE_LINK,
        actor_id=link.pk,
        facility_id=link.recipient_facility_id,
        target_kind=TargetKind.INSTANCE,
        target_id=1,
        patient_id=study.patient_id,
        study_id=study.pk,
        address="203.0.113.7",
        **extra,
    )


def test_the_log_shows_who_opened_what_newest_first(
    client, make_link, patient, patient_record, shared_study, receiver
):
    link, _ = make_link(recipient_facility=receiver, recipient_facility_name="")
    read_event(link, shared_study, Action.LINK_OPENED)
    for _ in range(3):
        read_event(link, shared_study)
    read_event(link, shared_study, Action.STUDY_DOWNLOADED)
    client.force_login(patient)
    response = client.get(LOG)
    assert response.status_code == 200
    entries = response.context["entries"]
    assert [entry.what_text for entry in entries][:3] == [
        "downloaded the images",
        "opened 3 images",
        "opened the link (entered the code sent to them)",
    ]
    assert entries[0].who == f"{LINK_RECIPIENT} (Lakeside Imaging Center), with your share link"
    assert entries[0].study.startswith("CT CHEST W/O CONTRAST")
    assert entries[0].address == "203.0.113.7"
    page = response.content.decode()
    assert "opened 3 images".capitalize() in page
    assert shared_study.study_instance_uid not in page
    assert AuditEvent.objects.filter(action=Action.ACCESS_LOG_VIEWED,
                                     patient_id=patient_record.pk).exists()  # fmt: skip


def test_the_log_shows_wrong_codes_but_not_the_patients_own_visits(
    client, make_link, patient, patient_record, shared_study
):
    link, _ = make_link()
    read_event(link, shared_study, Action.LINK_CODE_FAILED, outcome=Outcome.DENIED)
    audit_record(action=Action.STUDY_VIEWED, actor_kind=ActorKind.USER, actor_id=patient.pk,
                 patient_id=patient_record.pk, study_id=shared_study.pk)  # fmt: skip
    client.force_login(patient)
    entries = client.get(LOG).context["entries"]
    whats = [entry.what_text for entry in entries]
    assert "entered a wrong or expired code" in whats
    assert "opened the study's details" not in whats
    assert [entry.denied for entry in entries if "wrong" in entry.what_text] == [True]


def test_the_log_names_facilities_for_staff_and_systems(
    client, patient, patient_record, shared_study, receiver, origin
):
    audit_record(action=Action.INSTANCE_READ, actor_kind=ActorKind.API_TOKEN, actor_id=5,
                 facility_id=receiver.pk, patient_id=patient_record.pk,
                 study_id=shared_study.pk)  # fmt: skip
    audit_record(action=Action.STUDY_VIEWED, actor_kind=ActorKind.USER, actor_id=999,
                 facility_id=origin.pk, patient_id=patient_record.pk,
                 study_id=shared_study.pk)  # fmt: skip
    client.force_login(patient)
    who = [entry.who for entry in client.get(LOG).context["entries"]]
    assert who == [
        "Staff of Riverside General Hospital",
        "Lakeside Imaging Center's computer systems",
    ]


def test_the_log_shows_nothing_of_another_patient(
    client, make_link, patient, other_patient, shared_study, origin
):
    link, _ = make_link()
    read_event(link, shared_study)
    other_record = PatientFactory(account=other_patient)
    other_study = StudyFactory(patient=other_record, source_facility=origin, description="SECRET")
    audit_record(action=Action.INSTANCE_READ, actor_kind=ActorKind.SHARE_LINK, actor_id=link.pk,
                 patient_id=other_record.pk, study_id=other_study.pk)  # fmt: skip
    client.force_login(other_patient)
    entries = client.get(LOG).context["entries"]
    assert len(entries) == 1
    # A row about them that names this patient's link shows no detail of that link.
    assert entries[0].who == "Someone with a share link"
    assert entries[0].study.startswith("SECRET")
    client.force_login(patient)
    page = client.get(LOG).content.decode()
    assert "SECRET" not in page


def test_the_log_is_paginated(client, make_link, patient, shared_study, settings, monkeypatch):
    from sharing import link_views

    monkeypatch.setattr(link_views, "ACCESS_LOG_PAGE_SIZE", 2)
    link, _ = make_link()
    for action in (Action.LINK_OPENED, Action.STUDY_DOWNLOADED, Action.SERIES_VIEWED):
        read_event(link, shared_study, action)
    client.force_login(patient)
    first = client.get(LOG)
    assert [e.what_text for e in first.context["entries"]] == [
        "viewed a series",
        "downloaded the images",
    ]
    second = client.get(LOG, {"page": "2"})
    assert [e.what_text for e in second.context["entries"]] == [
        "opened the link (entered the code sent to them)"
    ]
    for bad in ("abc", "-1", "99999", ""):
        assert client.get(LOG, {"page": bad}).status_code == 200


# --- The front desk -------------------------------------------------------------------------------


@pytest.fixture
def consent_to_receiver(patient, patient_record, receiver):
    return grant_consent(
        GrantRequest(patient=patient_record, purpose=Purpose.TREATMENT,
                     scope=ConsentGrant.Scope.ALL, grantee_facility=receiver),
        by=patient,
    )  # fmt: skip


@pytest.fixture
def identity_checked(patient_record, origin, front_desk):
    return IdentityVerification.objects.create(
        patient=patient_record,
        facility=origin,
        verified_by=front_desk,
        method=IdentityVerification.Method.IN_PERSON,
        document_type=IdentityVerification.Document.PASSPORT,
        verified_at=timezone.now() - timedelta(minutes=5),
    )


def desk_urls(origin, patient_record):
    args = [origin.pk, patient_record.public_id]
    return reverse("links:front-desk-links", args=args), reverse("links:front-desk-new", args=args)


def test_the_front_desk_makes_a_link_for_the_patient(
    client, front_desk, origin, receiver, patient_record, shared_study,
    consent_to_receiver, identity_checked,
):  # fmt: skip
    links_url, new_url = desk_urls(origin, patient_record)
    client.force_login(front_desk)
    page = client.get(links_url)
    assert page.status_code == 200
    assert "Make a share link" in page.content.decode()
    data = form_data(shared_study, recipient_facility=str(receiver.pk), purpose=Purpose.TREATMENT)
    review = client.post(new_url, data)
    assert review.status_code == 200, review.content
    assert "It uses the consent the patient already gave" in review.content.decode()
    assert "The patient will get an e-mail" in review.content.decode()
    created = client.post(new_url, {**data, "action": "confirm", "nonce": review.context["nonce"]})
    assert created.status_code == 201
    link = ShareLink.objects.get()
    assert link.grant == consent_to_receiver
    assert link.created_by == front_desk
    [message] = mail.outbox
    assert "Riverside General Hospital" in message.body
    # The desk ends it again when the patient asks.
    end_url = reverse("links:front-desk-end", args=[origin.pk, patient_record.public_id,
                                                    link.public_id])  # fmt: skip
    assert client.post(end_url).status_code == 302
    link.refresh_from_db()
    assert link.revoked_by == front_desk


def test_the_front_desk_checks_identity_before_the_review(
    client, front_desk, origin, receiver, patient_record, shared_study, consent_to_receiver
):
    links_url, new_url = desk_urls(origin, patient_record)
    client.force_login(front_desk)
    assert (
        "Check the patient's identity on their record first"
        in client.get(links_url).content.decode()
    )
    data = form_data(shared_study, recipient_facility=str(receiver.pk), purpose=Purpose.TREATMENT)
    response = client.post(new_url, data)
    assert response.status_code == 400
    assert "Check the patient&#x27;s identity first" in response.content.decode()
    assert ShareLink.objects.count() == 0


def test_the_front_desk_cannot_give_consent_for_the_patient(
    client, front_desk, origin, receiver, patient_record, shared_study, identity_checked
):
    _, new_url = desk_urls(origin, patient_record)
    client.force_login(front_desk)
    data = form_data(shared_study, recipient_facility=str(receiver.pk), purpose=Purpose.TREATMENT)
    response = client.post(new_url, data)
    assert response.status_code == 400
    assert "signed authorization" in response.content.decode()
    assert ConsentGrant.objects.count() == 0


def test_the_front_desk_shares_only_what_its_facility_holds(
    client, front_desk, origin, elsewhere, patient_record, shared_study, identity_checked
):
    held_elsewhere = StudyFactory(
        patient=patient_record,
        source_facility=elsewhere,
        description="HELD ELSEWHERE",
        state=Study.State.AVAILABLE,
    )
    _, new_url = desk_urls(origin, patient_record)
    client.force_login(front_desk)
    assert "HELD ELSEWHERE" not in client.get(new_url).content.decode()
    assert client.post(new_url, form_data(held_elsewhere)).status_code == 404


def test_the_front_desk_pages_refuse_others(
    client, origin, patient_record, clinician, stranger, patient, receiver
):
    from facilities.models import Role
    from tests.factories import make_staff

    links_url, new_url = desk_urls(origin, patient_record)
    origin_clinician = make_staff(origin, Role.CLINICIAN, email="doc@riverside.example.org")
    for person, status in (
        (stranger, 404),
        (clinician, 404),
        (origin_clinician, 403),
        (patient, 404),
    ):
        client.force_login(person)
        assert client.get(links_url).status_code == status, person
        assert client.post(new_url, {}).status_code == status, person
    client.logout()
    assert client.get(links_url).status_code == 302


def test_the_front_desk_sees_an_unknown_patient_as_404(client, front_desk, origin):
    client.force_login(front_desk)
    url = reverse("links:front-desk-links", args=[origin.pk, uuid.uuid4()])
    assert client.get(url).status_code == 404


def test_the_front_desk_cannot_end_links_to_other_facilities_studies(
    client, front_desk, origin, elsewhere, patient, patient_record, make_link
):
    held_elsewhere = StudyFactory(patient=patient_record, source_facility=elsewhere,
                                  state=Study.State.AVAILABLE)  # fmt: skip
    link, _ = make_link(studies=[held_elsewhere])
    client.force_login(front_desk)
    links_url, _ = desk_urls(origin, patient_record)
    assert client.get(links_url).context["rows"] == []
    url = reverse(
        "links:front-desk-end", args=[origin.pk, patient_record.public_id, link.public_id]
    )
    assert client.post(url).status_code == 404
    link.refresh_from_db()
    assert link.revoked_at is None


def test_two_tabs_can_each_confirm_their_link(client, patient, patient_record, shared_study):
    client.force_login(patient)
    first = client.post(NEW, form_data(shared_study)).context["nonce"]
    second_data = form_data(shared_study, recipient_email="other@example.org")
    second = client.post(NEW, second_data).context["nonce"]
    assert (
        client.post(NEW, {**second_data, "action": "confirm", "nonce": second}).status_code == 201
    )
    confirm_first = {**form_data(shared_study), "action": "confirm", "nonce": first}
    assert client.post(NEW, confirm_first).status_code == 201
    assert ShareLink.objects.count() == 2
