"""Publishing survives the faults production will meet, proven against the real services.

Every test but the last runs a real `celery -A portal worker` in a process of its own, on the
test's database, spool and keyring, and breaks something while it publishes: the worker itself
(SIGKILL), the object store (stopped for 30 seconds) or Redis (restarted, its queue lost). The
outcome must each time be the one a fault-free run gives: every instance published exactly once,
decrypting to the bytes received, and nothing left in the bucket that no row names. The last test
tampers with a stored object: reading it fails loudly and never yields a wrong byte.

Faults are made to land mid-batch, not by guessing delays: the worker is frozen (SIGSTOP) at a
moment the test has checked to be the interesting one, then broken, then let go.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from kombu import pools as kombu_pools

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from portal.celery import app as celery_app
from sharing.crypto import HEADER_SIZE, TAG_BYTES, IntegrityError
from sharing.models import StoredObject
from sharing.services import (
    OBJECT_KIND,
    Reader,
    publish_queue,
    publish_spooled,
    publish_sweep,
    read_instance,
)
from sharing.store import get_object_store
from sharing.tasks import request_publish
from studies.models import Instance, Study
from studies.spool import get_spool
from tests.sharing.faults_processes import (
    PrivateRedis,
    PrivateSeaweedFS,
    Worker,
    bucket_keys,
    empty_and_remove_bucket,
    s3_client,
    wait_for,
)

pytestmark = pytest.mark.stack

S3_VARIABLES = (
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_REGION",
    "S3_ADDRESSING_STYLE",
)
OBJECT_PREFIX = f"{OBJECT_KIND}/"
SYSTEM = Reader(actor_kind=ActorKind.SYSTEM)
STORE_OUTAGE_SECONDS = 30
# How long publishing may take to finish once the fault is over: the worker reconnects to Redis
# with growing pauses (2, 4, 6 s...), a retried task waits out its countdown first.
RECOVERY_SECONDS = 60


# --- The object store each test uses ----------------------------------------------------------


@dataclass
class Bucket:
    env: dict[str, str]  # the S3_* variables that point at it, for the worker
    client: Any

    @property
    def name(self) -> str:
        return self.env["S3_BUCKET"]

    def object_names(self) -> set[str]:
        return bucket_keys(self.client, self.name, OBJECT_PREFIX)


def use_object_store(settings: Any, env: dict[str, str]) -> None:
    """Point this process's object store (`STORAGES["objects"]`) at the S3 store `env` names.

    Changing STORAGES makes Django drop its cached backends (django.test.signals)."""
    objects = settings.STORAGES["objects"]
    options = {
        **objects["OPTIONS"],
        "bucket_name": env["S3_BUCKET"],
        "endpoint_url": env["S3_ENDPOINT_URL"],
        "access_key": env["S3_ACCESS_KEY_ID"],
        "secret_key": env["S3_SECRET_ACCESS_KEY"],
    }
    settings.STORAGES = {**settings.STORAGES, "objects": {**objects, "OPTIONS": options}}
    store = get_object_store()
    assert store.is_s3
    assert store.storage.bucket_name == env["S3_BUCKET"]


@pytest.fixture
def stack_bucket(stack_env, settings) -> Iterator[Bucket]:
    """A bucket of the test's own on the stack's S3 store: objects of other tests are not ours
    to count as orphans."""
    env = {name: stack_env[name] for name in S3_VARIABLES}
    env["S3_BUCKET"] = f"faults-{secrets.token_hex(6)}"
    client = s3_client(env)
    client.create_bucket(Bucket=env["S3_BUCKET"])
    try:
        use_object_store(settings, env)
        yield Bucket(env, client)
    finally:
        empty_and_remove_bucket(client, env["S3_BUCKET"])


@pytest.fixture
def private_store(stack_env, settings, tmp_path: Path) -> Iterator[PrivateSeaweedFS]:
    """A SeaweedFS of the test's own, which it may stop and start again."""
    seaweed = PrivateSeaweedFS(tmp_path / "seaweedfs")
    try:
        use_object_store(settings, seaweed.start_store())
        yield seaweed
    finally:
        seaweed.close()


