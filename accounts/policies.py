"""Every view declares who may reach it; `tests/test_url_policies.py` enforces that.

    @policy(PUBLIC)  anyone, signed in or not (home page, health check, share-link entry)
    @policy(LOGIN)   any signed-in person (redirects anonymous visitors to sign in)
    @policy(ROLE)    signed-in staff with a role; the view's access helper checks which
    @policy(TOKEN)   a facility API token (DICOMweb); never a browser session

The marker survives further decorators that use functools.wraps (require_POST and friends),
so the URL test can read it from the resolved callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib.auth.decorators import login_required

PUBLIC = "public"
LOGIN = "login"
ROLE = "role"
TOKEN = "token"  # noqa: S105 (a policy name, not a secret)
POLICIES = frozenset({PUBLIC, LOGIN, ROLE, TOKEN})

View = TypeVar("View", bound=Callable[..., Any])


def policy(kind: str) -> Callable[[View], View]:
    if kind not in POLICIES:
        raise ValueError(f"unknown access policy {kind!r}")

    def decorate(view: View) -> View:
        wrapped: Any = login_required(view) if kind in (LOGIN, ROLE) else view
        wrapped.access_policy = kind
        return wrapped

    return decorate
