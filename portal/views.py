from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template import loader
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.policies import LOGIN, PUBLIC, ROLE, policy
from facilities.access import request_is_staff
from facilities.models import Facility
from facilities.selectors import memberships_for_user
from sharing.store import get_object_store
from studies.access import get_patient_for_user, reconciling_facilities
from studies.selectors import studies_waiting_for_a_person

HEALTH_DEADLINE_SECONDS = 1.5


@policy(PUBLIC)
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "portal/landing.html")
    if request_is_staff(request):
        return redirect("portal:staff-home")
    return redirect("portal:patient-home")


@policy(LOGIN)
@require_GET
def patient_home(request: HttpRequest) -> HttpResponse:
    """A patient whose account is linked to their records lands on their studies."""
    if get_patient_for_user(request.user) is not None:  # type: ignore[arg-type]
        return redirect("studies:mine")
    return render(request, "portal/patient_home.html")


@policy(ROLE)
@require_GET
def staff_home(request: HttpRequest) -> HttpResponse:
    if not request_is_staff(request):
        raise PermissionDenied("This page is for facility staff.")
    memberships = memberships_for_user(request.user)  # type: ignore[arg-type]
    # Platform admins manage the staff of every facility, first admins included.
    all_facilities = Facility.objects.order_by("name") if request.user.is_superuser else None
    waiting = studies_waiting_for_a_person(
        reconciling_facilities(request.user)  # type: ignore[arg-type]
    ).count()
    return render(
        request,
        "portal/staff_home.html",
        {"memberships": memberships, "all_facilities": all_facilities, "waiting": waiting},
    )


# --- Health ---------------------------------------------------------------------------------


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this ran in a worker thread with its own connection
    return "ok"


def _check_broker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "in-process"
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1
    )
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


def _check_store() -> str:
    get_object_store().check(timeout=1.0)
    return "ok"


HEALTH_CHECKS: dict[str, Callable[[], str]] = {
    "database": _check_database,
    "broker": _check_broker,
    "object_store": _check_store,
}


@policy(PUBLIC)
@require_GET
@never_cache
def health(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and the object store all answer; else 503 naming them.

    The checks run side by side against one deadline, so a part that hangs is reported as
    such instead of holding the answer past the load balancer's timeout.
    """
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=len(HEALTH_CHECKS), thread_name_prefix="health")
    futures = {name: pool.submit(check) for name, check in HEALTH_CHECKS.items()}
    wait(futures.values(), timeout=HEALTH_DEADLINE_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    parts: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        if not future.done():
            parts[name] = {"status": "down", "error": "no answer in time"}
        elif future.exception() is not None:
            parts[name] = {"status": "down", "error": type(future.exception()).__name__}
        else:
            parts[name] = {"status": future.result()}
    healthy = all(part["status"] != "down" for part in parts.values())
    body = {
        "status": "ok" if healthy else "down",
        "down": sorted(name for name, part in parts.items() if part["status"] == "down"),
        "parts": parts,
        "seconds": round(time.monotonic() - started, 3),
    }
    return JsonResponse(body, status=200 if healthy else 503)


# --- Error pages: plain words, never a stack trace ------------------------------------------


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/400.html", status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/403.html", status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # Rendered without the request's context: the session or the database may be what failed.
    return HttpResponse(loader.render_to_string("errors/500.html"), status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    return render(request, "errors/csrf.html", status=403)