# --- Redis ---------------------------------------------------------------------------------------


@contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Make this process's Celery app send to the broker at `url`, then back."""

    def drop_connections() -> None:
        # The app keeps a connection pool and a producer pool bound to the broker it first used;
        # both come from kombu's global registries, which must forget them too, or a later
        # test would be handed the closed pool.
        kombu_pools.reset()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    saved = celery_app.conf.broker_url
    drop_connections()
    celery_app.conf.broker_url = url
    try:
        yield
    finally:
        drop_connections()
        celery_app.conf.broker_url = saved


@pytest.fixture
def private_redis(stack_env, settings, tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, as broker (db 0) and cache (db 1) of this process too."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": server.url(1)}}
        with celery_broker(server.url(0)):
            yield server
    finally:
        server.close()


def queued_messages(url: str, node: str) -> int:
    """Messages waiting in the node's publish queue, or delivered and not yet acknowledged."""
    client = redis.Redis.from_url(url)
    try:
        queue = publish_queue(node)
        waiting = sum(
            int(client.llen(key)) for key in client.keys(f"{queue}*") if client.type(key) == b"list"
        )
        return waiting + int(client.hlen("unacked"))
    finally:
        client.close()


def forget_node_queue(url: str, node: str) -> None:
    """Remove what the node's queue left in a shared Redis: its keys and unacknowledged
    messages (a SIGKILLed worker's task would otherwise be put back in an hour)."""
    client = redis.Redis.from_url(url)
    try:
        queue = publish_queue(node)
        for key in client.keys(f"*{queue}*"):
            client.delete(key)
        for tag, message in client.hgetall("unacked").items():
            if queue.encode() in message:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


# --- The worker ----------------------------------------------------------------------------------


@pytest.fixture
def node(settings) -> str:
    """A node name of the test's own: its publish queue is nobody else's."""
    settings.PORTAL_NODE = f"faults-{secrets.token_hex(4)}"
    return settings.PORTAL_NODE


def worker_database_url() -> str:
    # The test database exists only while tests run, under the name pytest-django gave it.
    name = settings.DATABASES["default"]["NAME"]
    return urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()


