"""What `sharing` records about the encrypted store: each study's wrapped data key, and the
object that holds each published instance."""

from __future__ import annotations

from django.db import models

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
