"""A real Celery worker takes a task from the real Redis broker and answers through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from portal.tasks import ping

CELERY = Path(sys.executable).parent / "celery"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(stack_env) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A portal worker` with the test's environment; stopped afterwards, always."""
    stack_env["REDIS_URL"]
    assert not settings.CELERY_TASK_ALWAYS_EAGER, "tasks would run in-process, not on the worker"
    command = [str(CELERY), "-A", "portal", "worker", "--loglevel", "warning"]
    command += ["--concurrency", "1", "--pool", "solo", "--without-gossip", "--without-mingle"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(os.environ),
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_it_runs_a_task_on_a_worker(worker: subprocess.Popen[bytes]) -> None:
    # Results are ignored unless asked for (task_ignore_result); this call asks.
    result = ping.apply_async(ignore_result=False)
    try:
        assert result.get(timeout=30) == "pong"
    finally:
        result.forget()
    assert worker.poll() is None, "the worker stopped while it should have been serving"
