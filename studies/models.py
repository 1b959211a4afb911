"""The study index: patients, their identifiers, and the studies, series and instances held.

Attributes "as received" are copied from the DICOM headers at ingest; they are what DICOMweb
search (QIDO-RS) matches on, so the PS3.18 required matching keys are all columns here and
the common searches have an index. People and URLs see `public_id`, never a DICOM UID or MRN.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F
from django.db.models.functions import Upper

from facilities.models import Facility


def normalised_person_name(name: str) -> str:
    """A DICOM PN reduced for matching and case-insensitive search: upper case, family and
    given names only, single spaces; `Doe^Jane^M^^` and `DOE^JANE` both give `DOE^JANE`."""
    alphabetic = name.split("=", 1)[0]
    components = [" ".join(part.split()).upper() for part in alphabetic.split("^")]
    family = components[0] if components else ""
    given = components[1] if len(components) > 1 else ""
    return f"{family}^{given}" if given else family


class Patient(models.Model):
    """A person whose studies the portal holds, with the demographics first received."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=324, blank=True, help_text="DICOM PN, as received.")
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The patient's own sign-in, linked once their identity was checked at a front desk.
    account = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="patient",
    )

    class Meta:
        indexes = [models.Index(Upper("name"), F("birth_date"), name="patient_name_birth_idx")]

    def __str__(self) -> str:
        return f"Patient {self.public_id}"

    @property
    def display_name(self) -> str:
        """`Jane Doe` from `Doe^Jane`: how people write a name."""
        family, _, rest = self.name.split("=", 1)[0].partition("^")
        given = rest.split("^", 1)[0]
        return " ".join(part for part in (given, family) if part).title() or "Unnamed patient"


