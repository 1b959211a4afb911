"""Demo facilities and people for `make run`. Safe to run again: it only adds what is missing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from audit.codes import ActorKind
from facilities.models import AETitle, Facility, Membership, Role
from studies.models import Patient, Study
from studies.services import Channel, IngestSource, study_ingest_instance
from studies.spool import get_spool
from studies.synthetic import SyntheticPatient, generate_study

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

# The demo patient's studies at Riverside, made by the synthetic generator (small images, so
# the first `make run` stays quick), and one whose name disagrees with the patient on record,
# so the front desk's reconciliation queue has something to show.
DEMO_PATIENT = SyntheticPatient(
    patient_id="RGH-0042", name="DEMO^PAT", birth_date="19780412", sex="F", issuer="RGH"
)
DEMO_STUDIES = (
    # modality, instances, rows, study date, patient
    ("CT", 40, 256, "20260105", DEMO_PATIENT),
    ("MR", 20, 256, "20260310", DEMO_PATIENT),
    ("CR", 2, 512, "20260702", DEMO_PATIENT),
    ("US", 1, 240, "20260915", DEMO_PATIENT),
    (
        "CR",
        1,
        512,
        "20261020",
        SyntheticPatient(
            patient_id="RGH-0042",
            name="DEMO-SMITH^PAT",
            birth_date="19780412",
            sex="F",
            issuer="RGH",
        ),
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

        self._load_studies(facilities["Riverside General Hospital"])
        self._link_demo_patient()
        self.stdout.write(self.style.SUCCESS(f"Demo logins (password for all: {DEMO_PASSWORD})"))
        for email, _, _, facility_name, role in PEOPLE:
            who = f"{Role(role).label}, {facility_name}" if role else "Patient"
            self.stdout.write(f"  {email:<34} {who}")
        self.stdout.write(
            "Staff set up an authenticator app (TOTP) at their first sign-in; "
            "e-mails are printed to this console."
        )

    def _link_demo_patient(self) -> None:
        """The demo patient's account sees DEMO^PAT's studies, as if the front desk had
        checked their identity and linked it (the real way is an invitation)."""
        user = User.objects.get(email=PEOPLE[0][0])
        record = Patient.objects.filter(
            identifiers__issuer=DEMO_PATIENT.issuer, identifiers__value=DEMO_PATIENT.patient_id
        ).first()
        if record is None or record.account_id is not None:
            return
        if Patient.objects.filter(account=user).exists():
            return
        record.account = user
        record.save(update_fields=["account"])

    def _load_studies(self, riverside: Facility) -> None:
        """Ingest the demo studies as Riverside's archive would send them, once."""
        if Study.objects.filter(source_facility=riverside).exists():
            return
        source = IngestSource(riverside, Channel.IMPORT, ActorKind.SYSTEM, "load_demo")
        spool = get_spool()
        with tempfile.TemporaryDirectory() as folder:
            for seed, (modality, instances, rows, study_date, patient) in enumerate(DEMO_STUDIES):
                paths = generate_study(
                    Path(folder) / str(seed), modality=modality, instances=instances, rows=rows,
                    patient=patient, study_date=study_date, seed=seed,
                )  # fmt: skip
                for path in paths:
                    with path.open("rb") as file:
                        study_ingest_instance(path=spool.receive(file), source=source, spool=spool)
        waiting = Study.objects.filter(match=Study.Match.PENDING).count()
        self.stdout.write(
            f"Demo studies: {Study.objects.count()} held, {waiting} waiting for the front desk "
            "to match them."
        )
