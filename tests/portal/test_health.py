"""GET /healthz against the real database, broker and object store (see scripts/stack.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from portal import views

# The load balancer gives up after a few seconds; the view promises an answer well before.
ANSWER_WITHIN_SECONDS = 2.0


@pytest.fixture
def health(db, client: Client, stack_env) -> Callable[[], tuple[int, dict, float]]:
    """GET /healthz, timed; the stack must be there, or the happy path would test stand-ins."""
    stack_env["REDIS_URL"]
    stack_env["S3_BUCKET"]

    def get() -> tuple[int, dict, float]:
        started = time.monotonic()
        response = client.get(reverse("health"))
        return response.status_code, response.json(), time.monotonic() - started

    return get


def objects_storage_with(**options: object) -> dict:
    objects = settings.STORAGES["objects"]
    return {
        **settings.STORAGES,
        "objects": {**objects, "OPTIONS": {**objects["OPTIONS"], **options}},
    }


def test_it_answers_ok_when_every_part_answers(health) -> None:
    status, body, _ = health()
    assert status == 200
    assert body["status"] == "ok"
    assert body["down"] == []
    assert {name: part["status"] for name, part in body["parts"].items()} == {
        "database": "ok",
        "broker": "ok",
        "object_store": "ok",
    }


def test_it_is_never_cached(db, client: Client) -> None:
    response = client.get(reverse("health"))
    assert "no-cache" in response["Cache-Control"]


def test_it_names_an_unreachable_broker(health, settings, unused_port: int) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{unused_port}/0"
    status, body, seconds = health()
    assert status == 503
    assert body["down"] == ["broker"]
    assert body["parts"]["broker"]["status"] == "down"
    assert seconds < ANSWER_WITHIN_SECONDS


def test_it_names_an_unreachable_object_store(health, settings, unused_port: int) -> None:
    settings.STORAGES = objects_storage_with(endpoint_url=f"http://127.0.0.1:{unused_port}")
    status, body, seconds = health()
    assert status == 503
    assert body["down"] == ["object_store"]
    assert seconds < ANSWER_WITHIN_SECONDS


def test_it_names_an_object_store_that_refuses_our_key(health, settings) -> None:
    settings.STORAGES = objects_storage_with(secret_key="not-the-secret-key")
    status, body, seconds = health()
    assert status == 503
    assert body["down"] == ["object_store"]
    assert seconds < ANSWER_WITHIN_SECONDS


def test_it_answers_by_the_deadline_when_a_part_hangs(health, monkeypatch) -> None:
    release = threading.Event()

    def hangs() -> str:
        release.wait(30)
        return "ok"

    monkeypatch.setitem(views.HEALTH_CHECKS, "broker", hangs)
    try:
        status, body, seconds = health()
    finally:
        release.set()
    assert status == 503
    assert body["parts"]["broker"] == {"status": "down", "error": "no answer in time"}
    assert body["parts"]["database"]["status"] == "ok"
    assert seconds < ANSWER_WITHIN_SECONDS


def test_it_refuses_post(db, client: Client) -> None:
    assert client.post(reverse("health")).status_code == 405
