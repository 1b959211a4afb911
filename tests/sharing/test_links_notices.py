"""E-mails about share links: to the patient (first open, downloads) and to the recipient
(about to expire, ended by the patient or by a withdrawal). None carries clinical details."""

from __future__ import annotations

from datetime import timedelta
from mailbox import Maildir
from unittest import mock

import pytest
import time_machine
from django.conf import settings as django_settings
from django.core import mail
from django.utils import timezone

from consent.models import ConsentGrant, ConsentWithdrawal, Purpose
from consent.services import GrantRequest, change_consent, grant_consent, withdraw_consent
from portal.celery import app as celery_app
from sharing import links
from sharing.links import notify_download, revoke_share_link, warn_expiring_links
from sharing.models import ShareLink
from sharing.tasks import (
    queue_withdrawn_links_notice,
    share_link_ended_task,
    share_link_expiry_warnings_task,
    share_link_patient_notice_task,
    share_links_withdrawn_task,
)
from tests.sharing.conftest import LINK_RECIPIENT

pytestmark = pytest.mark.django_db

CLINICAL = ("CT", "CHEST", "CONTRAST", "Pat ", "Doe", "DOE", "RGH-0042", "1978")


def assert_no_clinical_details(text: str, study) -> None:
    for detail in (*CLINICAL, study.study_instance_uid, study.patient_id_value):
        assert detail not in text, detail


def messages(mailbox: Maildir) -> dict[str, list]:
    sent: dict[str, list] = {}
    for message in mailbox:
        sent.setdefault(message["To"], []).append(message)
    return sent


# --- The patient: first open and downloads ----------------------------------------------------


def test_the_patient_hears_of_the_first_open(mailbox, make_link, shared_study):
    link, _ = make_link()
    ShareLink.objects.filter(pk=link.pk).update(first_opened_at=timezone.now())
    assert share_link_patient_notice_task(link.pk, "opened") == {"sent": 1}
    [message] = list(mailbox)
    assert message["To"] == "pat@example.org"
    assert "opened" in message["Subject"]
    body = message.get_payload()
    assert LINK_RECIPIENT in body
    assert_no_clinical_details(body + message["Subject"], shared_study)


def test_the_patient_hears_of_downloads(mailbox, make_link, shared_study):
    link, _ = make_link()
    assert share_link_patient_notice_task(link.pk, "downloaded") == {"sent": 1}
    [message] = list(mailbox)
    assert "downloaded" in message["Subject"]
    assert_no_clinical_details(message.get_payload() + message["Subject"], shared_study)


def test_a_patient_without_an_account_is_not_e_mailed(make_link, patient_record):
    link, _ = make_link()
    patient_record.account = None
    patient_record.save()
    assert share_link_patient_notice_task(link.pk, "opened") == {"sent": 0}
    assert mail.outbox == []


def test_a_link_that_is_gone_sends_nothing(db):
    assert share_link_patient_notice_task(987654, "opened") == {"sent": 0}
    assert share_link_ended_task(987654) == {"sent": 0}
    assert share_links_withdrawn_task(987654) == {"sent": 0}


def test_an_unknown_notice_is_a_programming_error(make_link):
    link, _ = make_link()
    with pytest.raises(ValueError, match="unknown"):
        links.send_patient_notice(link, "exploded")


def test_downloads_are_told_at_most_once_an_hour(
    make_link, settings, django_capture_on_commit_callbacks
):
    settings.LINK_DOWNLOAD_NOTICE_MINUTES = 60
    link, _ = make_link()
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert notify_download(link) is True
        assert notify_download(link) is False
        with time_machine.travel(timezone.now() + timedelta(minutes=59)):
            assert notify_download(link) is False
        with time_machine.travel(timezone.now() + timedelta(minutes=61)):
            assert notify_download(link) is True
    assert delay.call_args_list == [mock.call(link.pk, "downloaded")] * 2


def test_downloads_are_not_told_when_the_patient_turned_it_off(
    make_link, django_capture_on_commit_callbacks
):
    link, _ = make_link(notify_on_download=False)
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert notify_download(link) is False
    delay.assert_not_called()


def test_a_broker_that_is_down_does_not_break_the_download(
    make_link, django_capture_on_commit_callbacks
):
    link, _ = make_link()
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay", side_effect=OSError),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert notify_download(link) is True


