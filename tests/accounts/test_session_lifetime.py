"""Idle timeouts (short for staff at a shared tablet) and an absolute session lifetime."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from audit.codes import Action
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_staff_are_signed_out_after_fifteen_idle_minutes(client, front_desk):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(front_desk)
        assert client.get(reverse("portal:staff-home")).status_code == 200
        clock.shift(timedelta(minutes=14))
        assert client.get(reverse("portal:staff-home")).status_code == 200
        clock.shift(timedelta(minutes=16))
        response = client.get(reverse("portal:staff-home"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    assert "_auth_user_id" not in client.session
    expired = AuditEvent.objects.get(action=Action.SESSION_EXPIRED)
    assert expired.detail == {"reason": "idle"}
    assert expired.target_id == str(front_desk.pk)


def test_background_polls_do_not_keep_an_idle_session_alive(client, front_desk):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(front_desk)
        client.get(reverse("portal:staff-home"))
        for _ in range(7):  # a progress bar polling for 14 minutes
            clock.shift(timedelta(minutes=2))
            assert client.get(reverse("portal:staff-home"),
                              headers={"X-Portal-Background": "1"}).status_code == 200  # fmt: skip
        clock.shift(timedelta(minutes=1, seconds=30))
        response = client.get(reverse("portal:staff-home"), headers={"X-Portal-Background": "1"})
    assert response.status_code == 302
    assert AuditEvent.objects.get(action=Action.SESSION_EXPIRED).detail == {"reason": "idle"}


def test_the_sign_in_page_says_why(client, front_desk):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(front_desk)
        client.get(reverse("portal:staff-home"))
        clock.shift(timedelta(minutes=20))
        response = client.get(reverse("portal:staff-home"), follow=True)
    assert b"left unattended" in response.content


def test_patients_get_a_longer_idle_timeout(client, patient):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(patient)
        client.get(reverse("portal:patient-home"))
        clock.shift(timedelta(minutes=20))
        assert client.get(reverse("portal:patient-home")).status_code == 200
        clock.shift(timedelta(minutes=31))
        assert client.get(reverse("portal:patient-home")).status_code == 302


def test_an_active_session_still_ends_after_its_lifetime(client, patient):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client.force_login(patient)
        for _ in range(12 * 6):  # active every ten minutes for twelve hours
            assert client.get(reverse("portal:patient-home")).status_code == 200
            clock.shift(timedelta(minutes=10))
        clock.shift(timedelta(minutes=1))
        response = client.get(reverse("portal:patient-home"))
    assert response.status_code == 302
    assert AuditEvent.objects.get(action=Action.SESSION_EXPIRED).detail == {"reason": "lifetime"}
