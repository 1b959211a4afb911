from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower

from audit.codes import PurposeOfUse

# DICOM PS3.5 AE titles: up to 16 characters of the default repertoire, no backslash or
# control characters; leading and trailing spaces are not significant.
ae_title_validator = RegexValidator(
    r"^[\x20-\x5b\x5d-\x7e]{1,16}$", "An AE title is 1 to 16 printable characters, no backslash."
)


class Facility(models.Model):
    class Kind(models.TextChoices):
        ORIGINATING = "originating", "Originating (holds studies)"
        RECEIVING = "receiving", "Receiving (views studies)"
        BOTH = "both", "Both"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.BOTH)
    npi = models.CharField(
        "NPI",
        max_length=10,
        blank=True,
        validators=[RegexValidator(r"^\d{10}$", "An NPI is ten digits.")],
        help_text="US National Provider Identifier of the organisation, if it has one.",
    )
    default_issuer_of_patient_id = models.CharField(
        max_length=64,
        blank=True,
        help_text=(
            "IssuerOfPatientID assumed for this facility's PatientIDs when a study names none."
        ),
    )
    contact_email = models.EmailField(blank=True)
    retention_months = models.PositiveSmallIntegerField(
        default=12,
        validators=[MinValueValidator(12)],
        help_text="How long studies stay available after the study date; never less than 12.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "facilities"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    @property
    def holds_studies(self) -> bool:
        return self.kind in (self.Kind.ORIGINATING, self.Kind.BOTH)


class AETitle(models.Model):
    """A DICOM application entity of a facility, allowed to call the portal's DIMSE receiver."""

    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="ae_titles")
    ae_title = models.CharField("AE title", max_length=16, validators=[ae_title_validator])

    class Meta:
        verbose_name = "AE title"
        constraints = [
            models.UniqueConstraint(fields=["ae_title"], name="aetitle_unique_ae_title"),
        ]

    def __str__(self) -> str:
        return self.ae_title


class Role(models.TextChoices):
    FRONT_DESK = "front_desk", "Front desk"
    CLINICIAN = "clinician", "Clinician"
    FACILITY_ADMIN = "facility_admin", "Facility admin"


class Membership(models.Model):
    """A person's role at a facility. Staff are people with at least one membership."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "facility"], name="membership_one_per_facility"
            ),
        ]
        ordering = ("facility__name",)

    def __str__(self) -> str:
        return f"{self.user} · {self.get_role_display()} at {self.facility}"


class StaffInvitation(models.Model):
    """An invitation to join a facility's staff. Only the hash of its token is kept."""

    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices)
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
        ordering = ("-created_at",)
        indexes = [models.Index(Lower("email"), name="staffinvitation_email_idx")]

    def __str__(self) -> str:
        return f"Invitation to {self.facility} ({self.get_role_display()})"

    def is_pending_at(self, when: datetime) -> bool:
        return self.accepted_at is None and self.revoked_at is None and when < self.expires_at

    def state_at(self, when: datetime) -> str:
        """One word for lists and audit: pending, expired, accepted or revoked."""
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "pending" if when < self.expires_at else "expired"


class APIToken(models.Model):
    """A facility system's credential for DICOMweb and DIMSE.

    The token shown once is `icp_<public_id>_<secret>`; `public_id` finds the row, and only a
    SHA-256 of the secret is kept (the secret has 256 bits of randomness, so a slow hash adds
    nothing).
    """

    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'Radiology PACS'.")
    public_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    can_search = models.BooleanField(default=False)
    can_retrieve = models.BooleanField(default=False)
    can_store = models.BooleanField(default=False)
    purpose_of_use = models.CharField(
        max_length=10, choices=PurposeOfUse.choices, default=PurposeOfUse.TREATMENT
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.facility})"

    # The scopes a token can carry (each is a can_<scope> flag), and what each lets it do.
    SCOPES: dict[str, str] = {
        "search": "Search studies (QIDO-RS)",
        "retrieve": "Retrieve images and metadata (WADO-RS)",
        "store": "Send studies in (STOW-RS, C-STORE)",
    }

    def is_active_at(self, when: datetime) -> bool:
        return self.revoked_at is None and when < self.expires_at

    def state_at(self, when: datetime) -> str:
        """One word for lists: active, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if when < self.expires_at else "expired"

    @property
    def scopes(self) -> list[str]:
        flags = (
            ("search", self.can_search),
            ("retrieve", self.can_retrieve),
            ("store", self.can_store),
        )
        return [name for name, granted in flags if granted]
