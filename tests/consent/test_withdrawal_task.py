"""After a withdrawal commits: the confirmation e-mails and the clean-up hooks."""

from __future__ import annotations

from datetime import timedelta
from mailbox import Maildir
from unittest import mock

import pytest
from django.utils import timezone

from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from consent.services import GrantRequest, change_consent, grant_consent, withdraw_consent
from consent.tasks import consent_withdrawal_followup_task
from studies.models import Study
from tests.factories import StudyFactory


@pytest.fixture
def ct(patient_record, origin) -> Study:
    today = timezone.localdate()
    return StudyFactory(
        patient=patient_record,
        source_facility=origin,
        description="CT CHEST",
        study_date=today - timedelta(days=30),
        state=Study.State.AVAILABLE,
    )


def grant_to(patient, patient_record, **grantee) -> ConsentGrant:
    return grant_consent(
        GrantRequest(
            patient=patient_record,
            purpose=Purpose.SECOND_OPINION,
            scope=ConsentGrant.Scope.ALL,
            **grantee,
        ),
        by=patient,
    )


def bodies(mailbox: Maildir) -> dict[str, str]:
    return {message["To"]: message.get_payload() for message in mailbox}


def test_it_emails_the_patient_without_clinical_details(
    mailbox, patient, patient_record, receiver, ct
):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    withdrawal = withdraw_consent(grant, by=patient)
    result = consent_withdrawal_followup_task(withdrawal.pk)
    assert result["sent"] == 1
    [message] = list(mailbox)
    assert message["To"] == "pat@example.org"
    assert "withdrawn" in message["Subject"]
    body = message.get_payload()
    assert "Lakeside Imaging Center can no longer search for or open" in body
    for detail in ("CT", "CHEST", "DOE", "RGH-0042", str(ct.study_instance_uid)):
        assert detail not in body
        assert detail not in message["Subject"]


def test_it_emails_the_named_clinician_too(mailbox, patient, patient_record, ct):
    grant = grant_to(patient, patient_record, grantee_email="Dr.Who@clinic.example.org")
    withdrawal = withdraw_consent(grant, by=patient)
    assert consent_withdrawal_followup_task(withdrawal.pk)["sent"] == 2
    sent = bodies(mailbox)
    assert set(sent) == {"pat@example.org", "dr.who@clinic.example.org"}
    to_clinician = sent["dr.who@clinic.example.org"]
    assert "no longer open those images" in to_clinician
    for detail in ("Pat", "Doe", "DOE", "CT", "RGH-0042"):
        assert detail not in to_clinician


def test_it_sends_nothing_twice(mailbox, patient, patient_record, receiver, ct):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    withdrawal = withdraw_consent(grant, by=patient)
    consent_withdrawal_followup_task(withdrawal.pk)
    assert consent_withdrawal_followup_task(withdrawal.pk)["sent"] == 0
    assert len(list(mailbox)) == 1


def test_it_sends_again_what_failed(mailbox, patient, patient_record, receiver, ct):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    withdrawal = withdraw_consent(grant, by=patient)
    with (
        mock.patch("consent.tasks._send", side_effect=OSError("down")),
        mock.patch.object(consent_withdrawal_followup_task, "retry", side_effect=RuntimeError),
        pytest.raises(RuntimeError),
    ):
        consent_withdrawal_followup_task(withdrawal.pk)
    assert consent_withdrawal_followup_task(withdrawal.pk)["sent"] == 1
    assert len(list(mailbox)) == 1


def test_it_sends_no_withdrawal_email_for_a_change(
    mailbox, patient, patient_record, receiver, elsewhere, ct
):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    change_consent(
        grant,
        GrantRequest(
            patient=patient_record,
            grantee_facility=elsewhere,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
        ),
        by=patient,
    )
    withdrawal = ConsentWithdrawal.objects.get(grant=grant)
    assert consent_withdrawal_followup_task(withdrawal.pk)["sent"] == 0
    assert list(mailbox) == []


def test_it_runs_the_clean_up_hook(patient, patient_record, receiver, ct, mailbox):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    withdrawal = withdraw_consent(grant, by=patient)
    with mock.patch("consent.tasks.remove_derived_copies_for_grant", return_value=0) as remove:
        consent_withdrawal_followup_task(withdrawal.pk)
    remove.assert_called_once_with(grant)


def test_it_ignores_a_withdrawal_that_does_not_exist(db):
    assert consent_withdrawal_followup_task(987654) == {"sent": 0}


def test_withdrawals_by_staff_queue_it_too(
    front_desk, patient, patient_record, receiver, ct, django_capture_on_commit_callbacks
):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    with (
        mock.patch("consent.tasks.consent_withdrawal_followup_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        withdrawal = withdraw_consent(grant, by=front_desk, reason="Signed form")
    delay.assert_called_once_with(withdrawal.pk)


def test_a_broker_that_is_down_does_not_undo_the_withdrawal(
    patient, patient_record, receiver, ct, django_capture_on_commit_callbacks
):
    grant = grant_to(patient, patient_record, grantee_facility=receiver)
    with (
        mock.patch(
            "consent.tasks.consent_withdrawal_followup_task.delay", side_effect=OSError("down")
        ),
        django_capture_on_commit_callbacks(execute=True),
    ):
        withdraw_consent(grant, by=patient)
    assert ConsentWithdrawal.objects.filter(grant=grant).exists()
