"""The publish pipeline's services, run in the test process against the real object store
(SeaweedFS under `make test`): claims, publishing, the sweeper, reading, and the keys.

Faults with a real worker process (SIGKILL, store and broker outages) are in
test_publish_faults.py.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.codes import Action, ActorKind
from audit.models import AuditEvent
from sharing import services
from sharing.crypto import IntegrityError, KeyringError, LocalKeyring
from sharing.keys import add_key_version, get_keyring, rewrap_data_keys
from sharing.models import StoredObject, StudyKey
from sharing.services import (
    ObjectUnavailable,
    Reader,
    publish_spooled,
    publish_sweep,
    read_instance,
    remove_orphan_objects,
)
from sharing.store import ObjectStore, StoreUnavailable
from studies.models import Instance, Study
from studies.spool import get_spool

NODE = settings.PORTAL_NODE
SYSTEM = Reader(ActorKind.SYSTEM, "test")


def plaintext(instance: Instance, **options) -> bytes:
    return b"".join(read_instance(instance, SYSTEM, **options))


def stored_names(store: ObjectStore) -> set[str]:
    return set(store.names(services.OBJECT_KIND))


# --- Publishing --------------------------------------------------------------------------------


def test_it_publishes_a_received_study_and_makes_it_available(
    received_study, store, django_capture_on_commit_callbacks
) -> None:
    study = received_study(instances=4)
    assert study.state == Study.State.RECEIVING

    with django_capture_on_commit_callbacks(execute=True):  # spool files go on commit
        report = publish_spooled(NODE, store=store)

    assert report.published == 4
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE
    assert study.number_of_published_instances == study.number_of_instances == 4
    for instance in Instance.objects.filter(study=study):
        assert instance.state == Instance.State.PUBLISHED
        assert instance.spool_name == ""
        assert hashlib.sha256(plaintext(instance)).hexdigest() == instance.sha256
        record = instance.stored_object
        assert record.state == StoredObject.State.STORED
        assert store.size(record.name) == record.size_bytes
    assert not list(get_spool().instances_dir.glob("*/*")), "spool files were left behind"
    assert AuditEvent.objects.filter(action=Action.STUDY_PUBLISHED, study_id=study.pk).count() == 1


def test_objects_hold_no_plaintext_and_no_identifiers(received_study, store) -> None:
    study = received_study(instances=1)
    publish_spooled(NODE, store=store)
    instance = Instance.objects.get(study=study)
    record = instance.stored_object
    with store.open(record.name) as body:
        ciphertext = body.read()
    assert instance.sop_instance_uid not in record.name
    for needle in (b"DOE^JANE", b"MRN100", instance.sop_instance_uid.encode(), b"DICM"):
        assert needle not in ciphertext


def test_one_data_key_per_study_stored_only_wrapped(received_study, store) -> None:
    first, second = received_study(instances=1, seed=1), received_study(instances=1, seed=2)
    publish_spooled(NODE, store=store)
    keys = {key.study_id: key for key in StudyKey.objects.all()}
    assert set(keys) == {first.pk, second.pk}
    assert keys[first.pk].kek_id == get_keyring().current_kek_id()
    assert bytes(keys[first.pk].wrapped_key) != bytes(keys[second.pk].wrapped_key)
    assert len(bytes(keys[first.pk].wrapped_key)) > 32  # nonce + key + tag, never the bare key


def test_it_takes_batches_and_says_when_more_wait(received_study, store) -> None:
    study = received_study(instances=5)
    first = publish_spooled(NODE, batch_size=3, store=store)
    assert (first.published, first.more) == (3, True)
    study.refresh_from_db()
    assert study.state == Study.State.PUBLISHING
    assert study.number_of_published_instances == 3
    second = publish_spooled(NODE, batch_size=3, store=store)
    assert (second.published, second.more) == (2, False)
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE


def test_it_publishes_nothing_twice(received_study, store) -> None:
    received_study(instances=2)
    publish_spooled(NODE, store=store)
    again = publish_spooled(NODE, store=store)
    assert again.published == 0
    assert StoredObject.objects.count() == 2
    assert len(stored_names(store)) == 2


def test_it_leaves_other_nodes_spools_alone(received_study, store) -> None:
    received_study(instances=2)
    Instance.objects.update(spool_node="another-node")
    assert publish_spooled(NODE, store=store).published == 0
    assert set(Instance.objects.values_list("state", flat=True)) == {Instance.State.RECEIVED}


def test_more_images_of_an_available_study_are_published_too(
    received_study, synthetic_study, pacs, store
) -> None:
    from tests.sharing.conftest import JANE, ingest_files

    study = received_study(instances=2, seed=5)
    publish_spooled(NODE, store=store)
    more = synthetic_study(instances=4, seed=5, patient=JANE)[2:]  # the same study, 2 more
    ingest_files(more, pacs)
    study.refresh_from_db()
    assert study.state == Study.State.RECEIVING
    publish_spooled(NODE, store=store)
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE
    assert study.number_of_published_instances == 4
    assert AuditEvent.objects.filter(action=Action.STUDY_PUBLISHED, study_id=study.pk).count() == 2


def test_a_store_that_fails_lets_go_of_the_batch(received_study, store, monkeypatch) -> None:
    study = received_study(instances=3)

    def refuse(name, data):
        raise StoreUnavailable("ConnectionRefused")

    monkeypatch.setattr(store, "put_verified", refuse)
    with pytest.raises(StoreUnavailable):
        publish_spooled(NODE, store=store)
    assert set(Instance.objects.values_list("state", flat=True)) == {Instance.State.RECEIVED}
    assert not StoredObject.objects.exists()
    monkeypatch.undo()
    assert publish_spooled(NODE, store=store).published == 3
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE


def test_a_retried_task_finishes_its_own_claims_under_the_same_names(
    received_study, store, monkeypatch
) -> None:
    received_study(instances=2)
    # The store fails and cannot even delete: the claims stay with the task's token.
    monkeypatch.setattr(
        store, "put_verified", lambda *a: (_ for _ in ()).throw(StoreUnavailable("down"))
    )
    monkeypatch.setattr(store, "delete", lambda *a: (_ for _ in ()).throw(StoreUnavailable("x")))
    with pytest.raises(StoreUnavailable):
        publish_spooled(NODE, claim_token="task-1", store=store)
    names = set(StoredObject.objects.values_list("name", flat=True))
    assert len(names) == 2
    assert set(Instance.objects.values_list("state", flat=True)) == {Instance.State.PUBLISHING}
    # Another task finds nothing to claim; the retry of the same task resumes.
    monkeypatch.undo()
    assert publish_spooled(NODE, claim_token="task-2", store=store).published == 0
    assert publish_spooled(NODE, claim_token="task-1", store=store).published == 2
    assert set(StoredObject.objects.values_list("name", flat=True)) == names
    assert stored_names(store) == names


def test_an_upload_that_does_not_read_back_is_not_recorded(
    received_study, store, monkeypatch, settings
):
    settings.PUBLISH_IN_MEMORY_MAX_BYTES = 0  # the streaming path, checked by reading back
    received_study(instances=1)
    real_put = store.put

    def corrupting_put(name, stream):
        data = bytearray(stream.read())
        data[-1] ^= 1
        import io

        real_put(name, io.BytesIO(bytes(data)))

    monkeypatch.setattr(store, "put", corrupting_put)
    report = publish_spooled(NODE, store=store)
    assert report.published == 0
    record = StoredObject.objects.get()
    assert record.state == StoredObject.State.UPLOADING  # left for the sweeper's lease
    assert Instance.objects.get().state == Instance.State.PUBLISHING


# --- The sweeper ------------------------------------------------------------------------------


def test_the_sweeper_releases_stale_claims_and_deletes_what_they_uploaded(
    received_study, store, monkeypatch
) -> None:
    received_study(instances=2)
    # A worker that dies right after uploading: the object exists, nothing was recorded.
    real_put = store.put_verified

    def put_then_die(name, data):
        real_put(name, data)
        raise SystemExit

    monkeypatch.setattr(store, "put_verified", put_then_die)
    with pytest.raises(SystemExit):
        publish_spooled(NODE, store=store)
    monkeypatch.undo()
    # Uploads run a few at once, so the death may leave more than one object; none recorded.
    assert stored_names(store)
    assert not StoredObject.objects.filter(state=StoredObject.State.STORED).exists()

    assert publish_sweep(lease=timedelta(hours=1), store=store).released == 0
    report = publish_sweep(lease=timedelta(0), waiting_for=timedelta(0), store=store)

    assert report.released == 2
    assert report.nodes_to_kick == {NODE}
    assert not stored_names(store)
    assert set(Instance.objects.values_list("state", flat=True)) == {Instance.State.RECEIVED}
    assert publish_spooled(NODE, store=store).published == 2
    assert len(stored_names(store)) == 2


def test_a_claim_released_while_its_task_works_is_not_published_twice(
    received_study, store, monkeypatch, settings
) -> None:
    settings.PUBLISH_UPLOADS_IN_FLIGHT = 1  # the sweep below uses the test's own transaction
    received_study(instances=1)
    real_put = store.put_verified

    def put_then_lose_the_lease(name, data):
        real_put(name, data)
        publish_sweep(lease=timedelta(0), store=store)  # the sweeper thinks the worker died

    monkeypatch.setattr(store, "put_verified", put_then_lose_the_lease)
    assert publish_spooled(NODE, store=store).published == 0
    monkeypatch.undo()
    assert not stored_names(store), "the lost claim's upload must be removed"
    assert publish_spooled(NODE, store=store).published == 1
    assert StoredObject.objects.count() == len(stored_names(store)) == 1


def test_the_sweeper_names_nodes_whose_instances_wait_with_no_task(received_study, store):
    received_study(instances=1)
    assert publish_sweep(store=store).nodes_to_kick == set()  # just arrived: a task is coming
    assert publish_sweep(waiting_for=timedelta(0), store=store).nodes_to_kick == {NODE}


def test_orphan_objects_are_removed_and_recorded_ones_kept(
    received_study, store, monkeypatch
) -> None:
    import io

    received_study(instances=1)
    publish_spooled(NODE, store=store)
    orphan = ObjectStore.new_name(services.OBJECT_KIND)
    store.put(orphan, io.BytesIO(b"left by a crash"))
    assert remove_orphan_objects(store=store) == 0, "too fresh: its row may not be committed"
    monkeypatch.setattr(services, "ORPHAN_GRACE", timedelta(0))
    assert remove_orphan_objects(store=store) == 1
    assert stored_names(store) == set(StoredObject.objects.values_list("name", flat=True))


# --- Reading ----------------------------------------------------------------------------------


@pytest.fixture
def published(received_study, store) -> Instance:
    study = received_study(instances=1, rows=512)  # about 512 KiB: offsets inside the object
    publish_spooled(NODE, store=store)
    return Instance.objects.get(study=study)


def test_it_reads_from_any_offset(published) -> None:
    whole = plaintext(published)
    assert len(whole) == published.size_bytes
    for offset in (1, 1000, published.size_bytes - 1, published.size_bytes):
        assert plaintext(published, offset=offset) == whole[offset:]


def test_every_read_is_audited(published) -> None:
    reader = Reader(ActorKind.API_TOKEN, "token-7", facility_id=published.received_from_id)
    b"".join(read_instance(published, reader, offset=10))
    event = AuditEvent.objects.filter(action=Action.INSTANCE_READ).get()
    assert (event.actor_kind, event.actor_id) == (ActorKind.API_TOKEN, "token-7")
    assert event.target_id == str(published.pk)
    assert event.study_id == published.study_id
    assert event.patient_id == published.study.patient_id
    assert event.detail == {"offset": 10}


@pytest.mark.parametrize("offset", [-1, 10**12])
def test_it_refuses_an_offset_outside_the_instance(published, offset) -> None:
    with pytest.raises(ValueError, match="offset outside"):
        read_instance(published, SYSTEM, offset=offset)
    assert not AuditEvent.objects.filter(action=Action.INSTANCE_READ).exists()


def test_an_unpublished_instance_cannot_be_read(received_study) -> None:
    study = received_study(instances=1)
    with pytest.raises(ObjectUnavailable):
        read_instance(Instance.objects.get(study=study), SYSTEM)


def test_a_stream_stops_when_access_ends(received_study, store) -> None:
    study = received_study(instances=1, rows=1100)  # over 2 MiB: three segments
    publish_spooled(NODE, store=store)
    instance = Instance.objects.get(study=study)
    allowed = iter([True, False])
    chunks = list(read_instance(instance, SYSTEM, still_allowed=lambda: next(allowed)))
    assert len(chunks) == 1


def test_a_swapped_object_of_the_same_study_is_refused(received_study, store) -> None:
    study = received_study(instances=2)
    publish_spooled(NODE, store=store)
    first, second = Instance.objects.filter(study=study).order_by("pk")
    with store.open(second.stored_object.name) as body:
        other = body.read()
    import io

    store.put(first.stored_object.name, io.BytesIO(other))
    with pytest.raises(IntegrityError):
        plaintext(first)
    assert AuditEvent.objects.filter(action=Action.OBJECT_INTEGRITY_FAILED).count() == 1


# --- Keys: rotation ---------------------------------------------------------------------------


@pytest.fixture
def keyring_file(settings, tmp_path):
    path = tmp_path / "keyring"
    LocalKeyring.load_or_create(path)
    settings.PORTAL_KEYRING_FILE = str(path)
    return path


def test_rotation_rewraps_every_key_and_objects_still_open(
    keyring_file, received_study, store
) -> None:
    received_study(instances=1, seed=1)
    received_study(instances=1, seed=2)
    publish_spooled(NODE, store=store)
    before = {key.study_id: bytes(key.wrapped_key) for key in StudyKey.objects.all()}
    names_before = stored_names(store)

    call_command("rotate_kek")

    assert get_keyring().current_kek_id() == "v2"
    assert set(StudyKey.objects.values_list("kek_id", flat=True)) == {"v2"}
    for key in StudyKey.objects.all():
        assert bytes(key.wrapped_key) != before[key.study_id]
    assert stored_names(store) == names_before  # objects untouched
    for instance in Instance.objects.all():
        assert hashlib.sha256(plaintext(instance)).hexdigest() == instance.sha256
    assert AuditEvent.objects.filter(action=Action.DATA_KEYS_REWRAPPED).count() == 1


def test_an_interrupted_rotation_resumes_without_adding_a_version(
    keyring_file, received_study, store
) -> None:
    for seed in (1, 2, 3):
        received_study(instances=1, seed=seed)
    publish_spooled(NODE, store=store)
    # What a run that dies after its first chunk leaves: a new version, one key moved to it.
    assert add_key_version() == "v2"
    next(rewrap_data_keys(chunk=1))
    assert StudyKey.objects.filter(kek_id="v2").count() == 1

    call_command("rotate_kek")

    assert get_keyring().current_kek_id() == "v2", "a resumed run must not add a version"
    assert set(StudyKey.objects.values_list("kek_id", flat=True)) == {"v2"}
    for instance in Instance.objects.all():
        assert hashlib.sha256(plaintext(instance)).hexdigest() == instance.sha256


def test_rotation_with_a_keyring_from_the_environment_says_how(settings, db) -> None:
    settings.PORTAL_KEYRING_FILE = ""
    settings.PORTAL_KEYRING_TEXT = "v1:" + "A" * 43 + "="
    with pytest.raises(CommandError, match="rewrap-only"):
        call_command("rotate_kek")


def test_a_broken_keyring_is_refused_at_start(settings) -> None:
    from sharing.apps import keyring_check

    settings.PORTAL_KEYRING_FILE = ""
    settings.PORTAL_KEYRING_TEXT = "v1:not-base64!"
    errors = keyring_check()
    assert [error.id for error in errors] == ["sharing.E001"]
    assert "not-base64" not in errors[0].msg  # never quotes key material
    with pytest.raises(KeyringError):
        get_keyring()


# --- Queueing: the node's own queue, one waiting task at a time --------------------------------


@pytest.fixture
def broker(stack_env):
    """The broker's Redis, with this node's publish queue and its marker empty."""
    import redis
    from django.core.cache import cache

    client = redis.Redis.from_url(stack_env["REDIS_URL"])
    queue = services.publish_queue(NODE)
    client.delete(queue)
    cache.delete(f"sharing:publish-pending:{NODE}")
    yield client, queue
    client.delete(queue)
    cache.delete(f"sharing:publish-pending:{NODE}")


def test_a_received_instance_queues_one_task_on_its_node_s_queue(
    received_study, broker, django_capture_on_commit_callbacks
) -> None:
    import json

    client, queue = broker
    with django_capture_on_commit_callbacks(execute=True):
        received_study(instances=3)
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    assert len(messages) == 1, "a burst of instances must not queue a task each"
    assert messages[0]["headers"]["task"] == "sharing.publish_spooled"
    assert client.llen("celery") == 0 or all(
        json.loads(raw)["headers"]["task"] != "sharing.publish_spooled"
        for raw in client.lrange("celery", 0, -1)
    )


def test_the_sweeper_queues_a_task_even_when_one_seems_pending(received_study, broker) -> None:
    from sharing.tasks import publish_sweep_task, request_publish

    client, queue = broker
    received_study(instances=1)
    request_publish(NODE)
    request_publish(NODE)
    assert client.llen(queue) == 1
    Instance.objects.update(received_at=timezone.now() - timedelta(hours=1))
    publish_sweep_task()
    assert client.llen(queue) == 2


def test_the_sweeper_settles_a_study_whose_task_died_before_settling_it(
    received_study, store, monkeypatch
) -> None:
    study = received_study(instances=2)
    monkeypatch.setattr(services, "_settle_studies", lambda ids: 0)  # the task dies right there
    assert publish_spooled(NODE, store=store).published == 2
    monkeypatch.undo()
    study.refresh_from_db()
    assert study.state == Study.State.PUBLISHING

    assert publish_sweep(store=store).studies_settled == 0  # a task may still be settling it
    report = publish_sweep(waiting_for=timedelta(0), store=store)

    assert report.studies_settled == 1
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE
    assert AuditEvent.objects.filter(action=Action.STUDY_PUBLISHED, study_id=study.pk).count() == 1


def test_a_full_batch_asks_for_the_next_one_before_publishing(received_study, store) -> None:
    received_study(instances=3)
    published_when_asked: list[int] = []

    def next_batch() -> None:
        published_when_asked.append(Instance.objects.filter(state="published").count())

    publish_spooled(NODE, batch_size=2, store=store, on_full_batch=next_batch)
    publish_spooled(NODE, batch_size=2, store=store, on_full_batch=next_batch)
    assert published_when_asked == [0], "asked once, for the full batch, before publishing"


@pytest.mark.parametrize("in_memory_max", [0, 32 * 1024**2], ids=["streamed", "in-memory"])
def test_both_upload_paths_store_what_decrypts_to_the_instance(
    received_study, store, settings, in_memory_max
) -> None:
    settings.PUBLISH_IN_MEMORY_MAX_BYTES = in_memory_max
    study = received_study(instances=2)
    assert publish_spooled(NODE, store=store).published == 2
    for instance in Instance.objects.filter(study=study):
        assert hashlib.sha256(plaintext(instance)).hexdigest() == instance.sha256
        assert store.size(instance.stored_object.name) == instance.stored_object.size_bytes


def test_a_spool_file_that_changed_since_ingest_is_not_published(received_study, store) -> None:
    received_study(instances=1)
    instance = Instance.objects.get()
    path = get_spool().path_of(instance.spool_name)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # a bit flipped on disk while it waited
    path.write_bytes(bytes(data))
    assert publish_spooled(NODE, store=store).published == 0
    assert not stored_names(store)
    assert StoredObject.objects.get().state == StoredObject.State.UPLOADING  # for the sweeper
