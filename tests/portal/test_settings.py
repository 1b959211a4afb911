"""Settings refuse to start with a missing or bad variable, and pass Django's deployment check.

Each case starts a fresh interpreter: settings are read once per process, and what is tested
here is exactly what happens when a server process starts.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = (
    "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'portal.settings'); "
    "django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """The test's environment without the secret key: each test says what it sets."""
    environ = dict(os.environ)
    for name in ("DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY_FILE", "DJANGO_DEBUG"):
        environ.pop(name, None)
    environ["PORTAL_VAR_DIR"] = str(tmp_path / "var")
    return environ


def start(environ: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command) or [sys.executable, "-c", SETUP],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_starts_with_a_strong_secret_key(environ: dict[str, str]) -> None:
    environ["DJANGO_SECRET_KEY"] = key = secrets.token_urlsafe(50)
    started = start(environ)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == key


def test_it_refuses_to_start_without_a_secret_key(environ: dict[str, str]) -> None:
    started = start(environ)
    assert started.returncode != 0
    assert "ImproperlyConfigured" in started.stderr
    assert "DJANGO_SECRET_KEY" in started.stderr


def test_it_refuses_a_short_secret_key(environ: dict[str, str]) -> None:
    environ["DJANGO_SECRET_KEY"] = "too-short-to-be-a-key"
    started = start(environ)
    assert started.returncode != 0
    assert "DJANGO_SECRET_KEY must be at least 50 characters" in started.stderr


def test_it_reads_the_secret_key_from_a_file(environ: dict[str, str], tmp_path: Path) -> None:
    key = secrets.token_urlsafe(50)
    key_file = tmp_path / "secret_key"
    key_file.write_text(key + "\n")  # as `echo` and most secret stores write it
    environ["DJANGO_SECRET_KEY_FILE"] = str(key_file)
    started = start(environ)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == key


def test_it_names_a_secret_key_file_that_is_missing(
    environ: dict[str, str], tmp_path: Path
) -> None:
    environ["DJANGO_SECRET_KEY_FILE"] = str(tmp_path / "nowhere")
    started = start(environ)
    assert started.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY_FILE cannot be read" in started.stderr


def test_it_refuses_a_debug_flag_that_is_not_true_or_false(environ: dict[str, str]) -> None:
    environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    environ["DJANGO_DEBUG"] = "maybe"
    started = start(environ)
    assert started.returncode != 0
    assert "DJANGO_DEBUG must be true or false, not 'maybe'" in started.stderr


def test_it_passes_the_deployment_check_in_production(environ: dict[str, str]) -> None:
    environ.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_DEBUG="false",
        DJANGO_ALLOWED_HOSTS="portal.example.org",
        PORTAL_HTTPS="true",
    )
    checked = start(
        environ, sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout
