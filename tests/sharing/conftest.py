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
