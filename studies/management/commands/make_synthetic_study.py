"""Write a synthetic study (CT, MR, CR or US multi-frame) with real pixel data to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.synthetic import (
    MODALITIES,
    TRANSFER_SYNTAXES,
    SyntheticPatient,
    generate_study,
    parse_yyyymmdd,
)


class Command(BaseCommand):
    help = (
        "Write a synthetic DICOM study (synthetic names only) for the demo, tests and benchmarks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--modality", choices=MODALITIES, default="CT")
        parser.add_argument("--instances", type=int, default=10)
        parser.add_argument("--rows", type=int, default=512)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--patient-id", default="SYN000001")
        parser.add_argument("--patient-name", default="SYNTHETIC^PATIENT")
        parser.add_argument("--birth-date", default="19700101")
        parser.add_argument("--issuer", default="SYNTHETIC")
        parser.add_argument("--study-date", default="20260102")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--transfer-syntax", choices=sorted(TRANSFER_SYNTAXES), default="explicit"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["instances"] < 1 or options["rows"] < 16:
            raise CommandError("--instances must be at least 1 and --rows at least 16")
        try:
            birth_date = parse_yyyymmdd(options["birth_date"])
            study_date = parse_yyyymmdd(options["study_date"])
        except ValueError as error:
            raise CommandError("dates are YYYYMMDD") from error
        paths = generate_study(
            options["out"],
            modality=options["modality"],
            instances=options["instances"],
            rows=options["rows"],
            patient=SyntheticPatient(
                patient_id=options["patient_id"],
                name=options["patient_name"],
                birth_date=birth_date,
                issuer=options["issuer"],
            ),
            study_date=study_date,
            seed=options["seed"],
            transfer_syntax=options["transfer_syntax"],
        )
        self.stdout.write(f"Wrote {len(paths)} {options['modality']} files to {options['out']}")