class PatientIdentifier(models.Model):
    """A PatientID within the namespace of its issuer (IssuerOfPatientID).

    `facility` is the facility whose studies first brought this identifier; the pair
    (issuer, value) names one person, whichever facility sends it.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="+")
    issuer = models.CharField(max_length=64)
    value = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "value"], name="patientidentifier_unique"),
        ]
        indexes = [models.Index(fields=["value"], name="patientidentifier_value_idx")]

    def __str__(self) -> str:
        return f"Identifier of {self.patient}"


class Study(models.Model):
    class Match(models.TextChoices):
        MATCHED = "matched", "Matched to a patient"
        PENDING = "pending", "Waiting for a person to match it"
        HELD = "held", "Marked as not this patient"

    class State(models.TextChoices):
        # Instances are in the spool; publishing (the encrypted store) takes them from here.
        RECEIVING = "receiving", "Receiving"
        PUBLISHING = "publishing", "Publishing"
        AVAILABLE = "available", "Available"
        # Crypto-shredded at the end of retention or on request: nothing can be read any more.
        SHREDDED = "shredded", "Deleted"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study_instance_uid = models.CharField(max_length=64, unique=True)
    source_facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="studies")
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="studies"
    )
    match = models.CharField(max_length=8, choices=Match.choices, default=Match.MATCHED)
    # Why a study waits for a person, and the patient its identifier pointed at.
    match_reason = models.CharField(max_length=200, blank=True)
    candidate_patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.RECEIVING)

    # Patient attributes as received (QIDO-RS PatientName, PatientID).
    patient_name = models.CharField(max_length=324, blank=True)
    patient_id_value = models.CharField("PatientID", max_length=64)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)

    # Study attributes (QIDO-RS required matching keys).
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    study_id = models.CharField("StudyID", max_length=16, blank=True)
    description = models.CharField(max_length=64, blank=True)
    modalities_in_study = models.CharField(
        max_length=200, blank=True, help_text="Backslash-separated, as in DICOM."
    )

    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)
    # Instances in the encrypted store: progress is this of number_of_instances.
    number_of_published_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveBigIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Retention: the study is crypto-shredded after this day unless a legal hold is set.
    available_until = models.DateField()
    legal_hold = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "studies"
        indexes = [
            models.Index(fields=["patient", "-study_date"], name="study_patient_date_idx"),
            models.Index(fields=["patient_id_value", "issuer_of_patient_id"], name="study_pid_idx"),
            models.Index(Upper("patient_name"), name="study_patient_name_idx"),
            models.Index(fields=["study_date", "study_time"], name="study_date_idx"),
            models.Index(fields=["accession_number"], name="study_accession_idx"),
            models.Index(fields=["source_facility", "match"], name="study_facility_match_idx"),
            models.Index(
                fields=["source_facility", "-received_at"], name="study_facility_received_idx"
            ),
            models.Index(
                fields=["available_until"],
                condition=models.Q(legal_hold=False) & ~models.Q(state="shredded"),
                name="study_retention_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Study {self.public_id}"

    @property
    def modalities(self) -> list[str]:
        return [m for m in self.modalities_in_study.split("\\") if m]

    @property
    def published_percent(self) -> int:
        if not self.number_of_instances:
            return 0
        return self.number_of_published_instances * 100 // self.number_of_instances


class Series(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=64, blank=True)
    body_part = models.CharField(max_length=16, blank=True)
    performed_procedure_step_start_date = models.DateField(null=True, blank=True)
    performed_procedure_step_start_time = models.TimeField(null=True, blank=True)
    number_of_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveBigIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "series"
        ordering = ("series_number", "pk")
        indexes = [models.Index(fields=["modality"], name="series_modality_idx")]

    def __str__(self) -> str:
        return f"Series {self.public_id}"


class Instance(models.Model):
    class State(models.TextChoices):
        RECEIVED = "received", "Received, in the spool"
        # Claimed by a publish task, which is encrypting and uploading it.
        PUBLISHING = "publishing", "Being published"
        PUBLISHED = "published", "Published to the encrypted store"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="instances")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    number_of_frames = models.PositiveIntegerField(default=1)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField("SHA-256 of the file received", max_length=64)
    # The instance's identity for duplicate detection: the same instance sent another way
    # (DIMSE, STOW-RS, a CD) differs only in its file meta.
    data_set_sha256 = models.CharField("SHA-256 of the data set", max_length=64)
    received_from = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=12, choices=State.choices, default=State.RECEIVED)
    # The file's name in the ingest spool while it waits to be published (opaque), and the node
    # whose spool holds it: its publish tasks go to that node's queue.
    spool_name = models.CharField(max_length=64, blank=True)
    spool_node = models.CharField(max_length=64, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("instance_number", "pk")
        indexes = [
            models.Index(fields=["series", "instance_number"], name="instance_series_number_idx"),
            models.Index(
                fields=["spool_node", "state", "received_at"],
                condition=~models.Q(state="published"),
                name="instance_waiting_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Instance {self.public_id}"


# --- Patients joining by invitation ------------------------------------------------------------


class IdentityVerification(models.Model):
    """A front-desk check that the person in front of staff is this patient.

    An invitation or an account link needs a recent one at the same facility: the e-mail
    address a patient gives is only trusted because someone looked at them and a document.
    """

    class Method(models.TextChoices):
        IN_PERSON = "in_person", "In person, at the desk"
        VIDEO = "video", "Video call"
        PHONE = "phone", "Phone call, with questions only the patient can answer"

    class Document(models.TextChoices):
        DRIVERS_LICENSE = "drivers_license", "Driver's license"
        PASSPORT = "passport", "Passport"
        STATE_ID = "state_id", "State or national ID card"
        INSURANCE_CARD = "insurance_card", "Insurance card with photo"
        OTHER_PHOTO_ID = "other_photo_id", "Other government photo ID"
        NONE = "none", "No document (known questions only)"

    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, related_name="identity_verifications"
    )
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="+")
    method = models.CharField(max_length=16, choices=Method.choices)
    document_type = models.CharField(max_length=20, choices=Document.choices)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    verified_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-verified_at", "-pk")
        indexes = [
            models.Index(
                fields=["patient", "facility", "-verified_at"], name="identityverif_patient_idx"
            )
        ]

    def __str__(self) -> str:
        return f"Identity check of {self.patient}"


class PatientInvitation(models.Model):
    """An e-mailed invitation for a patient to see their records. Only its token's hash is kept."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="invitations")
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="+")
    verification = models.ForeignKey(
        IdentityVerification, on_delete=models.PROTECT, related_name="invitations"
    )
    email = models.EmailField()
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"Invitation of {self.patient}"

    def is_pending_at(self, when: datetime) -> bool:
        return self.accepted_at is None and self.revoked_at is None and when < self.expires_at

    def state_at(self, when: datetime) -> str:
        """One word for lists and audit: pending, expired, accepted or revoked."""
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "pending" if when < self.expires_at else "expired"
