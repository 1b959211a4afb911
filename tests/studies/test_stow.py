"""STOW-RS: POST /dicomweb/studies[/{study}], over real HTTP, and its multipart parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from audit.codes import Action, ActorKind, Outcome, PurposeOfUse
from audit.models import AuditEvent
from facilities.models import APIToken
from facilities.services import api_token_create, api_token_revoke
from studies.dicomweb import (
    TOKEN_GUESS_LIMIT,
    MultipartError,
    PartData,
    PartEnd,
    PartStart,
    iter_multipart_related,
)
from studies.models import Instance, Patient, Series, Study
from studies.spool import Spool
from studies.synthetic import SyntheticPatient

# Every endpoint test goes through a real WSGI server, so the body really streams.
real_http = pytest.mark.django_db(transaction=True)

BOUNDARY = "stow-test-7f3a9c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
JANE = SyntheticPatient(
    patient_id="MRN100", name="DOE^JANE", birth_date="19800305", sex="F", issuer="RGH"
)

# Store Instances Response attributes (PS3.18 Annex I) by tag, as DICOM JSON names them.
RETRIEVE_URL = "00081190"
FAILED_SOP = "00081198"
FAILURE_REASON = "00081197"
REFERENCED_SOP = "00081199"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"


# --- Helpers -------------------------------------------------------------------------------------


def issue_token(facility, admin, scopes=("store",)) -> tuple[APIToken, str]:
    return api_token_create(
        facility=facility,
        name="Radiology PACS",
        scopes=list(scopes),
        purpose_of_use=PurposeOfUse.TREATMENT,
        expires_in_days=30,
        actor=admin,
    )


@pytest.fixture
def store_token(origin, facility_admin) -> tuple[APIToken, str]:
    return issue_token(origin, facility_admin)


@pytest.fixture
def raw(store_token) -> str:
    return store_token[1]


def multipart(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    delimiter = f"--{boundary}".encode()
    body = b"".join(
        delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    return body + (delimiter + b"--\r\n" if close else b"")


def stow(
    live_server,
    raw: str | None,
    body: bytes,
    *,
    study: str | None = None,
    content_type: str = CONTENT_TYPE,
    **headers: str,
) -> requests.Response:
    url = f"{live_server.url}/dicomweb/studies" + (f"/{study}" if study else "")
    sent = {"Content-Type": content_type, **headers}
    if raw is not None:
        sent["Authorization"] = f"Bearer {raw}"
    return requests.post(url, data=body, headers=sent, timeout=30)


def spooled(spool) -> list[Path]:
    return sorted(spool.instances_dir.glob("*/*.dcm")) if spool.instances_dir.exists() else []


def incoming(spool) -> list[Path]:
    return sorted(spool.incoming_dir.glob("*")) if spool.incoming_dir.exists() else []


def assert_nothing_stored(spool) -> None:
    assert not Instance.objects.exists()
    assert not Series.objects.exists()
    assert not Study.objects.exists()
    assert not Patient.objects.exists()
    assert spooled(spool) == []
    assert incoming(spool) == []


def failures(response: requests.Response) -> list[tuple[str, int]]:
    items = response.json()[FAILED_SOP]["Value"]
    return [
        (item[SOP_INSTANCE].get("Value", [""])[0], item[FAILURE_REASON]["Value"][0])
        for item in items
    ]


def referenced_uids(response: requests.Response) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in response.json()[REFERENCED_SOP]["Value"]]


def study_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def sop_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def changed_copy(path: Path, tmp_path: Path, **attributes: str) -> Path:
    data_set = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(data_set, keyword, value)
    changed = tmp_path / f"changed-{path.name}"
    data_set.save_as(changed)
    return changed


# --- The happy path ------------------------------------------------------------------------------


@real_http
def test_it_stores_a_study_sent_with_requests(
    live_server, raw, store_token, spool, synthetic_study
):
    paths = synthetic_study(instances=3, patient=JANE)
    study_uid = study_uid_of(paths[0])

    response = stow(live_server, raw, multipart(*(p.read_bytes() for p in paths)))

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    body = response.json()
    study_url = f"{live_server.url}/dicomweb/studies/{study_uid}"
    assert body[RETRIEVE_URL] == {"vr": "UR", "Value": [study_url]}
    assert FAILED_SOP not in body
    items = body[REFERENCED_SOP]["Value"]
    assert len(items) == 3
    study = Study.objects.get()
    assert study.study_instance_uid == study_uid
    assert study.source_facility == store_token[0].facility
    for item, path in zip(items, paths, strict=True):
        data_set = pydicom.dcmread(path, stop_before_pixels=True)
        assert item[SOP_CLASS] == {"vr": "UI", "Value": [data_set.SOPClassUID]}
        assert item[SOP_INSTANCE] == {"vr": "UI", "Value": [data_set.SOPInstanceUID]}
        assert item[RETRIEVE_URL] == {
            "vr": "UR",
            "Value": [
                f"{study_url}/series/{data_set.SeriesInstanceUID}/instances/{data_set.SOPInstanceUID}"
            ],
        }
        instance = Instance.objects.get(sop_instance_uid=data_set.SOPInstanceUID)
        assert spool.path_of(instance.spool_name).read_bytes() == path.read_bytes()
    assert len(spooled(spool)) == 3
    assert incoming(spool) == []
    stored = AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED)
    assert stored.count() == 1  # one per study per request
    assert {(e.actor_kind, e.actor_id) for e in stored} == {
        (ActorKind.API_TOKEN, store_token[0].public_id)
    }
    assert {e.detail["channel"] for e in stored} == {"stow"}


@real_http
def test_it_stores_what_dicomweb_client_sends(live_server, raw, spool, synthetic_study):
    paths = synthetic_study(instances=3, patient=JANE)
    data_sets = [pydicom.dcmread(path) for path in paths]
    client = DICOMwebClient(
        url=f"{live_server.url}/dicomweb",
        headers={"Authorization": f"Bearer {raw}"},
        # Django's test server cannot read chunked bodies: send one piece.
        chunk_size=64 * 1024**2,
    )

    result = client.store_instances(data_sets)

    uids = [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence]
    assert uids == [data_set.SOPInstanceUID for data_set in data_sets]
    assert "FailedSOPSequence" not in result
    assert result.RetrieveURL.endswith(f"/dicomweb/studies/{data_sets[0].StudyInstanceUID}")
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == set(uids)
    assert len(spooled(spool)) == 3
    assert incoming(spool) == []


@pytest.mark.parametrize(
    "content_type",
    [
        f"multipart/related; type=application/dicom; boundary={BOUNDARY}",
        f'multipart/related; boundary="{BOUNDARY}"; type="application/dicom"',
        f"multipart/related; boundary={BOUNDARY}",  # no type: accepted, see studies/dicomweb.py
        f'Multipart/Related; Type="Application/DICOM"; boundary={BOUNDARY}',
    ],
)
@real_http
def test_it_accepts_the_content_type_as_clients_write_it(
    live_server, raw, synthetic_study, content_type
):
    [path] = synthetic_study(instances=1)

    response = stow(live_server, raw, multipart(path.read_bytes()), content_type=content_type)

    assert response.status_code == 200, response.text
    assert Instance.objects.count() == 1


@real_http
def test_it_stores_into_the_study_named_in_the_url(live_server, raw, synthetic_study):
    paths = synthetic_study(instances=2)
    study_uid = study_uid_of(paths[0])

    response = stow(live_server, raw, multipart(*(p.read_bytes() for p in paths)), study=study_uid)

    assert response.status_code == 200, response.text
    assert response.json()[RETRIEVE_URL]["Value"] == [
        f"{live_server.url}/dicomweb/studies/{study_uid}"
    ]
    assert Instance.objects.count() == 2


# --- Who may call --------------------------------------------------------------------------------


@pytest.fixture
def revoked(store_token, facility_admin) -> str:
    token, raw = store_token
    api_token_revoke(token=token, actor=facility_admin)
    return raw


@pytest.fixture
def expired(store_token) -> str:
    token, raw = store_token
    APIToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return raw


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing"),
        ("Basic dXNlcjpwYXNz", "not_bearer"),
        ("Bearer not-a-token", "malformed"),
        ("Bearer icp_0123456789ab_" + "A" * 43, "unknown"),
        ("wrong secret", "wrong_secret"),
        ("revoked", "revoked"),
        ("expired", "expired"),
    ],
)
@real_http
def test_it_refuses_callers_without_a_valid_token(
    live_server, request, store_token, spool, synthetic_study, authorization, reason
):
    token, good_raw = store_token
    if authorization == "wrong secret":
        authorization = "Bearer " + good_raw[:-4] + ("AAAA" if good_raw[-4:] != "AAAA" else "BBBB")
    elif authorization in ("revoked", "expired"):
        authorization = "Bearer " + request.getfixturevalue(authorization)
    [path] = synthetic_study(instances=1)
    headers = {"Authorization": authorization} if authorization else {}

    response = stow(live_server, None, multipart(path.read_bytes()), **headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="DICOMweb"')
    assert ("invalid_token" in response.headers["WWW-Authenticate"]) == (reason != "missing")
    assert "token" in response.text
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.API_TOKEN_REJECTED)
    assert event.outcome == Outcome.DENIED
    assert event.detail == {"reason": reason, "method": "POST"}
    named = reason in ("wrong_secret", "revoked", "expired")
    assert event.facility_id == (token.facility_id if named else None)
    assert event.target_id == (str(token.pk) if named else "")
    secret = good_raw.split("_", 2)[2]
    row = " ".join(
        str(value) for value in AuditEvent.objects.filter(pk=event.pk).values().get().values()
    )
    assert secret not in row
    assert secret[:-4] not in row


@real_http
def test_it_refuses_a_token_without_the_store_scope(
    live_server, origin, facility_admin, spool, synthetic_study
):
    token, raw = issue_token(origin, facility_admin, scopes=("search", "retrieve"))
    [path] = synthetic_study(instances=1)

    response = stow(live_server, raw, multipart(path.read_bytes()))

    assert response.status_code == 403
    assert "store scope" in response.text
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.API_TOKEN_REJECTED)
    assert (event.outcome, event.actor_kind, event.actor_id) == (
        Outcome.DENIED,
        ActorKind.API_TOKEN,
        token.public_id,
    )
    assert event.detail == {"reason": "scope", "scope": "store", "method": "POST"}


@real_http
def test_it_answers_other_methods_with_405_once_the_token_is_good(live_server, raw):
    url = f"{live_server.url}/dicomweb/studies"
    headers = {"Authorization": f"Bearer {raw}"}

    response = requests.get(url, headers=headers, timeout=10)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.delete(f"{url}/1.2.3", headers=headers, timeout=10).status_code == 405


@real_http
def test_it_slows_down_an_address_that_keeps_presenting_bad_tokens(live_server, raw):
    url = f"{live_server.url}/dicomweb/studies"
    bad = {"Authorization": "Bearer icp_0123456789ab_" + "A" * 43}
    for _ in range(TOKEN_GUESS_LIMIT):
        assert requests.post(url, headers=bad, timeout=10).status_code == 401

    refused = requests.post(url, headers={"Authorization": f"Bearer {raw}"}, timeout=10)

    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert AuditEvent.objects.filter(action=Action.API_TOKEN_REJECTED).count() == TOKEN_GUESS_LIMIT


# --- Bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        "",
    ],
)
@real_http
def test_it_refuses_other_media_types_with_415(
    live_server, raw, spool, synthetic_study, content_type
):
    [path] = synthetic_study(instances=1)

    response = stow(live_server, raw, multipart(path.read_bytes()), content_type=content_type)

    assert response.status_code == 415
    assert 'multipart/related; type="application/dicom"' in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_refuses_a_content_type_without_boundary_with_400(
    live_server, raw, spool, synthetic_study
):
    [path] = synthetic_study(instances=1)

    response = stow(
        live_server,
        raw,
        multipart(path.read_bytes()),
        content_type='multipart/related; type="application/dicom"',
    )

    assert response.status_code == 400
    assert "no boundary" in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_answers_406_when_the_response_type_is_not_accepted(
    live_server, raw, spool, synthetic_study
):
    [path] = synthetic_study(instances=1)
    body = multipart(path.read_bytes())

    refused = stow(live_server, raw, body, Accept="application/dicom+xml")
    assert refused.status_code == 406
    assert "application/dicom+json" in refused.text
    assert_nothing_stored(spool)

    accepted = stow(live_server, raw, body, Accept="application/dicom+xml, application/*;q=0.5")
    assert accepted.status_code == 200
    assert accepted.headers["Content-Type"] == "application/dicom+json"


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (lambda body: body[: len(body) - 200_000], "part 3 is incomplete"),
        (lambda body: body[: body.rindex(f"--{BOUNDARY}--".encode())], "part 3 is incomplete"),
        (lambda body: body[: body.rindex(b"Content-Type")], "in the headers of part 3"),
    ],
    ids=["truncated-in-a-part", "no-closing-boundary", "truncated-in-headers"],
)
@real_http
def test_it_stores_nothing_from_a_body_that_breaks_off(
    live_server, raw, spool, synthetic_study, cut, where
):
    paths = synthetic_study(instances=3, rows=512)
    body = cut(multipart(*(p.read_bytes() for p in paths)))

    response = stow(live_server, raw, body)

    assert response.status_code == 400
    assert "ended before its closing boundary" in response.text
    assert where in response.text
    assert "Nothing from this request was stored" in response.text
    assert "Nothing from this request was stored" in response.headers["Warning"]
    assert_nothing_stored(spool)
    assert not AuditEvent.objects.filter(action=Action.IMAGES_RECEIVED).exists()


@real_http
def test_it_refuses_a_body_that_does_not_use_the_boundary(live_server, raw, spool, synthetic_study):
    [path] = synthetic_study(instances=1)

    response = stow(live_server, raw, multipart(path.read_bytes(), boundary="another-boundary"))

    assert response.status_code == 400
    assert "does not contain the boundary" in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_refuses_an_empty_multipart_with_400(live_server, raw, spool):
    response = stow(live_server, raw, multipart())

    assert response.status_code == 400
    assert "no instances" in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_asks_for_a_length_when_the_server_cannot_read_a_chunked_body(
    live_server, raw, synthetic_study, spool
):
    [path] = synthetic_study(instances=1)
    body = multipart(path.read_bytes())

    # A generator body makes requests send Transfer-Encoding: chunked.
    response = stow(live_server, raw, iter([body[:100], body[100:]]))  # type: ignore[arg-type]

    assert response.status_code == 411
    assert "Content-Length" in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_refuses_a_part_that_is_not_dicom_with_409(live_server, raw, store_token, spool):
    response = stow(live_server, raw, multipart(b"this is not an image" * 50))

    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert failures(response) == [("", 0xC000)]
    assert REFERENCED_SOP not in response.json()
    assert response.json()[RETRIEVE_URL] == {"vr": "UR"}
    assert response.headers["Warning"].endswith('"C000 (part 1): This file is not a DICOM image."')
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "stow", "reason": "NOT_DICOM"}
    assert (event.actor_kind, event.actor_id) == (ActorKind.API_TOKEN, store_token[0].public_id)


@real_http
def test_it_cuts_off_a_part_over_the_size_limit_and_stores_the_rest(
    live_server, raw, spool, synthetic_study, settings, monkeypatch
):
    [small] = synthetic_study(instances=1, rows=16, seed=1)
    [large] = synthetic_study(instances=1, rows=512, seed=2)
    settings.INGEST_MAX_INSTANCE_BYTES = small.stat().st_size + 100
    discarded_sizes: list[int] = []
    discard = Spool.discard

    def recording_discard(self, path):
        if path.exists():
            discarded_sizes.append(path.stat().st_size)
        discard(self, path)

    monkeypatch.setattr(Spool, "discard", recording_discard)

    response = stow(live_server, raw, multipart(large.read_bytes(), small.read_bytes()))

    assert response.status_code == 202, response.text
    assert failures(response) == [("", 0xA700)]
    assert referenced_uids(response) == [sop_uid_of(small)]
    assert "A700 (part 1): The file is larger than the" in response.headers["Warning"]
    # Of the 512 KiB part, one byte over the limit was written, and then it was refused.
    assert discarded_sizes == [settings.INGEST_MAX_INSTANCE_BYTES + 1]
    assert Instance.objects.get().sop_instance_uid == sop_uid_of(small)
    assert len(spooled(spool)) == 1
    assert incoming(spool) == []
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "stow", "reason": "TOO_LARGE"}


@real_http
def test_it_refuses_an_instance_of_another_study_than_the_url(
    live_server, raw, spool, synthetic_study
):
    [ours] = synthetic_study(instances=1, seed=1)
    [theirs] = synthetic_study(instances=1, seed=2)
    url_study = study_uid_of(ours)

    response = stow(live_server, raw, multipart(theirs.read_bytes()), study=url_study)

    assert response.status_code == 409
    assert failures(response) == [(sop_uid_of(theirs), 0xA900)]
    assert "another study than the one in the request URL" in response.headers["Warning"]
    assert_nothing_stored(spool)
    event = AuditEvent.objects.get(action=Action.INSTANCE_REFUSED)
    assert event.detail == {"channel": "stow", "reason": "STUDY_MISMATCH"}

    mixed = stow(
        live_server, raw, multipart(theirs.read_bytes(), ours.read_bytes()), study=url_study
    )

    assert mixed.status_code == 202
    assert referenced_uids(mixed) == [sop_uid_of(ours)]
    assert Study.objects.get().study_instance_uid == url_study


@real_http
def test_it_refuses_a_url_study_that_is_not_a_uid(live_server, raw, spool, synthetic_study):
    [path] = synthetic_study(instances=1)

    response = stow(live_server, raw, multipart(path.read_bytes()), study="not-a-uid")

    assert response.status_code == 400
    assert "not a valid Study Instance UID" in response.text
    assert_nothing_stored(spool)


@real_http
def test_it_answers_an_identical_resend_with_200_and_changes_nothing(
    live_server, raw, spool, synthetic_study
):
    paths = synthetic_study(instances=2, patient=JANE)
    body = multipart(*(p.read_bytes() for p in paths))
    first = stow(live_server, raw, body)
    before = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))

    again = stow(live_server, raw, body)

    assert again.status_code == 200
    assert again.json() == first.json()
    after = (list(Instance.objects.values()), list(Study.objects.values()), spooled(spool))
    assert after == before
    assert incoming(spool) == []


@real_http
def test_it_refuses_a_conflicting_instance_with_409_and_keeps_the_first(
    live_server, raw, spool, synthetic_study, tmp_path
):
    [path] = synthetic_study(instances=1, patient=JANE)
    assert stow(live_server, raw, multipart(path.read_bytes())).status_code == 200
    held = Instance.objects.get()
    changed = changed_copy(path, tmp_path, StudyDescription="CHANGED")

    response = stow(live_server, raw, multipart(changed.read_bytes()))

    assert response.status_code == 409
    assert failures(response) == [(held.sop_instance_uid, 0x0111)]
    assert (
        "0111 (part 1): An image with the same identifier but different content"
        in (response.headers["Warning"])
    )
    assert Instance.objects.get().sha256 == held.sha256
    assert spool.path_of(held.spool_name).read_bytes() == path.read_bytes()
    assert len(spooled(spool)) == 1
    assert incoming(spool) == []


@real_http
def test_it_answers_a_mixed_batch_with_202_and_both_sequences(
    live_server, raw, spool, synthetic_study, tmp_path
):
    good, to_change, other = synthetic_study(instances=3, patient=JANE)
    assert stow(live_server, raw, multipart(to_change.read_bytes())).status_code == 200
    conflicting = changed_copy(to_change, tmp_path, StudyDescription="CHANGED")
    no_patient_id = changed_copy(other, tmp_path, PatientID="")
    parts = [good, conflicting, b"junk" * 100, no_patient_id, to_change]

    response = stow(
        live_server, raw, multipart(*(p if isinstance(p, bytes) else p.read_bytes() for p in parts))
    )

    assert response.status_code == 202
    assert failures(response) == [(sop_uid_of(to_change), 0x0111), ("", 0xC000), ("", 0xA900)]
    # The resent identical instance counts as held.
    assert referenced_uids(response) == [sop_uid_of(good), sop_uid_of(to_change)]
    warning = response.headers["Warning"]
    assert "0111 (part 2)" in warning
    assert "C000 (part 3)" in warning
    assert "A900 (part 4): PatientID is missing or empty." in warning
    assert Instance.objects.count() == 2
    assert len(spooled(spool)) == 2
    assert incoming(spool) == []


# --- Chunked bodies, under gunicorn --------------------------------------------------------------


@pytest.fixture
def gunicorn_url(transactional_db, settings, unused_port, tmp_path) -> Iterator[str]:
    """gunicorn serving the portal from its own process, on the test database and spool."""
    database = urlsplit(os.environ["DATABASE_URL"])
    test_database = database._replace(path=f"/{connection.settings_dict['NAME']}")
    environment = {
        **os.environ,
        "DATABASE_URL": urlunsplit(test_database),
        "INGEST_SPOOL_DIR": str(settings.INGEST_SPOOL_DIR),
    }
    # No control socket: its default path is shared by every gunicorn of the user.
    command = [sys.executable, "-m", "gunicorn", "--workers", "1", "--no-control-socket"]
    command += ["--bind", f"127.0.0.1:{unused_port}", "portal.wsgi"]
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            command,
            cwd=django_settings.BASE_DIR,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", unused_port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not start: {log.read_text()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{unused_port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@real_http
def test_it_reads_a_chunked_body_under_gunicorn(gunicorn_url, raw, spool, synthetic_study):
    # 3 x 512 KiB: over dicomweb-client's 1 MB chunk size, so it sends the body chunked.
    paths = synthetic_study(instances=3, rows=512)
    data_sets = [pydicom.dcmread(path) for path in paths]
    client = DICOMwebClient(
        url=f"{gunicorn_url}/dicomweb", headers={"Authorization": f"Bearer {raw}"}
    )

    result = client.store_instances(data_sets, study_instance_uid=data_sets[0].StudyInstanceUID)

    assert len(result.ReferencedSOPSequence) == 3
    assert result.RetrieveURL == f"{gunicorn_url}/dicomweb/studies/{data_sets[0].StudyInstanceUID}"
    assert Instance.objects.count() == 3
    assert len(spooled(spool)) == 3
    assert incoming(spool) == []


# --- The multipart parser ------------------------------------------------------------------------


def parse(chunks, boundary: bytes = b"b") -> list[tuple[dict[str, str], bytes]]:
    """The parts of a body as (headers, bytes), checking the events come in a legal order."""
    parts: list[tuple[dict[str, str], bytes]] = []
    current: tuple[dict[str, str], bytearray] | None = None
    for event in iter_multipart_related(chunks, boundary):
        if isinstance(event, PartStart):
            assert current is None
            assert event.number == len(parts) + 1
            current = (event.headers, bytearray())
        elif isinstance(event, PartData):
            assert current is not None
            assert len(event.data) > 0
            current[1].extend(event.data)
        else:
            assert isinstance(event, PartEnd)
            assert current is not None
            parts.append((current[0], bytes(current[1])))
            current = None
    assert current is None
    return parts


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_it_parses_parts_headers_preamble_padding_and_epilogue():
    body = (
        b"This is the preamble; it means nothing.\r\n"
        b"--b  \t\r\nContent-Type: application/dicom\r\nContent-Location: x\r\n\r\nfirst\r\n"
        b"--b\r\n\r\n\r\n"  # no headers, and an empty body
        b"--b\r\ncontent-type:application/dicom\r\n\r\nthird\r\nwith CRLF\r\n"
        b"--b--\r\nThe epilogue, ignored."
    )
    for size in (1, 2, 5, 7, 64, len(body)):
        assert parse(split(body, size)) == [
            ({"content-type": "application/dicom", "content-location": "x"}, b"first"),
            ({}, b""),
            ({"content-type": "application/dicom"}, b"third\r\nwith CRLF"),
        ]


def test_it_keeps_data_that_only_looks_like_a_boundary():
    lookalikes = b"a\r\n--bb\r\n--b-\r\n--b\r\r\n--b x\r\n--"
    body = b"--b\r\n\r\n" + lookalikes + b"\r\n--b--"
    for size in (1, 3, len(body)):
        assert parse(split(body, size)) == [({}, lookalikes)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "does not contain the boundary"),
        (b"no boundary here at all", "does not contain the boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n", "in the headers of part 1"),
        (b"--b\r\n\r\npart one\r\n--b\r\n\r\npart two", "part 2 is incomplete"),
        (b"--b\r\n\r\npart one\r\n--b", "ended before its closing boundary"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "not `Name: value`"),
        (b"--b\r\n" + b"X-Long: " + b"a" * 20_000, "headers of part 1 are too long"),
        (b"x" * 70_000 + b"\r\n--b\r\n\r\nx\r\n--b--", "does not contain the boundary"),
    ],
)
def test_it_refuses_malformed_bodies(body, message):
    with pytest.raises(MultipartError, match=message):
        parse(split(body, 1000) if body else [])


def test_it_refuses_a_boundary_over_70_characters():
    with pytest.raises(MultipartError, match="1 to 70"):
        parse([b"--" + b"b" * 71 + b"--"], boundary=b"b" * 71)


def test_it_hands_out_views_that_stay_valid_while_it_reads_on():
    body = b"--b\r\n\r\n" + b"x" * 10 + b"\r\n--b\r\n\r\n" + b"y" * 10 + b"\r\n--b--"
    views = [
        e.data for e in iter_multipart_related(split(body, 4), b"b") if isinstance(e, PartData)
    ]
    assert b"".join(views) == b"x" * 10 + b"y" * 10


part_bytes = st.one_of(
    st.binary(max_size=300),
    # Bytes full of the boundary's pieces, where a parser is most likely to slip.
    st.lists(
        st.sampled_from([b"\r", b"\n", b"-", b"--", b"\r\n--", b"bound", b"a", b" "]), max_size=60
    ).map(b"".join),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(part_bytes, min_size=1, max_size=5),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=20),
)
def test_it_finds_the_same_parts_however_the_body_is_chunked(parts, chunk_sizes):
    boundary = b"bound-ary"
    body = b"".join(b"--" + boundary + b"\r\n\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"
    chunks, position, turn = [], 0, 0
    while position < len(body):
        size = chunk_sizes[turn % len(chunk_sizes)]
        chunks.append(body[position : position + size])
        position, turn = position + size, turn + 1

    found = parse(chunks, boundary)

    # The same boundary inside a part's bytes is the sender's mistake (RFC 2046); skip those.
    if not any(b"\r\n--" + boundary in b"\r\n" + part for part in parts):
        assert [data for _headers, data in found] == parts
