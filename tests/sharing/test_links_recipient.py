"""The recipient's side: the e-mailed link, the one-time code, the shared studies, and every
way a link stops working."""

from __future__ import annotations

import re
from datetime import timedelta
from unittest import mock

import pytest
import time_machine
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from consent.services import withdraw_consent
from sharing import links
from sharing.links import SESSION_KEY, revoke_share_link
from sharing.models import ShareLink, ShareLinkCode
from tests.sharing.conftest import LINK_RECIPIENT

pytestmark = pytest.mark.django_db


def open_url(token: str) -> str:
    return reverse("links:open", args=[token])


def code_url(link: ShareLink) -> str:
    return reverse("links:code", args=[link.public_id])


def home_url(link: ShareLink) -> str:
    return reverse("links:home", args=[link.public_id])


def last_code() -> str:
    [code] = re.findall(r"^\s+(\d{6})$", mail.outbox[-1].body, re.MULTILINE)
    return code


def send_code(client, link, **extra):
    return client.post(code_url(link), {"action": "send"}, **extra)


def enter_code(client, link, code, **extra):
    return client.post(code_url(link), {"action": "verify", "code": code}, **extra)


def open_and_verify(client, link, token):
    client.get(open_url(token))
    send_code(client, link)
    response = enter_code(client, link, last_code())
    assert response.status_code == 302, response.content
    return response


# --- The e-mailed link --------------------------------------------------------------------------


def test_the_link_leads_to_the_code_step_without_the_token(client, make_link):
    link, token = make_link()
    response = client.get(open_url(token))
    assert response.status_code == 302
    assert response.url == code_url(link)
    assert token not in response.url
    page = client.get(response.url)
    assert page.status_code == 200
    assert "d***@clinic.example.org" in page.content.decode()
    assert LINK_RECIPIENT not in page.content.decode()
    assert token not in page.content.decode()


def test_opening_the_link_sends_no_code_by_itself(client, make_link):
    # Mail scanners fetch links: a GET must not spend codes or e-mail the recipient.
    _, token = make_link()
    client.get(open_url(token), follow=True)
    assert mail.outbox == []
    assert ShareLinkCode.objects.count() == 0


@pytest.mark.parametrize("token", ["short", "A" * 44, "no-such-thing", "%00" * 20])
def test_a_malformed_token_gets_a_plain_page(client, token, make_link):
    make_link()
    response = client.get(f"/s/{token}")
    assert response.status_code == 404
    assert "This link does not work" in response.content.decode()
    event = AuditEvent.objects.get(action=Action.LINK_REFUSED)
    assert event.outcome == Outcome.DENIED
    assert event.detail["reason"] in ("malformed", "unknown")


def test_an_unknown_token_gets_a_plain_page(client, make_link):
    _, token = make_link()
    unknown = ("B" if token[0] != "B" else "C") + token[1:]
    response = client.get(open_url(unknown))
    assert response.status_code == 404
    assert AuditEvent.objects.get(action=Action.LINK_REFUSED).detail == {"reason": "unknown"}
    assert SESSION_KEY not in client.session


def test_an_expired_link_says_so(client, make_link):
    link, token = make_link(days=1)
    with time_machine.travel(link.expires_at + timedelta(minutes=1)):
        response = client.get(open_url(token))
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()
    event = AuditEvent.objects.get(action=Action.LINK_REFUSED)
    assert event.detail == {"reason": "expired"}
    assert event.patient_id == link.grant.patient_id


@pytest.mark.parametrize("ending", ["revoked", "withdrawn"])
def test_an_ended_link_says_access_was_withdrawn(client, make_link, patient, ending):
    link, token = make_link()
    if ending == "revoked":
        revoke_share_link(link, patient)
    else:
        withdraw_consent(link.grant, by=patient)
    response = client.get(open_url(token))
    assert response.status_code == 410
    assert "Access to these images was withdrawn" in response.content.decode()
    assert AuditEvent.objects.get(action=Action.LINK_REFUSED).detail == {"reason": ending}


def test_guessing_tokens_is_limited_per_address(client, make_link, settings):
    settings.LINK_TOKEN_GUESSES_PER_ADDRESS = 3
    _, token = make_link()
    for _ in range(3):
        assert client.get(open_url("A" * 43), REMOTE_ADDR="198.51.100.9").status_code == 404
    # Even the right token is refused from that address until the window ends...
    response = client.get(open_url(token), REMOTE_ADDR="198.51.100.9")
    assert response.status_code == 429
    assert "Too many attempts" in response.content.decode()
    assert AuditEvent.objects.filter(detail__reason="rate_limited").exists()
    # ...while another address is not held back.
    assert client.get(open_url(token), REMOTE_ADDR="198.51.100.10").status_code == 302