@pytest.fixture
def start_worker(stack_env, node: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """`start_worker(s3=bucket.env, VARIABLE=value...)`: a real worker on this test's database,
    spool, keyring and node; every one started is stopped afterwards."""
    assert not settings.CELERY_TASK_ALWAYS_EAGER, "tasks would run in this process"
    workers: list[Worker] = []

    def start(*, s3: dict[str, str], **variables: str) -> Worker:
        env = {
            **os.environ,
            "DATABASE_URL": worker_database_url(),
            "INGEST_SPOOL_DIR": str(settings.INGEST_SPOOL_DIR),
            "PORTAL_KEYRING": stack_env["PORTAL_KEYRING"],
            "PORTAL_NODE": node,
            **s3,
            **variables,
        }
        number = len(workers) + 1
        worker = Worker(env, log=tmp_path / f"worker-{number}.log", name=f"{node}-{number}")
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


# --- What the tests look at ------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    published: int
    publishing: int
    received: int
    claims: frozenset[str]  # names of the objects being uploaded (claims not yet finished)


def progress(study: Study) -> Progress:
    counts = {state: 0 for state in Instance.State.values}
    for state in Instance.objects.filter(study=study).values_list("state", flat=True):
        counts[state] += 1
    claims = StoredObject.objects.filter(
        instance__study=study, state=StoredObject.State.UPLOADING
    ).values_list("name", flat=True)
    return Progress(
        published=counts[Instance.State.PUBLISHED],
        publishing=counts[Instance.State.PUBLISHING],
        received=counts[Instance.State.RECEIVED],
        claims=frozenset(claims),
    )


def freeze_mid_batch(
    worker: Worker,
    study: Study,
    ready: Callable[[Progress], bool],
    *,
    published: int,
    timeout: float = 60,
) -> Progress:
    """Freeze the worker (SIGSTOP) at a moment when at least `published` instances are published
    and `ready` holds of the study's progress.

    The state is read while the worker is stopped, after a pause long enough for the database to
    act on anything the worker sent just before it stopped, so it is the state the fault meets.
    """
    total = Study.objects.get(pk=study.pk).number_of_instances
    wait_for(
        lambda: progress(study).published >= published,
        timeout=timeout,
        what=f"{published} instances to be published",
        interval=0.02,
        details=worker.describe,
    )
    deadline = time.monotonic() + timeout
    while True:
        worker.freeze()
        time.sleep(0.05)
        now = progress(study)
        if ready(now):
            return now
        worker.thaw()
        assert now.published < total, "publishing finished before the fault could land"
        assert worker.running, worker.describe()
        assert time.monotonic() < deadline, f"never saw the moment for the fault: {now}\n" + (
            worker.describe()
        )
        time.sleep(0.02 + secrets.randbelow(40) / 1000)


def has_claims(now: Progress) -> bool:
    return bool(now.claims)


def study_available(study: Study) -> bool:
    return Study.objects.get(pk=study.pk).state == Study.State.AVAILABLE


def assert_published_exactly_once(study: Study, bucket: Bucket, *, instances: int) -> None:
    """The outcome of a fault-free run: each instance published once, every object decrypting
    to the bytes received, and the bucket holding exactly the objects the rows name."""
    study.refresh_from_db()
    assert study.state == Study.State.AVAILABLE
    assert study.number_of_instances == instances
    # Counted when a claim is finished: a claim finished twice would count twice.
    assert study.number_of_published_instances == instances
    rows = list(Instance.objects.filter(study=study).order_by("pk"))
    assert len(rows) == instances
    assert {(row.state, row.spool_name) for row in rows} == {(Instance.State.PUBLISHED, "")}
    objects = StoredObject.objects.filter(instance__study=study)
    assert objects.count() == instances
    assert set(objects.values_list("state", flat=True)) == {StoredObject.State.STORED}
    announced = AuditEvent.objects.filter(action=Action.STUDY_PUBLISHED, study_id=study.pk)
    assert announced.count() == 1
    for row in rows:
        digest = hashlib.sha256()
        for chunk in read_instance(row, SYSTEM):
            digest.update(chunk)
        assert digest.hexdigest() == row.sha256, f"instance {row.pk} does not decrypt as received"
    assert bucket.object_names() == set(StoredObject.objects.values_list("name", flat=True))


def spooled_files() -> list[Path]:
    return list(get_spool().instances_dir.glob("*/*"))


def unpublished_files_kept(study: Study) -> bool:
    """Every instance not yet published still has its file in the spool: nothing is lost."""
    spool = get_spool()
    waiting = Instance.objects.filter(study=study).exclude(state=Instance.State.PUBLISHED)
    return all(
        spool.path_of(name).is_file() for name in waiting.values_list("spool_name", flat=True)
    )


def retry_delays(worker: Worker) -> list[int]:
    """The delays the worker's publish tasks announced when the store failed them."""
    found = re.findall(
        r"Publishing paused \(StoreUnavailable\); retrying in (\d+) s", (worker.output())
    )
    return [int(delay) for delay in found]


# --- The faults --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_publishes_everything_once_after_a_worker_is_killed_mid_batch(
    stack_env, node, received_study, stack_bucket, start_worker
) -> None:
    instances = 40
    study = received_study(instances=instances, rows=512)  # its publish task waits in Redis
    try:
        # One batch claims everything, so the kill always lands inside it.
        worker = start_worker(s3=stack_bucket.env, PUBLISH_BATCH_SIZE="1000")

        def uploaded_but_not_recorded(now: Progress) -> bool:
            return bool(now.claims & stack_bucket.object_names())

        at_kill = freeze_mid_batch(worker, study, uploaded_but_not_recorded, published=8)
        worker.kill()

        # What the crash left: claims nobody will finish, an object no finished row names.
        after = progress(study)
        assert after == at_kill, "the database changed after the worker was frozen"
        assert 0 < after.published < instances
        assert after.publishing == len(after.claims) == instances - after.published
        assert after.claims & stack_bucket.object_names()
        assert unpublished_files_kept(study)

        # Beat's sweep, with the lease run out: release every claim (deleting what was uploaded
        # under it), and queue a publish task for the node, as publish_sweep_task does.
        sweep = publish_sweep(lease=timedelta(0))
        assert sweep.released == len(after.claims)
        assert sweep.nodes_to_kick == {node}
        assert not stack_bucket.object_names() & after.claims
        for kicked in sweep.nodes_to_kick:
            request_publish(kicked, force=True)

        restarted = start_worker(s3=stack_bucket.env, PUBLISH_BATCH_SIZE="1000")
        wait_for(
            lambda: study_available(study),
            timeout=RECOVERY_SECONDS,
            what="the study to become available after the restart",
            details=restarted.describe,
        )
        assert_published_exactly_once(study, stack_bucket, instances=instances)
        # Released claims were published afresh, under names of their own.
        assert not set(StoredObject.objects.values_list("name", flat=True)) & after.claims
    finally:
        forget_node_queue(stack_env["REDIS_URL"], node)


