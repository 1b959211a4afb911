"""The patient's consent page: the grid, the history, giving and withdrawing consent."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.codes import Action
from audit.models import AuditEvent
from consent.decision import FacilityActor, decide
from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from consent.services import GrantRequest, grant_consent, withdraw_consent
from studies.models import Study
from tests.factories import PatientFactory, StudyFactory

PAGE = reverse("consent:consents")
GIVE = reverse("consent:grant-new")


def withdraw_url(grant: ConsentGrant) -> str:
    return reverse("consent:grant-withdraw", args=[grant.public_id])


@pytest.fixture
def ct(patient_record, origin) -> Study:
    today = timezone.localdate()
    return StudyFactory(
        patient=patient_record,
        source_facility=origin,
        modalities_in_study="CT",
        description="CT CHEST",
        study_date=today - timedelta(days=30),
        state=Study.State.AVAILABLE,
        available_until=today + timedelta(days=365),
    )


@pytest.fixture
def signed_in(client, patient, patient_record):
    client.force_login(patient)
    return client


@pytest.fixture
def grant(patient, patient_record, receiver, ct) -> ConsentGrant:
    return grant_consent(
        GrantRequest(
            patient=patient_record,
            grantee_facility=receiver,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
        ),
        by=patient,
    )


def give(client, facility, *, action="confirm", **fields) -> object:
    data = {
        "facility": facility.pk,
        "purpose": Purpose.TREATMENT,
        "scope": ConsentGrant.Scope.ALL,
        "action": action,
        **fields,
    }
    return client.post(GIVE, data)


# --- The page -----------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_sign_in(client, db):
    for url in (PAGE, GIVE):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))


def test_it_says_plainly_when_the_record_is_not_linked(client, other_patient):
    client.force_login(other_patient)
    response = client.get(PAGE)
    assert response.status_code == 200
    assert "record isn" in response.content.decode()
    assert "front desk" in response.content.decode()
    assert client.get(GIVE).status_code == 200


def test_it_shows_the_grid_what_each_grant_covers_and_the_history(signed_in, grant, ct):
    response = signed_in.get(PAGE)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Lakeside Imaging Center" in body
    assert "All your studies, including future ones (1 now)" in body
    assert "Allowed until" in body
    assert "Gave consent: Lakeside Imaging Center, for treatment" in body
    assert "By You" in body
    assert withdraw_url(grant) in body


def test_it_audits_opening_the_page(signed_in, patient_record):
    signed_in.get(PAGE)
    event = AuditEvent.objects.get(action=Action.CONSENT_PAGE_VIEWED)
    assert event.patient_id == patient_record.pk


def test_it_refuses_other_methods(signed_in, grant):
    assert signed_in.post(PAGE).status_code == 405
    assert signed_in.delete(GIVE).status_code == 405
    assert signed_in.put(withdraw_url(grant)).status_code == 405


# --- Giving consent -----------------------------------------------------------------------------


def test_it_offers_every_facility_of_the_directory(signed_in, origin, receiver, elsewhere):
    body = signed_in.get(GIVE).content.decode()
    for facility in (origin, receiver, elsewhere):
        assert facility.name in body
    assert "Research and education always get de-identified copies" in body


def test_it_shows_what_will_happen_before_giving(signed_in, receiver, ct):
    response = give(signed_in, receiver, action="review")
    assert response.status_code == 200
    body = response.content.decode()
    assert "will be able to search for and open" in body
    assert "Lakeside Imaging Center" in body
    assert "CT CHEST" in body
    assert not ConsentGrant.objects.exists()


def test_it_gives_consent_on_confirmation(signed_in, patient_record, receiver, ct):
    response = give(signed_in, receiver)
    assert response.status_code == 302
    grant = ConsentGrant.objects.get()
    assert grant.patient == patient_record
    assert grant.grantee_facility == receiver
    assert grant.source == ConsentGrant.Source.PATIENT_ONLINE
    assert decide(FacilityActor(receiver.pk), ct, Purpose.TREATMENT, timezone.now())
    assert AuditEvent.objects.filter(action=Action.GRANT_CREATED).count() == 1


def test_it_gives_consent_for_chosen_studies(signed_in, patient_record, receiver, ct, origin):
    other = StudyFactory(patient=patient_record, source_facility=origin)
    give(signed_in, receiver, scope=ConsentGrant.Scope.CHOSEN, studies=[str(ct.public_id)])
    grant = ConsentGrant.objects.get()
    assert list(grant.studies.all()) == [ct]
    assert not decide(FacilityActor(receiver.pk), other, Purpose.TREATMENT, timezone.now())


def test_it_forces_deidentification_for_research(signed_in, receiver, ct):
    give(signed_in, receiver, purpose=Purpose.RESEARCH)
    assert ConsentGrant.objects.get().deidentify is True


def test_it_answers_404_for_another_patients_study(signed_in, receiver, ct, origin):
    theirs = StudyFactory(patient=PatientFactory(), source_facility=origin)
    for action in ("review", "confirm"):
        response = give(
            signed_in,
            receiver,
            action=action,
            scope=ConsentGrant.Scope.CHOSEN,
            studies=[str(ct.public_id), str(theirs.public_id)],
        )
        assert response.status_code == 404
    response = give(signed_in, receiver, scope=ConsentGrant.Scope.CHOSEN, studies=["not-a-uuid"])
    assert response.status_code == 404
    assert not ConsentGrant.objects.exists()


def test_it_refuses_an_unknown_facility(signed_in, receiver, ct):
    response = signed_in.post(
        GIVE,
        {"facility": 987654, "purpose": Purpose.TREATMENT, "scope": "all", "action": "confirm"},
    )
    assert response.status_code == 400
    assert "that one is not on the portal" in response.content.decode()
    assert not ConsentGrant.objects.exists()


def test_it_refuses_a_period_ending_in_the_past(signed_in, receiver, ct):
    yesterday = timezone.localdate() - timedelta(days=1)
    for action in ("review", "confirm"):
        response = give(signed_in, receiver, action=action, valid_until=yesterday.isoformat())
        assert response.status_code == 400
        assert "The end date must be in the future." in response.content.decode()
    assert not ConsentGrant.objects.exists()


def test_it_refuses_a_period_shorter_than_the_studies_need(signed_in, receiver, ct):
    soon = timezone.localdate() + timedelta(days=30)
    response = give(signed_in, receiver, action="review", valid_until=soon.isoformat())
    assert response.status_code == 400
    assert "12 months after the latest study" in response.content.decode()
    assert not ConsentGrant.objects.exists()


def test_it_refuses_a_scope_matching_no_study(signed_in, receiver, ct):
    for action in ("review", "confirm"):
        response = give(
            signed_in, receiver, action=action, scope=ConsentGrant.Scope.RULES, modalities=["MR"]
        )
        assert response.status_code == 400
        assert "No study matches what you chose." in response.content.decode()
    assert not ConsentGrant.objects.exists()


def test_it_asks_for_studies_when_choosing_studies(signed_in, receiver, ct):
    response = give(signed_in, receiver, scope=ConsentGrant.Scope.CHOSEN)
    assert response.status_code == 400
    assert "Choose at least one study." in response.content.decode()
    assert not ConsentGrant.objects.exists()


def test_it_refuses_a_post_without_csrf_token(patient, patient_record, receiver, ct, grant):
    client = Client(enforce_csrf_checks=True)
    client.force_login(patient)
    response = client.post(GIVE, {"facility": receiver.pk, "purpose": "TREAT", "scope": "all"})
    assert response.status_code == 403
    assert "nothing was changed" in response.content.decode()
    response = client.post(withdraw_url(grant))
    assert response.status_code == 403
    assert ConsentGrant.objects.count() == 1
    assert not ConsentWithdrawal.objects.exists()


def test_it_refuses_an_unlinked_account(client, other_patient, receiver, ct):
    client.force_login(other_patient)
    response = give(client, receiver)
    assert response.status_code == 200
    assert not ConsentGrant.objects.exists()


# --- Withdrawing --------------------------------------------------------------------------------


def test_it_says_what_withdrawing_will_do(signed_in, grant):
    response = signed_in.get(withdraw_url(grant))
    assert response.status_code == 200
    body = response.content.decode()
    assert "will no longer be able to search for or open" in body
    assert "Lakeside Imaging Center" in body
    assert "CT CHEST" in body
    assert not ConsentWithdrawal.objects.exists()
    assert AuditEvent.objects.filter(action=Action.CONSENT_PAGE_VIEWED).count() == 1


def test_it_withdraws_and_access_ends(signed_in, grant, receiver, ct):
    response = signed_in.post(withdraw_url(grant), {"reason": "Moved away"})
    assert response.status_code == 302
    withdrawal = ConsentWithdrawal.objects.get(grant=grant)
    assert withdrawal.reason == "Moved away"
    assert not decide(FacilityActor(receiver.pk), ct, Purpose.TREATMENT, timezone.now())
    assert AuditEvent.objects.filter(action=Action.GRANT_WITHDRAWN).count() == 1
    body = signed_in.get(PAGE).content.decode()
    assert "Withdrew consent: Lakeside Imaging Center, for treatment" in body
    assert "Moved away" in body


def test_it_withdraws_twice_harmlessly(signed_in, grant):
    signed_in.post(withdraw_url(grant))
    response = signed_in.post(withdraw_url(grant), follow=True)
    assert response.status_code == 200
    assert "already withdrawn" in response.content.decode()
    assert ConsentWithdrawal.objects.count() == 1
    assert AuditEvent.objects.filter(action=Action.GRANT_WITHDRAWN).count() == 1
    assert "already withdrawn" in signed_in.get(withdraw_url(grant)).content.decode()


def test_it_refuses_a_reason_that_is_too_long(signed_in, grant):
    response = signed_in.post(withdraw_url(grant), {"reason": "x" * 201})
    assert response.status_code == 400
    assert not ConsentWithdrawal.objects.exists()


def test_it_answers_404_for_another_patients_grant(client, other_patient, grant, origin):
    theirs = PatientFactory(account=other_patient)
    StudyFactory(patient=theirs, source_facility=origin)
    client.force_login(other_patient)
    assert client.get(withdraw_url(grant)).status_code == 404
    assert client.post(withdraw_url(grant)).status_code == 404
    assert client.post("/consent/not-a-uuid/withdraw/").status_code == 404
    assert not ConsentWithdrawal.objects.exists()


def test_it_answers_404_to_an_unlinked_account(client, stranger, grant):
    client.force_login(stranger)
    assert client.post(withdraw_url(grant)).status_code == 404
    assert not ConsentWithdrawal.objects.exists()


def test_it_queues_the_follow_up_on_commit(signed_in, grant, django_capture_on_commit_callbacks):
    with (
        mock.patch("consent.tasks.consent_withdrawal_followup_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        signed_in.post(withdraw_url(grant))
    delay.assert_called_once_with(ConsentWithdrawal.objects.get().pk)


def test_it_queues_nothing_for_a_second_withdrawal(
    patient, grant, django_capture_on_commit_callbacks
):
    withdraw_consent(grant, by=patient)
    with django_capture_on_commit_callbacks() as callbacks:
        withdraw_consent(grant, by=patient)
    assert callbacks == []
