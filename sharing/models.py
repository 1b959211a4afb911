"""What `sharing` records: each study's wrapped data key, the object that holds each published
instance, and the share links patients give named clinicians (with their one-time codes)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from consent.models import ConsentGrant, Purpose
from facilities.models import Facility
from studies.models import Instance, Study


class StudyKey(models.Model):
    """A study's data key, only ever stored wrapped by a key-encryption key (KEK) of the keyring.

    Deleting the row is the crypto-shred: without it no object of the study can be decrypted.
    """

    study = models.OneToOneField(
        Study, on_delete=models.PROTECT, primary_key=True, related_name="+"
    )
    kek_id = models.CharField(max_length=64)
    wrapped_key = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Key rotation walks the keys still under an old KEK.
        indexes = [models.Index(fields=["kek_id"], name="studykey_kek_idx")]

    def __str__(self) -> str:
        return f"Data key of study {self.study_id} under {self.kek_id}"


class StoredObject(models.Model):
    """The encrypted object of one instance.

    The row is written when a publish task claims the instance, before anything is uploaded, so
    that an upload interrupted by a crash is never an unknown object: releasing the claim
    deletes whatever was written under `name`.
    """

    class State(models.TextChoices):
        UPLOADING = "uploading", "Being uploaded"
        STORED = "stored", "Stored and verified"

    instance = models.OneToOneField(
        Instance, on_delete=models.PROTECT, primary_key=True, related_name="stored_object"
    )
    name = models.CharField(max_length=80, unique=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.UPLOADING)
    # Who claimed it: the publish task's id, which stays the same across its retries.
    claim_token = models.CharField(max_length=64)
    # The object's own id from its header: a valid object of the same study put in its place is
    # caught by comparing it (see sharing/crypto.py, threat model).
    object_id = models.BinaryField(max_length=16, null=True)
    size_bytes = models.PositiveBigIntegerField(null=True)
    segment_size = models.PositiveIntegerField()
    claimed_at = models.DateTimeField()
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["claimed_at"],
                condition=models.Q(state="uploading"),
                name="storedobject_uploading_idx",
            ),
            models.Index(
                fields=["claim_token"],
                condition=models.Q(state="uploading"),
                name="storedobject_claim_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Object of instance {self.instance_id}"


# --- Share links --------------------------------------------------------------------------------


class ShareLink(models.Model):
    """A time-limited link for one named clinician to chosen studies of one patient.

    Only the SHA-256 of the link's random token is kept (`token_hash`): the token itself is
    shown once to whoever made the link and e-mailed to the recipient, never stored. After the
    recipient proves they hold `recipient_email` (a one-time code, `ShareLinkCode`), URLs name
    the link by `public_id` only.

    The link reads under its consent grant: `consent.decision.decide(LinkActor(grant, studies))`
    answers every request, so a revoked link, an expired one and one whose grant was withdrawn
    all serve nothing from that moment. Rows are never deleted: the patient's access log names
    them.
    """

    class State(models.TextChoices):
        ACTIVE = "active", "Not opened yet"
        OPENED = "opened", "Opened"
        EXPIRED = "expired", "Expired"
        ENDED = "ended", "Ended"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    token_hash = models.CharField(max_length=64, unique=True)
    grant = models.ForeignKey(ConsentGrant, on_delete=models.PROTECT, related_name="share_links")
    studies = models.ManyToManyField(Study, related_name="share_links")
    recipient_email = models.EmailField()
    # The receiving facility from the directory, or the name the patient typed when it is not
    # on the portal; exactly one of the two.
    recipient_facility = models.ForeignKey(
        Facility, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    recipient_facility_name = models.CharField(max_length=200, blank=True)
    purpose = models.CharField(max_length=10, choices=Purpose.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The patient's choice of e-mails about this link.
    notify_on_open = models.BooleanField(default=True)
    notify_on_download = models.BooleanField(default=True)
    first_opened_at = models.DateTimeField(null=True, blank=True)
    # Claimed with conditional updates, so a retried or doubled task e-mails once.
    expiry_warning_sent_at = models.DateTimeField(null=True, blank=True)
    ended_notice_sent_at = models.DateTimeField(null=True, blank=True)
    download_notice_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(recipient_facility__isnull=False, recipient_facility_name="")
                    | (
                        models.Q(recipient_facility__isnull=True)
                        & ~models.Q(recipient_facility_name="")
                    )
                ),
                name="sharelink_one_facility",
            ),
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="sharelink_expires_after_creation",
            ),
        ]
        indexes = [
            # The hourly expiry warning looks only at live links not yet warned.
            models.Index(
                fields=["expires_at"],
                condition=models.Q(revoked_at__isnull=True, expiry_warning_sent_at__isnull=True),
                name="sharelink_expiry_warning_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Share link {self.public_id}"

    @property
    def facility_label(self) -> str:
        return (
            self.recipient_facility.name
            if self.recipient_facility
            else self.recipient_facility_name
        )

    def refusal_at(self, when: datetime) -> str | None:
        """Why the link serves nothing at `when` ("revoked", "withdrawn", "expired"), or None.

        The grant's withdrawal and end are read from the grant, not copied onto the link:
        consent may not import sharing, and the access decision already denies them."""
        if self.revoked_at is not None and self.revoked_at <= when:
            return "revoked"
        withdrawal = getattr(self.grant, "withdrawal", None)
        if withdrawal is not None and withdrawal.withdrawn_at <= when:
            return "withdrawn"
        if when >= self.expires_at or when >= self.grant.valid_until:
            return "expired"
        return None

    def state_at(self, when: datetime) -> str:
        refusal = self.refusal_at(when)
        if refusal == "expired":
            return self.State.EXPIRED
        if refusal is not None:
            return self.State.ENDED
        return self.State.OPENED if self.first_opened_at else self.State.ACTIVE

    @property
    def ended_at(self) -> datetime | None:
        """When the link stopped serving, whichever came first: revoked, withdrawn, expired."""
        withdrawal = getattr(self.grant, "withdrawal", None)
        moments = [self.expires_at, self.grant.valid_until, self.revoked_at]
        if withdrawal is not None:
            moments.append(withdrawal.withdrawn_at)
        return min(moment for moment in moments if moment is not None)


class ShareLinkCode(models.Model):
    """A one-time 6-digit code e-mailed to a link's recipient, kept only as a keyed hash.

    Only the newest code of a link counts. It is short-lived, allows a few attempts, and is
    used once; guessing across codes is limited per link and per address (sharing.links).
    """

    link = models.ForeignKey(ShareLink, on_delete=models.CASCADE, related_name="codes")
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["link", "-created_at"], name="sharelinkcode_link_idx")]

    def __str__(self) -> str:
        return f"Code for {self.link}"