@pytest.mark.django_db(transaction=True)
def test_it_waits_out_a_store_outage_and_loses_nothing(
    stack_env, node, received_study, private_store, start_worker
) -> None:
    instances = 24
    study = received_study(instances=instances, rows=256)
    bucket = Bucket(private_store.env, private_store.client())
    try:
        worker = start_worker(
            s3=private_store.env, PUBLISH_BATCH_SIZE="4", PUBLISH_RETRY_MAX_SECONDS="4"
        )
        freeze_mid_batch(worker, study, has_claims, published=4)
        private_store.stop_store()
        outage_ends = time.monotonic() + STORE_OUTAGE_SECONDS
        worker.thaw()

        # The task meets the outage and retries, and while the store is down nothing more is
        # recorded as published, and no instance waiting loses its file.
        wait_for(
            lambda: retry_delays(worker),
            timeout=STORE_OUTAGE_SECONDS - 5,
            what="the task to retry",
            details=worker.describe,
        )
        stalled = progress(study)
        while time.monotonic() < outage_ends:
            assert progress(study).published == stalled.published, "published without a store"
            assert unpublished_files_kept(study)
            time.sleep(0.5)
        assert stalled.published < instances
        retries_in_outage = len(retry_delays(worker))

        private_store.restart_store()
        wait_for(
            lambda: study_available(study),
            timeout=RECOVERY_SECONDS,
            what="the study to become available after the store came back",
            details=worker.describe,
        )
        assert_published_exactly_once(study, bucket, instances=instances)
        assert spooled_files() == []
        # It kept retrying through the outage, each task in flight backing off 1, 2, 4 s on its
        # own (their announcements interleave), capped by the setting.
        delays = retry_delays(worker)
        assert retries_in_outage >= 3
        assert set(delays) == {1, 2, 4}
    finally:
        forget_node_queue(stack_env["REDIS_URL"], node)


