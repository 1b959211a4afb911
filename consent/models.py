"""The consent ledger: what a patient has allowed, to whom, for what, until when.

Rows are never edited (rule 3 of DESIGN.md). A grant is written once; ending it early is a
`ConsentWithdrawal` row that points at it, and changing it is a withdrawal plus a new grant
whose `replaces` points at the old one. The history the patient, auditors and the FHIR export
see is these rows in order.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.codes import PurposeOfUse
from facilities.models import Facility
from studies.models import Patient, Study


class Purpose(models.TextChoices):
    """Why a facility may see studies, as HL7 v3 PurposeOfUse codes (the audit log's too)."""

    TREATMENT = PurposeOfUse.TREATMENT.value, "Treatment"
    SECOND_OPINION = PurposeOfUse.SECOND_OPINION.value, "Second opinion or consultation"
    TRANSFER_OF_CARE = PurposeOfUse.TRANSFER_OF_CARE.value, "Transfer of care"
    EMERGENCY = PurposeOfUse.EMERGENCY.value, "Emergency treatment"
    RESEARCH = PurposeOfUse.RESEARCH.value, "Research"
    EDUCATION = PurposeOfUse.EDUCATION.value, "Education"


# Purposes whose recipients only ever see de-identified copies, whatever the patient chose.
DEIDENTIFIED_PURPOSES = frozenset({Purpose.RESEARCH, Purpose.EDUCATION})


class SignedAuthorization(models.Model):
    """A patient's signed authorization, captured at a facility's front desk and witnessed by
    its staff: the grants it gave point at it.

    The document itself (a PDF with the signature, the witness, the time and the SHA-256 of its
    content) rests encrypted in the object store under a data key of its own; this row records
    where and how to open it (consent/documents.py). A paper form's scan that is a PDF is stored
    beside it as a second document (`scan_*`); a scanned image is printed inside the PDF.
    """

    class Method(models.TextChoices):
        DRAWN = "drawn", "Signed on screen"
        PAPER = "paper", "Signed on paper (scan attached)"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="authorizations")
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="authorizations")
    witnessed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField()
    method = models.CharField(max_length=8, choices=Method.choices)
    statement = models.TextField()
    # SHA-256 of the authorization's content (patient, grants, statement, signature, witness,
    # time), as printed on the PDF.
    content_sha256 = models.CharField(max_length=64)

    pdf_object_name = models.CharField(max_length=80, unique=True)
    pdf_kek_id = models.CharField(max_length=64)
    pdf_wrapped_key = models.BinaryField()
    pdf_object_id = models.BinaryField(max_length=16)
    pdf_sha256 = models.CharField(max_length=64)
    pdf_size = models.PositiveIntegerField()

    scan_object_name = models.CharField(max_length=80, blank=True)
    scan_kek_id = models.CharField(max_length=64, blank=True)
    scan_wrapped_key = models.BinaryField(null=True, blank=True)
    scan_object_id = models.BinaryField(max_length=16, null=True, blank=True)
    scan_sha256 = models.CharField(max_length=64, blank=True)
    scan_size = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-signed_at", "-pk")
        indexes = [models.Index(fields=["patient", "-signed_at"], name="authorization_patient_idx")]

    def __str__(self) -> str:
        return f"Signed authorization {self.public_id}"

    @property
    def has_scan_document(self) -> bool:
        return bool(self.scan_object_name)


class ConsentGrant(models.Model):
    class Scope(models.TextChoices):
        ALL = "all", "All studies, including future ones"
        CHOSEN = "chosen", "Chosen studies"
        RULES = "rules", "Studies matching modality and date rules"

    class Source(models.TextChoices):
        PATIENT_ONLINE = "online", "The patient, online"
        SIGNED_AUTHORIZATION = "signed", "A signed authorization captured by staff"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="grants")
    # Exactly one grantee: a facility, or a named clinician's e-mail (for share links).
    grantee_facility = models.ForeignKey(
        Facility, null=True, blank=True, on_delete=models.PROTECT, related_name="grants"
    )
    grantee_email = models.EmailField(blank=True)
    purpose = models.CharField(max_length=10, choices=Purpose.choices)

    scope = models.CharField(max_length=8, choices=Scope.choices)
    studies = models.ManyToManyField(Study, blank=True, related_name="grants")
    # RULES: any of these modalities (empty: any), study date within the range (open ends).
    rule_modalities = models.CharField(max_length=200, blank=True)
    rule_date_from = models.DateField(null=True, blank=True)
    rule_date_to = models.DateField(null=True, blank=True)

    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    source = models.CharField(max_length=8, choices=Source.choices)
    deidentify = models.BooleanField(default=False)

    replaces = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaced_by"
    )
    # The signed authorization this grant was given by, for grants of that source.
    authorization = models.ForeignKey(
        "SignedAuthorization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="grants",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(grantee_facility__isnull=False, grantee_email="")
                    | (models.Q(grantee_facility__isnull=True) & ~models.Q(grantee_email=""))
                ),
                name="grant_one_grantee",
            ),
            models.CheckConstraint(
                condition=models.Q(valid_until__gt=models.F("valid_from")),
                name="grant_period_forward",
            ),
            models.CheckConstraint(
                condition=~models.Q(purpose__in=["HRESCH", "HEDUC"]) | models.Q(deidentify=True),
                name="grant_research_deidentified",
            ),
        ]
        indexes = [
            models.Index(
                fields=["grantee_facility", "purpose", "valid_until"], name="grant_facility_idx"
            ),
            models.Index(fields=["patient", "-created_at"], name="grant_patient_idx"),
        ]

    def __str__(self) -> str:
        return f"Grant {self.public_id}"

    @property
    def modalities(self) -> list[str]:
        return [m for m in self.rule_modalities.split("\\") if m]


class ConsentWithdrawal(models.Model):
    """The end of a grant before its period: who, when and why. At most one per grant."""

    grant = models.OneToOneField(ConsentGrant, on_delete=models.PROTECT, related_name="withdrawal")
    withdrawn_at = models.DateTimeField()
    withdrawn_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"Withdrawal of {self.grant}"