# --- The recipient: the link was ended -----------------------------------------------------------


def test_the_recipient_hears_that_the_patient_ended_the_link(
    mailbox, make_link, patient, shared_study, django_capture_on_commit_callbacks
):
    link, _ = make_link()
    with (
        mock.patch("sharing.tasks.share_link_ended_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        revoke_share_link(link, patient)
    delay.assert_called_once_with(link.pk)
    assert share_link_ended_task(link.pk) == {"sent": 1}
    assert share_link_ended_task(link.pk) == {"sent": 0}  # once
    [message] = list(mailbox)
    assert message["To"] == LINK_RECIPIENT
    body = message.get_payload()
    assert "ended the link" in body
    assert_no_clinical_details(body + message["Subject"], shared_study)


def test_a_failed_ended_notice_is_sent_again(mailbox, make_link, patient):
    link, _ = make_link()
    revoke_share_link(link, patient)
    with (
        mock.patch("sharing.links._send_mail", side_effect=OSError("down")),
        mock.patch.object(share_link_ended_task, "retry", side_effect=RuntimeError),
        pytest.raises(RuntimeError),
    ):
        share_link_ended_task(link.pk)
    assert share_link_ended_task(link.pk) == {"sent": 1}
    assert len(list(mailbox)) == 1


def _withdraw(grant, by, **kwargs) -> ConsentWithdrawal:
    return withdraw_consent(grant, by=by, **kwargs)


def test_a_withdrawal_queues_the_links_notice_on_commit(
    make_link, patient, django_capture_on_commit_callbacks
):
    link, _ = make_link()
    with (
        mock.patch("sharing.tasks.share_links_withdrawn_task.delay") as delay,
        mock.patch("consent.tasks.consent_withdrawal_followup_task.delay"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        withdrawal = _withdraw(link.grant, patient)
    delay.assert_called_once_with(withdrawal.pk)


def test_a_withdrawal_without_links_queues_nothing(
    patient, patient_record, receiver, shared_study, django_capture_on_commit_callbacks
):
    grant = grant_consent(
        GrantRequest(patient=patient_record, purpose=Purpose.TREATMENT,
                     scope=ConsentGrant.Scope.ALL, grantee_facility=receiver),
        by=patient,
    )  # fmt: skip
    with (
        mock.patch("sharing.tasks.share_links_withdrawn_task.delay") as delay,
        mock.patch("consent.tasks.consent_withdrawal_followup_task.delay"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        _withdraw(grant, patient)
    delay.assert_not_called()


def test_a_broker_that_is_down_does_not_undo_the_withdrawal(
    make_link, patient, django_capture_on_commit_callbacks
):
    link, _ = make_link()
    with (
        mock.patch("sharing.tasks.share_links_withdrawn_task.delay", side_effect=OSError),
        mock.patch("consent.tasks.consent_withdrawal_followup_task.delay"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        _withdraw(link.grant, patient)
    assert ConsentWithdrawal.objects.filter(grant=link.grant).exists()


def test_recipients_at_a_facility_hear_that_consent_was_withdrawn(
    mailbox, make_link, patient, receiver, shared_study
):
    link, _ = make_link(recipient_facility=receiver, recipient_facility_name="")
    second, _ = make_link(recipient_facility=receiver, recipient_facility_name="",
                          recipient_email="nurse@lakeside.example.org")  # fmt: skip
    assert second.grant == link.grant
    withdrawal = _withdraw(link.grant, patient)
    assert share_links_withdrawn_task(withdrawal.pk) == {"sent": 2}
    assert share_links_withdrawn_task(withdrawal.pk) == {"sent": 0}
    sent = messages(mailbox)
    assert set(sent) == {LINK_RECIPIENT, "nurse@lakeside.example.org"}
    body = sent[LINK_RECIPIENT][0].get_payload()
    assert "withdrew the consent" in body
    assert_no_clinical_details(body, shared_study)


def test_a_clinician_named_by_the_grant_is_told_once(mailbox, make_link, patient):
    # consent's own follow-up e-mails the grant's named clinician; links do not repeat it.
    link, _ = make_link()
    assert link.grant.grantee_email == LINK_RECIPIENT
    withdrawal = _withdraw(link.grant, patient)
    assert share_links_withdrawn_task(withdrawal.pk) == {"sent": 0}
    assert list(mailbox) == []
    link.refresh_from_db()
    assert link.ended_notice_sent_at is not None


def test_a_change_of_consent_still_tells_the_named_clinician(
    mailbox, make_link, patient, patient_record, shared_study
):
    # A change withdraws the grant with reason "changed", which consent does not e-mail about;
    # the links of the old grant end all the same.
    link, _ = make_link()
    change_consent(
        link.grant,
        GrantRequest(patient=patient_record, purpose=Purpose.TREATMENT,
                     scope=ConsentGrant.Scope.ALL, grantee_email=LINK_RECIPIENT),
        by=patient,
    )  # fmt: skip
    withdrawal = ConsentWithdrawal.objects.get(grant=link.grant)
    assert share_links_withdrawn_task(withdrawal.pk) == {"sent": 1}


def test_links_already_over_are_not_told_again(mailbox, make_link, patient, receiver):
    revoked, _ = make_link(recipient_facility=receiver, recipient_facility_name="")
    expiring, _ = make_link(recipient_facility=receiver, recipient_facility_name="", days=1,
                            recipient_email="late@lakeside.example.org")  # fmt: skip
    revoke_share_link(revoked, patient)
    with time_machine.travel(expiring.expires_at + timedelta(hours=1)):
        withdrawal = _withdraw(revoked.grant, patient)
        assert share_links_withdrawn_task(withdrawal.pk) == {"sent": 0}
    assert list(mailbox) == []


# --- The recipient: about to expire -------------------------------------------------------------


def test_the_recipient_is_warned_before_the_link_expires(
    mailbox, make_link, settings, shared_study
):
    settings.LINK_EXPIRY_WARNING_DAYS = 3
    link, _ = make_link(days=14)
    with time_machine.travel(link.expires_at - timedelta(days=4)):
        assert warn_expiring_links() == 0
    with time_machine.travel(link.expires_at - timedelta(days=2)):
        assert share_link_expiry_warnings_task() == {"sent": 1}
        assert warn_expiring_links() == 0  # once
    [message] = list(mailbox)
    assert message["To"] == LINK_RECIPIENT
    assert "expires soon" in message["Subject"]
    assert_no_clinical_details(message.get_payload(), shared_study)


def test_short_ended_and_expired_links_are_not_warned(make_link, patient, settings):
    settings.LINK_EXPIRY_WARNING_DAYS = 3
    short, _ = make_link(days=1)  # its e-mail said when it ends
    revoked, _ = make_link(days=14)
    withdrawn, _ = make_link(days=14, recipient_email="w@example.org", purpose=Purpose.TREATMENT)
    revoke_share_link(revoked, patient)
    withdraw_consent(withdrawn.grant, by=patient)
    with time_machine.travel(revoked.expires_at - timedelta(days=1)):
        assert warn_expiring_links() == 0
    with time_machine.travel(short.expires_at + timedelta(minutes=1)):
        assert warn_expiring_links() == 0
    assert mail.outbox == []


def test_a_failed_warning_is_tried_at_the_next_run(make_link, settings):
    settings.LINK_EXPIRY_WARNING_DAYS = 3
    link, _ = make_link(days=14)
    with time_machine.travel(link.expires_at - timedelta(days=2)):
        with mock.patch("sharing.links._send_mail", side_effect=OSError("down")):
            assert warn_expiring_links() == 0
        assert warn_expiring_links() == 1
    assert len(mail.outbox) == 1


def test_beat_runs_the_warning_every_hour():
    entry = django_settings.CELERY_BEAT_SCHEDULE["share-link-expiry-warnings"]
    assert entry["task"] == "sharing.share_link_expiry_warnings"
    assert entry["schedule"] == timedelta(hours=1)
    assert entry["task"] in celery_app.tasks


def test_the_withdrawal_queue_looks_before_it_queues(make_link, patient):
    link, _ = make_link()
    withdrawal = _withdraw(link.grant, patient)
    with mock.patch("sharing.tasks.share_links_withdrawn_task.delay") as delay:
        queue_withdrawn_links_notice(withdrawal.pk)
        queue_withdrawn_links_notice(987654)
    delay.assert_called_once_with(withdrawal.pk)
