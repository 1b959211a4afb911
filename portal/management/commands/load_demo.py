"""Demo facilities and people for `make run`. Safe to run again: it only adds what is missing."""

from __future__ import annotations

from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from facilities.models import AETitle, Facility, Membership, Role

DEMO_PASSWORD = "demo-portal-2026"  # noqa: S105 (printed to the developer; DEBUG only)

FACILITIES = (
    ("Riverside General Hospital", Facility.Kind.ORIGINATING, "RIVERSIDE_PACS", "RGH"),
    ("Lakeside Imaging Center", Facility.Kind.RECEIVING, "LAKESIDE_VIEW", "LIC"),
)
PEOPLE = (
    # e-mail, first name, last name, facility (None: a patient), role
    ("patient@example.org", "Pat", "Demo", None, None),
    (
        "frontdesk@riverside.example.org",
        "Frankie",
        "Desk",
        "Riverside General Hospital",
        Role.FRONT_DESK,
    ),
    (
        "admin@riverside.example.org",
        "Ada",
        "Admin",
        "Riverside General Hospital",
        Role.FACILITY_ADMIN,
    ),
    (
        "doctor@lakeside.example.org",
        "Casey",
        "Clinician",
        "Lakeside Imaging Center",
        Role.CLINICIAN,
    ),
)


class Command(BaseCommand):
    help = "Create the demo facilities and logins of `make run` (embedded default only)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "Demo logins have a published password: load them with DJANGO_DEBUG=true only."
            )
        with transaction.atomic():
            facilities = {}
            for name, kind, ae_title, issuer in FACILITIES:
                facility, _ = Facility.objects.get_or_create(
                    name=name, defaults={"kind": kind, "default_issuer_of_patient_id": issuer}
                )
                AETitle.objects.get_or_create(facility=facility, ae_title=ae_title)
                facilities[name] = facility
            for email, first_name, last_name, facility_name, role in PEOPLE:
                user = User.objects.filter(email=email).first()
                if user is None:
                    user = User.objects.create_user(
                        email, DEMO_PASSWORD, first_name=first_name, last_name=last_name
                    )
                EmailAddress.objects.get_or_create(
                    user=user, email=email, defaults={"verified": True, "primary": True}
                )
                if facility_name is not None:
                    Membership.objects.get_or_create(
                        user=user, facility=facilities[facility_name], defaults={"role": role}
                    )

        self.stdout.write(self.style.SUCCESS(f"Demo logins (password for all: {DEMO_PASSWORD})"))
        for email, _, _, facility_name, role in PEOPLE:
            who = f"{Role(role).label}, {facility_name}" if role else "Patient"
            self.stdout.write(f"  {email:<34} {who}")
        self.stdout.write(
            "Staff set up an authenticator app (TOTP) at their first sign-in; "
            "e-mails are printed to this console."
        )
