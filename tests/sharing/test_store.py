"""The object store, against the real S3 service (SeaweedFS under `make test`) and a local folder.

The behaviour both backends share is tested on both: readers of encrypted objects must not be
able to tell which one they are talking to.
"""

from __future__ import annotations

import io
import re
import stat
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.storage import FileSystemStorage
from storages.backends.s3 import S3Storage

from sharing import store as store_module
from sharing.store import (
    ObjectCorrupted,
    ObjectMissing,
    ObjectStore,
    StoreUnavailable,
    _shared_client,
    get_object_store,
)

# Not a multiple of anything in particular, so an offset read cannot pass by accident.
PAYLOAD = bytes(range(256)) * 40 + b"the end"


@pytest.fixture
def s3_store(stack_env) -> ObjectStore:
    stack_env["S3_BUCKET"]  # fails, naming the variable, when the stack is not there
    store = get_object_store()
    assert store.is_s3, "S3_BUCKET is set but the object store is not S3"
    return store


@pytest.fixture
def folder_store(tmp_path: Path) -> ObjectStore:
    # The options settings.py gives the embedded default's local folder.
    return ObjectStore(
        FileSystemStorage(
            location=tmp_path / "objects",
            file_permissions_mode=0o600,
            directory_permissions_mode=0o700,
        )
    )


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def stored(store: ObjectStore) -> str:
    name = ObjectStore.new_name("study")
    store.put(name, io.BytesIO(PAYLOAD))
    return name


def wrong_secret_store() -> ObjectStore:
    options = {**settings.STORAGES["objects"]["OPTIONS"], "secret_key": "not-the-secret-key"}
    return ObjectStore(S3Storage(**options))


def test_it_reads_back_what_it_put(store: ObjectStore, stored: str) -> None:
    with store.open(stored) as stream:
        assert stream.read() == PAYLOAD


def test_it_reads_from_an_offset(store: ObjectStore, stored: str) -> None:
    with store.open(stored, offset=1000) as stream:
        assert stream.read() == PAYLOAD[1000:]


def test_it_reads_nothing_from_the_end(store: ObjectStore, stored: str) -> None:
    with store.open(stored, offset=len(PAYLOAD)) as stream:
        assert stream.read() == b""


def test_it_refuses_a_negative_offset(store: ObjectStore, stored: str) -> None:
    with pytest.raises(ValueError, match="offset"), store.open(stored, offset=-1):
        pass


def test_it_tells_the_size(store: ObjectStore, stored: str) -> None:
    assert store.size(stored) == len(PAYLOAD)


def test_it_tells_whether_an_object_exists(store: ObjectStore, stored: str) -> None:
    assert store.exists(stored)
    assert not store.exists(ObjectStore.new_name("study"))


def test_it_deletes_and_deleting_twice_is_harmless(store: ObjectStore, stored: str) -> None:
    store.delete(stored)
    store.delete(stored)
    assert not store.exists(stored)


def test_it_reports_a_missing_object_on_open(store: ObjectStore) -> None:
    missing = ObjectStore.new_name("study")
    with pytest.raises(ObjectMissing), store.open(missing):
        pass
    with pytest.raises(ObjectMissing), store.open(missing, offset=10):
        pass


def test_it_reports_a_missing_object_on_size(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        store.size(ObjectStore.new_name("study"))


def test_it_answers_the_check(store: ObjectStore) -> None:
    store.check(timeout=1.0)


def test_it_names_objects_opaquely() -> None:
    names = {ObjectStore.new_name("study") for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        # `<kind>/<first two hex digits>/<32 hex digits>`: nothing else goes into a name.
        assert re.fullmatch(r"study/([0-9a-f]{2})/\1[0-9a-f]{30}", name), name


def test_it_draws_names_from_128_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[int] = []
    token_hex = store_module.secrets.token_hex

    def spy(nbytes: int) -> str:
        requested.append(nbytes)
        return token_hex(nbytes)

    monkeypatch.setattr(store_module.secrets, "token_hex", spy)
    ObjectStore.new_name("study")
    assert requested == [16]


@pytest.mark.parametrize(
    "kind",
    ["", "a/b", "../study", "1.2.840.113619.2.55", "DOE^JANE", "study name", "mrn-12345"],
)
def test_it_refuses_a_kind_that_is_not_a_plain_word(kind: str) -> None:
    with pytest.raises(ValueError, match="plain word"):
        ObjectStore.new_name(kind)


def test_it_keeps_local_objects_private_to_the_owner(folder_store: ObjectStore) -> None:
    name = ObjectStore.new_name("study")
    folder_store.put(name, io.BytesIO(PAYLOAD))
    path = Path(folder_store.storage.path(name))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_it_fails_a_put_signed_with_the_wrong_secret(s3_store: ObjectStore) -> None:
    with pytest.raises(StoreUnavailable) as failure:
        wrong_secret_store().put(ObjectStore.new_name("study"), io.BytesIO(PAYLOAD))
    assert "SignatureDoesNotMatch" in str(failure.value.__cause__)


def test_it_replaces_an_object_put_again_under_its_name(store: ObjectStore, stored: str) -> None:
    store.put(stored, io.BytesIO(b"second"))
    with store.open(stored) as body:
        assert body.read() == b"second"


def test_it_lists_the_names_of_a_kind(store: ObjectStore, stored: str) -> None:
    other = ObjectStore.new_name("other")
    store.put(other, io.BytesIO(b"x"))
    names = set(store.names("study"))
    assert stored in names
    assert other not in names


def test_it_reports_a_store_that_is_not_there_as_unavailable(
    s3_store: ObjectStore, unused_port: int
) -> None:
    options = {
        **settings.STORAGES["objects"]["OPTIONS"],
        "endpoint_url": f"http://127.0.0.1:{unused_port}",
    }
    gone = ObjectStore(S3Storage(**options))
    for operation in (
        lambda: gone.put(ObjectStore.new_name("study"), io.BytesIO(PAYLOAD)),
        lambda: gone.size("study/00/00"),
        lambda: gone.delete("study/00/00"),
    ):
        with pytest.raises(StoreUnavailable):
            operation()


def test_it_fails_the_check_with_the_wrong_secret(s3_store: ObjectStore) -> None:
    with pytest.raises(StoreUnavailable) as failure:
        wrong_secret_store().check(timeout=1.0)
    cause = failure.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_it_fails_the_check_quickly_when_the_store_is_not_there(
    s3_store: ObjectStore, unused_port: int
) -> None:
    options = {**settings.STORAGES["objects"]["OPTIONS"]}
    options["endpoint_url"] = f"http://127.0.0.1:{unused_port}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        ObjectStore(S3Storage(**options)).check(timeout=1.0)
    assert time.monotonic() - started < 2


def test_it_writes_a_checked_object_in_one_request(store: ObjectStore) -> None:
    name = ObjectStore.new_name("study")
    store.put_verified(name, PAYLOAD)
    with store.open(name) as body:
        assert body.read() == PAYLOAD
    assert store.size(name) == len(PAYLOAD)


def test_it_reports_an_object_the_store_kept_differently(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _shared_client(s3_store.storage)
    real_put = client.put_object
    monkeypatch.setattr(
        client, "put_object", lambda **kwargs: {**real_put(**kwargs), "ETag": '"0" * 32'}
    )
    with pytest.raises(ObjectCorrupted):
        s3_store.put_verified(ObjectStore.new_name("study"), PAYLOAD)