def test_the_open_page_only_answers_get(client, make_link):
    _, token = make_link()
    assert client.post(open_url(token)).status_code == 405


# --- The code -----------------------------------------------------------------------------------


def test_the_code_opens_the_shared_studies(client, make_link, shared_study):
    link, token = make_link()
    client.get(open_url(token))
    response = send_code(client, link)
    assert response.status_code == 302
    [message] = mail.outbox
    assert message.to == [LINK_RECIPIENT]
    assert (
        "We sent a 6-digit code to d***@clinic.example.org"
        in client.get(code_url(link)).content.decode()
    )
    response = enter_code(client, link, last_code())
    assert response.status_code == 302
    assert response.url == home_url(link)
    page = client.get(response.url)
    assert page.status_code == 200
    assert "CT CHEST W/O CONTRAST" in page.content.decode()
    link.refresh_from_db()
    assert link.first_opened_at is not None


def test_the_code_e_mail_has_no_clinical_details(client, make_link, shared_study):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    [message] = mail.outbox
    for detail in ("CT", "CHEST", "DOE", "Pat", "RGH-0042", shared_study.study_instance_uid):
        assert detail not in message.body
        assert detail not in message.subject


def test_the_code_step_binds_a_new_session_key(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    before = client.session.session_key
    enter_code(client, link, last_code())
    assert client.session.session_key != before


def test_a_code_is_kept_only_hashed(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    code = last_code()
    row = ShareLinkCode.objects.get()
    assert code not in row.code_hash
    assert len(row.code_hash) == 64


@pytest.mark.parametrize("typed", ["", "12345", "1234567", "abcdef", "12 34 5"])
def test_a_malformed_code_is_refused(client, make_link, typed):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    response = enter_code(client, link, typed)
    assert response.status_code == 400
    assert SESSION_KEY in client.session
    assert "verified_at" not in client.session[SESSION_KEY][str(link.public_id)]
    assert ShareLinkCode.objects.get().attempts == 0


def test_a_code_typed_with_spaces_is_accepted(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    code = last_code()
    assert enter_code(client, link, f"{code[:3]} {code[3:]}").status_code == 302


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def test_a_wrong_code_is_refused_and_audited(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    response = enter_code(client, link, wrong(last_code()))
    assert response.status_code == 400
    assert "That code is not right" in response.content.decode()
    assert client.get(home_url(link)).status_code == 302  # back to the code step
    event = AuditEvent.objects.get(action=Action.LINK_CODE_FAILED)
    assert event.outcome == Outcome.DENIED
    assert event.detail == {"reason": "wrong"}
    assert event.actor_kind == ActorKind.SHARE_LINK
    assert event.patient_id == link.grant.patient_id


def test_an_expired_code_is_refused(client, make_link, settings):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    code = last_code()
    with time_machine.travel(
        timezone.now() + timedelta(seconds=settings.LINK_CODE_VALIDITY_SECONDS + 1)
    ):
        response = enter_code(client, link, code)
    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert AuditEvent.objects.get(action=Action.LINK_CODE_FAILED).detail == {"reason": "expired"}


def test_a_code_works_once(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    code = last_code()
    enter_code(client, link, code)
    other = type(client)()
    other.get(open_url(token))
    assert enter_code(other, link, code).status_code == 400


def test_a_new_code_replaces_the_last(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    first = last_code()
    send_code(client, link)
    second = last_code()
    if first != second:
        assert enter_code(client, link, first).status_code == 400
    assert enter_code(client, link, second).status_code == 302


def test_a_code_allows_a_few_tries(client, make_link, settings):
    settings.LINK_CODE_MAX_ATTEMPTS = 3
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    code = last_code()
    for _ in range(3):
        assert enter_code(client, link, wrong(code)).status_code == 400
    # The right code no longer helps: that code's tries are spent.
    response = enter_code(client, link, code)
    assert response.status_code == 400
    assert "Too many tries" in response.content.decode()
    assert "verified_at" not in client.session[SESSION_KEY][str(link.public_id)]


def test_wrong_codes_are_limited_per_link(client, make_link, settings):
    settings.LINK_CODE_FAILURES_PER_LINK = 4
    settings.LINK_CODE_MAX_ATTEMPTS = 2
    link, token = make_link()
    client.get(open_url(token))
    for round_ in range(2):
        send_code(client, link, REMOTE_ADDR=f"192.0.2.{round_ + 1}")
        code = last_code()
        for _ in range(2):
            enter_code(client, link, wrong(code), REMOTE_ADDR=f"192.0.2.{round_ + 1}")
    send_code(client, link, REMOTE_ADDR="192.0.2.99")
    # From any address, the link's code step is closed until the window ends.
    response = enter_code(client, link, last_code(), REMOTE_ADDR="192.0.2.99")
    assert response.status_code == 429
    assert "Too many wrong codes" in response.content.decode()
    assert AuditEvent.objects.filter(
        action=Action.LINK_CODE_FAILED, detail__reason="rate_limited"
    ).exists()
    assert ShareLinkCode.objects.order_by("-pk").first().attempts == 0  # not even compared


def test_wrong_codes_are_limited_per_address(client, make_link, settings):
    settings.LINK_CODE_FAILURES_PER_ADDRESS = 2
    first, first_token = make_link()
    second, second_token = make_link()
    client.get(open_url(first_token))
    client.get(open_url(second_token))
    send_code(client, first)
    enter_code(client, first, wrong(last_code()))
    enter_code(client, first, wrong(last_code()))
    send_code(client, second)
    response = enter_code(client, second, last_code())
    assert response.status_code == 429
    # The same link opens from another address.
    other = type(client)()
    other.get(open_url(second_token), REMOTE_ADDR="192.0.2.50")
    send_code(other, second, REMOTE_ADDR="192.0.2.50")
    assert enter_code(other, second, last_code(), REMOTE_ADDR="192.0.2.50").status_code == 302


def test_codes_sent_are_limited_per_link(client, make_link, settings):
    settings.LINK_CODE_SENDS_PER_LINK = 2
    link, token = make_link()
    client.get(open_url(token))
    for _ in range(3):
        send_code(client, link)
    assert len(mail.outbox) == 2
    page = client.get(code_url(link)).content.decode()
    assert "Several codes were sent already" in page
    assert AuditEvent.objects.filter(detail__reason="codes_rate_limited").exists()


def test_a_mail_server_that_fails_keeps_no_code(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    with mock.patch("sharing.links.EmailMultiAlternatives.send", side_effect=OSError("down")):
        response = send_code(client, link, follow=True)
    assert "could not be sent" in response.content.decode()
    assert ShareLinkCode.objects.count() == 0
    assert not AuditEvent.objects.filter(action=Action.LINK_CODE_SENT).exists()


def test_the_code_step_needs_the_token_in_this_browser(client, make_link):
    # Knowing the link's id (it shows in later URLs) must not let anyone e-mail codes.
    link, _ = make_link()
    response = send_code(client, link)
    assert response.status_code == 403
    assert mail.outbox == []
    assert client.get(code_url(link)).status_code == 403
    assert AuditEvent.objects.filter(detail__reason="no_token").exists()


def test_the_code_step_of_an_ended_link_says_so(client, make_link, patient):
    link, token = make_link()
    client.get(open_url(token))
    revoke_share_link(link, patient)
    response = send_code(client, link)
    assert response.status_code == 410
    assert mail.outbox == []


def test_a_post_without_an_action_is_refused(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    assert client.post(code_url(link), {"action": "nonsense"}).status_code == 400
    assert mail.outbox == []


# --- The shared studies -----------------------------------------------------------------------


def test_the_page_lists_the_shared_studies_and_no_identifiers(
    client, make_link, shared_study, second_study
):
    link, token = make_link()
    open_and_verify(client, link, token)
    response = client.get(home_url(link))
    page = response.content.decode()
    assert response.status_code == 200
    assert "CT CHEST W/O CONTRAST" in page
    assert "AXIAL 5MM" in page
    assert "Riverside General Hospital" in page
    assert "MR KNEE LEFT" not in page  # not shared
    for identifier in (
        shared_study.study_instance_uid,
        shared_study.patient_id_value,
        "RGH-0042",
        shared_study.accession_number or "\x00",
        *shared_study.series.values_list("series_instance_uid", flat=True),
    ):
        assert identifier not in page
    event = AuditEvent.objects.get(action=Action.LINK_STUDIES_LISTED)
    assert event.actor_kind == ActorKind.SHARE_LINK
    assert event.patient_id == link.grant.patient_id


def test_the_page_of_a_link_not_proved_sends_to_the_code_step(client, make_link):
    link, token = make_link()
    client.get(open_url(token))
    response = client.get(home_url(link))
    assert response.status_code == 302
    assert response.url == code_url(link)


def test_the_page_without_the_token_says_to_open_the_e_mail(client, make_link):
    link, _ = make_link()
    response = client.get(home_url(link))
    assert response.status_code == 403
    assert "Open the link from your e-mail" in response.content.decode()


def test_an_unknown_link_page_is_404(client, db):
    import uuid

    response = client.get(reverse("links:home", args=[uuid.uuid4()]))
    assert response.status_code == 404


@pytest.mark.parametrize("ending", ["revoke", "withdraw"])
def test_ending_the_link_stops_the_very_next_page(client, make_link, patient, ending):
    link, token = make_link()
    open_and_verify(client, link, token)
    assert client.get(home_url(link)).status_code == 200
    if ending == "revoke":
        revoke_share_link(link, patient)
    else:
        withdraw_consent(link.grant, by=patient)
    for _ in range(2):  # the same page for every later request
        response = client.get(home_url(link))
        assert response.status_code == 410
        assert "Access to these images was withdrawn" in response.content.decode()


def test_an_expired_link_page_says_so(client, make_link):
    link, token = make_link(days=1)
    open_and_verify(client, link, token)
    with time_machine.travel(link.expires_at + timedelta(seconds=1)):
        response = client.get(home_url(link))
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()


def test_opening_the_link_again_in_a_verified_browser_goes_straight_in(client, make_link):
    link, token = make_link()
    open_and_verify(client, link, token)
    response = client.get(open_url(token))
    assert response.url == home_url(link)


def test_the_first_open_is_audited_and_queues_the_patients_e_mail(
    client, make_link, django_capture_on_commit_callbacks
):
    link, token = make_link()
    client.get(open_url(token))
    send_code(client, link)
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        enter_code(client, link, last_code())
    delay.assert_called_once_with(link.pk, "opened")
    event = AuditEvent.objects.get(action=Action.LINK_OPENED)
    assert event.detail == {"first": True}
    assert event.client_address == "127.0.0.1"
    # A second browser opening it is audited, but the patient is not e-mailed again.
    other = type(client)()
    other.get(open_url(token))
    send_code(other, link)
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        enter_code(other, link, last_code())
    delay.assert_not_called()
    assert AuditEvent.objects.filter(action=Action.LINK_OPENED).count() == 2


def test_no_open_e_mail_when_the_patient_turned_it_off(
    client, make_link, django_capture_on_commit_callbacks
):
    link, token = make_link(notify_on_open=False)
    client.get(open_url(token))
    send_code(client, link)
    with (
        mock.patch("sharing.tasks.share_link_patient_notice_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        enter_code(client, link, last_code())
    delay.assert_not_called()


def test_links_mask_the_address():
    assert links.mask_email("jane.doe@example.org") == "j***@example.org"


# --- The resolver the viewer and the download routes use ------------------------------------


def _request_from(client, path="/"):
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    request = RequestFactory().get(path)
    request.session = SessionStore(session_key=client.session.session_key)
    return request


def test_the_resolver_gives_the_link_sessions_access(client, make_link, shared_study, second_study):
    from sharing.access import ReadAccess
    from sharing.link_views import link_access_resolver

    link, token = make_link()
    open_and_verify(client, link, token)
    request = _request_from(client)
    access = link_access_resolver(request, shared_study, link_id=link.public_id)
    assert isinstance(access, ReadAccess)
    assert access.allows(shared_study)
    # A study the link does not name: None, for the caller's audited 404.
    assert link_access_resolver(request, second_study, link_id=link.public_id) is None


def test_the_resolver_answers_refusals_with_the_plain_pages(
    client, make_link, patient, shared_study
):
    from sharing.link_views import link_access_resolver

    link, token = make_link()
    client.get(open_url(token))
    not_proved = link_access_resolver(_request_from(client), shared_study, link_id=link.public_id)
    assert not_proved.status_code == 302
    assert not_proved.url == code_url(link)
    revoke_share_link(link, patient)
    ended = link_access_resolver(_request_from(client), shared_study, link_id=link.public_id)
    assert ended.status_code == 410
