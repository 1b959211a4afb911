"""The make_synthetic_study command writes a valid study and says where."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from studies.dicom import parse_instance


def test_it_writes_the_requested_study(tmp_path):
    output = StringIO()
    call_command(
        "make_synthetic_study", "--modality", "MR", "--instances", "4", "--rows", "32",
        "--out", str(tmp_path), "--patient-id", "SYN77", "--patient-name", "SYNTHETIC^CMD",
        "--birth-date", "19991231", "--issuer", "SYNISSUER", "--study-date", "20260301",
        "--seed", "5", "--transfer-syntax", "implicit", stdout=output,
    )  # fmt: skip
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == 4
    assert f"Wrote 4 MR files to {tmp_path}" in output.getvalue()
    parsed = parse_instance(files[0])
    assert parsed.patient.patient_id == "SYN77"
    assert parsed.patient.issuer_of_patient_id == "SYNISSUER"
    assert parsed.patient.name == "SYNTHETIC^CMD"
    assert str(parsed.patient.birth_date) == "1999-12-31"
    assert str(parsed.study.study_date) == "2026-03-01"


def test_it_refuses_a_bad_date(tmp_path):
    with pytest.raises(CommandError, match="YYYYMMDD"):
        call_command("make_synthetic_study", "--out", str(tmp_path), "--study-date", "2026-03-01")
