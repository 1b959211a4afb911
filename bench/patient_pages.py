"""Patient pages benchmark: server time of the patient's studies page with many studies.

One command (PostgreSQL is used or started by the stack script):

    .venv/bin/python scripts/stack.py run -- .venv/bin/python -m bench.patient_pages

A throwaway test database (`test_<name>` beside the one DATABASE_URL names, which is not
touched) is created and migrated; one patient gets `--studies` studies (2 series each, at two
facilities) and `--grants` consent grants; then the page is requested `--requests` times with
Django's test client, in this process, after `--warmup` requests. The time is the handler's
wall time for each request (middleware, view, queries, template), without network. The
median, p95 and the number of queries of one request are printed; the database is dropped at
the end. Synthetic data only: no PHI.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import django


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--grants", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget-ms", type=float, default=150.0)
    parser.add_argument(
        "--profile", action="store_true", help="print where the time of 10 requests goes"
    )
    options = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    setup_test_environment()
    # The page is what is measured, not the hashed names of collected static files.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        client = _populate(options.studies, options.grants)
        url = "/studies/mine/"
        for _ in range(options.warmup):
            assert client.get(url).status_code == 200
        queries: list[str] = []

        def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
            queries.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            response = client.get(url)
        assert response.status_code == 200
        assert response.content.count(b'href="/studies/mine/') >= options.studies
        if options.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(10):
                client.get(url)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        timings = []
        for _ in range(options.requests):
            started = time.perf_counter()
            client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()

    timings.sort()
    median = statistics.median(timings)
    p95 = timings[min(len(timings) - 1, round(0.95 * len(timings)) - 1)]
    print(
        f"patient studies page: {options.studies} studies, {options.grants} consent grants, "
        f"{options.requests} requests"
    )
    print(f"  median {median:7.1f} ms")
    print(f"  p95    {p95:7.1f} ms")
    print(f"  min    {timings[0]:7.1f} ms   max {timings[-1]:7.1f} ms")
    print(f"  queries per request: {len(queries)}")
    verdict = "within" if p95 < options.budget_ms else "OVER"
    print(f"  p95 is {verdict} the {options.budget_ms:.0f} ms budget")
    return 0 if p95 < options.budget_ms else 1


def _populate(studies: int, grants: int):  # type: ignore[no-untyped-def]
    from django.test import Client
    from django.utils import timezone

    from accounts.models import User
    from consent.models import ConsentGrant, Purpose
    from facilities.models import Facility
    from studies.models import Patient, PatientIdentifier, Series, Study

    origin = Facility.objects.create(name="Bench General Hospital", kind="originating")
    other = Facility.objects.create(name="Bench Imaging Center", kind="both")
    grantees = [
        Facility.objects.create(name=f"Bench Receiving {n}", kind="receiving")
        for n in range(grants)
    ]
    user = User.objects.create_user("bench.patient@example.org", "bench-password-123")
    patient = Patient.objects.create(
        name="BENCH^PATIENT", birth_date=datetime.date(1970, 1, 1), account=user
    )
    PatientIdentifier.objects.create(patient=patient, facility=origin, issuer="BGH", value="B-1")
    today = timezone.localdate()
    modalities = ["CT", "MR", "CR", "US", "MG", "NM"]
    rows = Study.objects.bulk_create(
        Study(
            study_instance_uid=f"2.25.9{n:08d}",
            source_facility=origin if n % 3 else other,
            patient=patient,
            patient_name="BENCH^PATIENT",
            patient_id_value="B-1",
            issuer_of_patient_id="BGH",
            study_date=today - datetime.timedelta(days=7 * n),
            modalities_in_study=modalities[n % len(modalities)],
            description="" if n % 4 == 0 else f"{modalities[n % len(modalities)]} EXAM {n}",
            number_of_series=2,
            number_of_instances=40 + n % 200,
            number_of_published_instances=40 + n % 200,
            state=Study.State.AVAILABLE,
            available_until=today + datetime.timedelta(days=365),
        )
        for n in range(studies)
    )
    Series.objects.bulk_create(
        Series(
            study=study,
            series_instance_uid=f"{study.study_instance_uid}.{k}",
            modality=study.modalities_in_study,
            series_number=k,
            body_part=["CHEST", "HEAD", "KNEE", "ABDOMEN"][(i + k) % 4],
            number_of_instances=20,
        )
        for i, study in enumerate(rows)
        for k in (1, 2)
    )
    now = timezone.now()
    for n, grantee in enumerate(grantees):
        ConsentGrant.objects.create(
            patient=patient,
            grantee_facility=grantee,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
            valid_from=now - datetime.timedelta(days=n),
            valid_until=now + datetime.timedelta(days=365),
            source=ConsentGrant.Source.PATIENT_ONLINE,
            created_by=user,
        )
    client = Client()
    client.force_login(user)
    return client


if __name__ == "__main__":
    sys.exit(main())
