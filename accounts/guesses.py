"""Counting guesses at secrets: fixed-window counters in the cache, shared by every web process
(Redis in production), for every page that refuses a secret (staff and patient invitation
links, share-link tokens and codes, API tokens).

A cache that cannot answer counts as over every limit: guessing must not go unlimited while
Redis is down, and a refusal says "try later" rather than failing the page.
"""

from __future__ import annotations

import logging
import sys

from django.core.cache import cache
from django.http import HttpRequest

from audit.services import client_address

logger = logging.getLogger(__name__)


def address_key(prefix: str, request: HttpRequest) -> str:
    """The counter of `prefix` for the caller's address."""
    return f"{prefix}:{client_address(request) or 'unknown'}"


def guesses(key: str) -> int:
    """How many were counted under `key` in its current window."""
    try:
        return int(cache.get(key, 0))
    except Exception:
        logger.warning("Guess counter unavailable; refusing", exc_info=True)
        return sys.maxsize


def count_guess(key: str, window_seconds: int) -> None:
    """Count one under `key`; the window starts with the first."""
    try:
        if cache.add(key, 1, timeout=window_seconds):
            return
        try:
            cache.incr(key)
        except ValueError:  # the window ended between add() and incr(): start a new one
            cache.set(key, 1, timeout=window_seconds)
    except Exception:
        logger.warning("Guess counter unavailable", exc_info=True)
