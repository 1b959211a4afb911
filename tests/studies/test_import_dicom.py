"""manage.py import_dicom: folders and zips into a facility, through the ingest service."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pydicom.fileset import FileSet

from audit.codes import Action, ActorKind
from audit.models import AuditEvent
from studies.models import Instance, Study
from studies.synthetic import SyntheticPatient

ARCHIVE_PATIENT = SyntheticPatient(patient_id="MRN-2042", name="ROE^RICHARD", issuer="")


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_dicom", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[CommandError, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as failure:
        call_command("import_dicom", *args, stdout=out, stderr=err)
    return failure.value, out.getvalue(), err.getvalue()


@pytest.fixture
def archive_folder(tmp_path, synthetic_study) -> Path:
    folder = tmp_path / "archive-2019"
    for index, path in enumerate(synthetic_study(instances=2, patient=ARCHIVE_PATIENT, seed=1)):
        target = folder / "series1" / f"{index}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return folder


@pytest.fixture
def archive_zip(tmp_path, synthetic_study) -> Path:
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source in synthetic_study(instances=3, patient=ARCHIVE_PATIENT, seed=2):
            archive.write(source, f"DICOM/{source.name}")
    return path


def test_it_imports_folders_and_zips_into_the_facility(origin, archive_folder, archive_zip):
    out, err = run(str(archive_folder), str(archive_zip), "--facility", str(origin.pk))

    assert Instance.objects.count() == 5
    assert Study.objects.count() == 2
    assert set(Study.objects.values_list("source_facility", flat=True)) == {origin.pk}
    # The facility's own archive: PatientIDs without an issuer are the facility's MRNs.
    assert set(Study.objects.values_list("match", flat=True)) == {Study.Match.MATCHED}
    assert out.strip() == (
        "5 files: 5 accepted, 0 duplicate, 0 refused, 0 conflict, 0 failed, 0 skipped; "
        "2 studies, 0 waiting to be matched to a patient."
    )
    assert "5/5 files" in err
    events = AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED)
    assert events.count() == 2  # one per study of the run
    assert {(e.actor_kind, e.actor_id, e.detail["channel"]) for e in events} == {
        (ActorKind.SYSTEM, "import_dicom", "import")
    }


def test_naming_a_cds_index_imports_the_cd(origin, tmp_path, synthetic_study):
    file_set = FileSet()
    for path in synthetic_study(instances=2, patient=ARCHIVE_PATIENT):
        file_set.add(path)
    file_set.write(tmp_path / "cdrom")

    out, _ = run(str(tmp_path / "cdrom" / "DICOMDIR"), "--facility", str(origin.pk))

    assert out.startswith(
        "3 files: 2 accepted, 0 duplicate, 0 refused, 0 conflict, 0 failed, 1 skipped"
    )
    assert Instance.objects.count() == 2


def test_it_finds_the_facility_by_its_exact_name(origin, archive_folder):
    out, _ = run(str(archive_folder), "--facility", origin.name)

    assert out.startswith("2 files: 2 accepted")


def test_importing_again_changes_nothing(origin, archive_folder):
    run(str(archive_folder), "--facility", str(origin.pk))

    out, _ = run(str(archive_folder), "--facility", str(origin.pk), "--quiet")

    assert out.startswith("2 files: 0 accepted, 2 duplicate,")
    assert Instance.objects.count() == 2


def test_it_exits_non_zero_when_anything_was_refused(origin, archive_folder, spool):
    (archive_folder / "notes.txt").write_text("not an image")
    (archive_folder / "link").symlink_to("/etc/passwd")

    failure, out, err = run_failing(str(archive_folder), "--facility", str(origin.pk))

    assert failure.returncode == 1
    assert "2 of 4 files were not imported" in str(failure)
    assert out.startswith("4 files: 2 accepted, 0 duplicate, 2 refused,")
    assert "refused: archive-2019/notes.txt: This file is not a DICOM image." in err
    assert "refused: archive-2019/link: This is a shortcut to something outside" in err
    assert Instance.objects.count() == 2
    assert list(spool.incoming_dir.glob("*")) == []
    reasons = AuditEvent.objects.filter(action=Action.INSTANCE_REFUSED).values_list(
        "detail", flat=True
    )
    assert sorted(reasons, key=str) == [
        {"channel": "import", "reason": "LINK_OUTSIDE"},
        {"channel": "import", "reason": "NOT_DICOM"},
    ]


def test_its_output_carries_no_patient_data(origin, archive_folder, archive_zip):
    (archive_folder / "junk.bin").write_bytes(b"junk" * 100)

    _failure, out, err = run_failing(
        str(archive_folder), str(archive_zip), "--facility", str(origin.pk), "-v", "2"
    )

    for secret in ("ROE", "RICHARD", "MRN-2042", Study.objects.first().study_instance_uid):
        assert secret not in out + err
    assert "accepted: archive-2019/series1/0.dcm: Received." in err


def test_quiet_leaves_only_the_summary(origin, archive_folder):
    (archive_folder / "notes.txt").write_text("not an image")

    _failure, out, err = run_failing(str(archive_folder), "--facility", str(origin.pk), "--quiet")

    assert err == ""
    assert out.startswith("3 files:")


def test_an_unknown_facility_is_an_error_before_anything_is_read(db, archive_folder):
    failure, _, _ = run_failing(str(archive_folder), "--facility", "Nowhere Hospital")

    assert failure.returncode == 2
    assert "Nowhere Hospital" in str(failure)
    assert not Instance.objects.exists()


def test_a_missing_path_is_an_error_before_anything_is_read(origin, archive_folder, tmp_path):
    failure, _, _ = run_failing(
        str(archive_folder), str(tmp_path / "nope"), "--facility", str(origin.pk)
    )

    assert failure.returncode == 2
    assert "nope" in str(failure)
    assert not Instance.objects.exists()
