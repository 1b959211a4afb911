"""Studies received the way ingest receives them, for the publish pipeline to take."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from audit.codes import ActorKind
from sharing.documents import DOCUMENT_KIND
from sharing.services import OBJECT_KIND
from sharing.store import ObjectStore, get_object_store
from studies.models import Study
from studies.services import Channel, IngestOutcome, IngestSource, study_ingest_instance
from studies.spool import get_spool
from studies.synthetic import SyntheticPatient

JANE = SyntheticPatient(patient_id="MRN100", name="DOE^JANE", birth_date="19800305", sex="F",
                        issuer="RGH")  # fmt: skip


def ingest_files(paths: list[Path], source: IngestSource) -> None:
    spool = get_spool()
    for path in paths:
        with path.open("rb") as file:
            incoming = spool.receive(file)
        result = study_ingest_instance(path=incoming, source=source, spool=spool)
        assert result.outcome is IngestOutcome.STORED, result.message


@pytest.fixture
def pacs(origin) -> IngestSource:
    return IngestSource(origin, Channel.DIMSE, ActorKind.DICOM_NODE, "RIVERSIDE_PACS",
                        address="127.0.0.1")  # fmt: skip


@pytest.fixture
def received_study(synthetic_study, pacs) -> Callable[..., Study]:
    """`received_study(instances=3, **synthetic options)`: ingested, waiting in the spool."""

    def receive(**options) -> Study:
        options.setdefault("patient", JANE)
        paths = synthetic_study(**options)
        ingest_files(paths, pacs)
        return Study.objects.latest("pk")

    return receive


@pytest.fixture
def store(stack_env) -> ObjectStore:
    """The session's bucket, without the objects earlier tests left in it."""
    stack_env["S3_BUCKET"]
    store = get_object_store()
    for kind in (OBJECT_KIND, DOCUMENT_KIND):
        for name in list(store.names(kind)):
            store.delete(name)
    return store


# --- Share links (tests/sharing/test_links*.py) --------------------------------------------------
# Index rows without files: the link pages and the access decision never read the images.

LINK_RECIPIENT = "dr.who@clinic.example.org"


@pytest.fixture
def shared_study(patient_record, origin) -> Study:
    """The patient's CT, available, with one series."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import SeriesFactory, StudyFactory

    study = StudyFactory(
        patient=patient_record,
        source_facility=origin,
        description="CT CHEST W/O CONTRAST",
        modalities_in_study="CT",
        study_date=timezone.localdate() - timedelta(days=30),
        state=Study.State.AVAILABLE,
        number_of_series=1,
        number_of_instances=3,
    )
    SeriesFactory(study=study, description="AXIAL 5MM", body_part="CHEST", number_of_instances=3)
    return study


@pytest.fixture
def second_study(patient_record, origin) -> Study:
    """Another study of the same patient, not shared by `make_link`'s default."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import SeriesFactory, StudyFactory

    study = StudyFactory(
        patient=patient_record,
        source_facility=origin,
        description="MR KNEE LEFT",
        modalities_in_study="MR",
        study_date=timezone.localdate() - timedelta(days=10),
        state=Study.State.AVAILABLE,
    )
    SeriesFactory(study=study, description="SAG PD", body_part="KNEE", modality="MR")
    return study


@pytest.fixture
def make_link(patient, patient_record, shared_study):
    """`make_link(**ShareLinkRequest fields)` -> (link, raw token): the patient shares
    `shared_study` with LINK_RECIPIENT at a facility not on the portal, for a second opinion."""
    from consent.models import Purpose
    from sharing.links import ShareLinkRequest, create_share_link

    def make(*, by=None, **options):
        options.setdefault("studies", [shared_study])
        options.setdefault("recipient_email", LINK_RECIPIENT)
        options.setdefault("purpose", Purpose.SECOND_OPINION)
        if "recipient_facility" not in options:
            options.setdefault("recipient_facility_name", "Dr Who's Clinic")
        wanted = ShareLinkRequest(patient=patient_record, **options)
        return create_share_link(wanted, by=by or patient)

    return make
