"""Guess counters: a fixed window per key, shared through the cache, refusing when the cache
cannot answer."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import RequestFactory

from accounts import guesses as counters
from accounts.guesses import address_key, count_guess, guesses


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.delete_many(["test:guesses", "test:other"])
    yield
    cache.delete_many(["test:guesses", "test:other"])


def test_it_counts_per_key_within_the_window() -> None:
    assert guesses("test:guesses") == 0
    for _ in range(3):
        count_guess("test:guesses", 60)
    count_guess("test:other", 60)
    assert guesses("test:guesses") == 3
    assert guesses("test:other") == 1


def test_the_window_ends_and_counting_starts_again() -> None:
    count_guess("test:guesses", 60)
    cache.delete("test:guesses")  # what the window's expiry does
    count_guess("test:guesses", 60)
    assert guesses("test:guesses") == 1


def test_a_cache_that_cannot_answer_counts_as_over_every_limit(monkeypatch) -> None:
    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(counters.cache, "get", down)
    monkeypatch.setattr(counters.cache, "add", down)
    assert guesses("test:guesses") > 10**9
    count_guess("test:guesses", 60)  # logged, not raised: the refusal is what matters


def test_keys_name_the_caller_s_address() -> None:
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.7")
    assert address_key("prefix", request) == "prefix:192.0.2.7"
