"""The helpers that read settings from the environment (portal/env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.env import email_settings, env_bool, env_int, env_list, env_secret

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), (" Yes ", True), ("1", True), ("off", False), ("0", False), ("", False)],
)
def test_it_reads_a_flag(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("PORTAL_FLAG", raw)
    assert env_bool("PORTAL_FLAG", not expected) is expected


def test_it_gives_the_default_for_an_unset_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTAL_FLAG", raising=False)
    assert env_bool("PORTAL_FLAG", True) is True


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_it_refuses_a_flag_that_is_not_true_or_false(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PORTAL_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match=f"PORTAL_FLAG must be true or false.*{raw}"):
        env_bool("PORTAL_FLAG")


def test_it_reads_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_NUMBER", " 42 ")
    assert env_int("PORTAL_NUMBER", 7) == 42
    monkeypatch.setenv("PORTAL_NUMBER", "")
    assert env_int("PORTAL_NUMBER", 7) == 7


@pytest.mark.parametrize("raw", ["twelve", "1.5", "12 hours"])
def test_it_refuses_a_number_that_is_not_whole(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("PORTAL_NUMBER", raw)
    with pytest.raises(ImproperlyConfigured, match="PORTAL_NUMBER must be a whole number"):
        env_int("PORTAL_NUMBER", 7)


def test_it_reads_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_HOSTS", " a.example.org, ,b.example.org,")
    assert env_list("PORTAL_HOSTS") == ["a.example.org", "b.example.org"]


def test_it_prefers_a_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\n")
    monkeypatch.setenv("PORTAL_SECRET", "from-the-variable")
    monkeypatch.setenv("PORTAL_SECRET_FILE", str(secret_file))
    assert env_secret("PORTAL_SECRET") == "from-the-file"


def test_it_refuses_a_secret_that_is_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTAL_SECRET_FILE", raising=False)
    monkeypatch.setenv("PORTAL_SECRET", "   short  ")
    with pytest.raises(ImproperlyConfigured, match="PORTAL_SECRET must be at least 10"):
        env_secret("PORTAL_SECRET", min_length=10)


def test_it_has_no_secret_when_none_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTAL_SECRET", raising=False)
    monkeypatch.delenv("PORTAL_SECRET_FILE", raising=False)
    assert env_secret("PORTAL_SECRET") is None


def test_it_configures_smtp() -> None:
    assert email_settings("smtp://mailer:p%40ss@mail.example.org:587?tls=1") == {
        "EMAIL_BACKEND": SMTP_BACKEND,
        "EMAIL_HOST": "mail.example.org",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "mailer",
        "EMAIL_HOST_PASSWORD": "p@ss",
        "EMAIL_USE_SSL": False,
        "EMAIL_USE_TLS": True,
        "EMAIL_TIMEOUT": 10,
    }


def test_it_configures_plain_smtp_on_port_25() -> None:
    settings = email_settings("smtp://127.0.0.1")
    assert settings["EMAIL_PORT"] == 25
    assert settings["EMAIL_USE_TLS"] is False
    assert settings["EMAIL_HOST_USER"] == ""


def test_it_configures_smtps_with_implicit_tls() -> None:
    settings = email_settings("smtps://mail.example.org")
    assert settings["EMAIL_BACKEND"] == SMTP_BACKEND
    assert settings["EMAIL_PORT"] == 465
    assert settings["EMAIL_USE_SSL"] is True


def test_it_configures_the_console() -> None:
    assert email_settings("console://") == {
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"
    }


@pytest.mark.parametrize("url", ["ftp://mail.example.org", "mail.example.org", ""])
def test_it_refuses_an_unknown_email_scheme(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL has an unknown scheme"):
        email_settings(url)


@pytest.mark.parametrize("url", ["smtp://", "smtps://:465", "smtp:///path"])
def test_it_refuses_an_email_url_without_a_host(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL names no host"):
        email_settings(url)