@pytest.mark.django_db(transaction=True)
def test_it_publishes_everything_once_after_redis_restarts(
    node, received_study, stack_bucket, private_redis, start_worker
) -> None:
    instances = 24
    study = received_study(instances=instances, rows=256)  # queued in the private Redis
    broker = private_redis.url(0)
    worker = start_worker(
        s3=stack_bucket.env,
        REDIS_URL=broker,
        CACHE_URL=private_redis.url(1),
        PUBLISH_BATCH_SIZE="4",
    )
    at_restart = freeze_mid_batch(worker, study, has_claims, published=4)
    private_redis.stop()
    worker.thaw()
    # The task in hand needs no Redis for its batch, but cannot queue the next one; it must be
    # over before Redis comes back, or its retries to queue might reach the new Redis.
    task_id = StoredObject.objects.filter(name__in=at_restart.claims).values_list(
        "claim_token", flat=True
    )[0]
    wait_for(
        lambda: re.search(rf"publish_spooled\[{task_id}\] (succeeded|raised)", worker.output()),
        timeout=RECOVERY_SECONDS,
        what="the task to finish the batch it held",
        details=worker.describe,
    )
    private_redis.start()

    # Redis came back empty: no task will ever publish what still waits.
    waiting = progress(study)
    assert at_restart.published < waiting.published < instances
    assert waiting.received == instances - waiting.published
    assert unpublished_files_kept(study)
    assert queued_messages(broker, node) == 0

    sweep = publish_sweep(lease=timedelta(0), waiting_for=timedelta(0))
    assert sweep.released == 0
    assert sweep.nodes_to_kick == {node}
    for kicked in sweep.nodes_to_kick:
        request_publish(kicked, force=True)
    wait_for(
        lambda: study_available(study),
        timeout=RECOVERY_SECONDS,
        what="the study to become available after the sweep requeued it",
        details=worker.describe,
    )
    assert_published_exactly_once(study, stack_bucket, instances=instances)
    assert spooled_files() == []


# --- A tampered object ---------------------------------------------------------------------------


def flip_byte(bucket: Bucket, name: str, position: int) -> None:
    """What an attacker with write access to the bucket can do: change one bit of an object."""
    body = bytearray(bucket.client.get_object(Bucket=bucket.name, Key=name)["Body"].read())
    body[position] ^= 0x01
    bucket.client.put_object(Bucket=bucket.name, Key=name, Body=bytes(body))


@pytest.mark.django_db
def test_it_never_yields_a_byte_of_a_tampered_object_and_raises_the_alarm(
    node, received_study, stack_bucket, caplog
) -> None:
    study = received_study(instances=3, rows=1024)  # 2 MiB of pixels: three segments each
    assert publish_spooled(node).published == 3
    in_segment, in_header, control = Instance.objects.filter(study=study).order_by("pk")
    plaintext = b"".join(read_instance(in_segment, SYSTEM))
    assert hashlib.sha256(plaintext).hexdigest() == in_segment.sha256
    stored = in_segment.stored_object
    segment = stored.segment_size
    assert len(plaintext) > 2 * segment

    # One bit in the middle of the second segment.
    flip_byte(stack_bucket, stored.name, HEADER_SIZE + (segment + TAG_BYTES) + segment // 2)
    flip_byte(stack_bucket, in_header.stored_object.name, HEADER_SIZE // 2)

    released: list[bytes] = []
    with caplog.at_level(logging.CRITICAL, logger="sharing.services"):
        with pytest.raises(IntegrityError):
            released.extend(read_instance(in_segment, SYSTEM))  # keeps what came before the error
        # The first segment was authentic and is released; of the second, not one byte.
        assert b"".join(released) == plaintext[:segment]
        # A read that starts inside the tampered segment gets nothing at all.
        with pytest.raises(IntegrityError):
            next(read_instance(in_segment, SYSTEM, offset=segment + 10))
        # A tampered header fails before the first byte.
        with pytest.raises(IntegrityError):
            next(read_instance(in_header, SYSTEM))

    failures = AuditEvent.objects.filter(action=Action.OBJECT_INTEGRITY_FAILED).order_by("sequence")
    assert [(event.target_id, event.outcome, event.study_id) for event in failures] == [
        (str(in_segment.pk), Outcome.ERROR, study.pk),
        (str(in_segment.pk), Outcome.ERROR, study.pk),
        (str(in_header.pk), Outcome.ERROR, study.pk),
    ]
    alerts = [
        record
        for record in caplog.records
        if record.levelno == logging.CRITICAL and record.getMessage().startswith("ALERT")
    ]
    assert [record.name for record in alerts] == ["sharing.services"] * 3
    # The alert names the instance by its row id only: no UID, no name (rule 5).
    for record in alerts:
        message = record.getMessage()
        assert in_segment.sop_instance_uid not in message
        assert "DOE" not in message

    # The other objects of the study are untouched and still read.
    copy = b"".join(read_instance(control, SYSTEM))
    assert hashlib.sha256(copy).hexdigest() == control.sha256
