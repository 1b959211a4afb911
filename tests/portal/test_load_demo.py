"""`make run`'s demo data: facilities, logins and synthetic studies, loaded once."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from studies.models import Instance, Patient, Study


def test_it_loads_demo_people_and_studies_once(db, settings, spool):
    settings.DEBUG = True
    call_command("load_demo", stdout=io.StringIO())
    call_command("load_demo", stdout=io.StringIO())

    assert User.objects.count() == 4
    assert Study.objects.count() == 5
    assert Instance.objects.count() == 64
    assert Patient.objects.count() == 1
    assert Patient.objects.get().account == User.objects.get(email="patient@example.org")
    waiting = Study.objects.get(match=Study.Match.PENDING)
    assert waiting.candidate_patient == Patient.objects.get()
    assert {s.modalities_in_study for s in Study.objects.all()} == {"CT", "MR", "CR", "US"}
    assert len(list(spool.instances_dir.glob("*/*.dcm"))) == 64


def test_it_refuses_outside_debug(db, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DJANGO_DEBUG"):
        call_command("load_demo")
    assert not User.objects.exists()
