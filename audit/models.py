from __future__ import annotations

from django.db import models

from audit.codes import Action, ActorKind, Outcome, PurposeOfUse, TargetKind

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """One row of the append-only, hash-chained audit log.

    Rows are numbered without gaps (`sequence`) and each holds the hash of the row before it,
    so that changing, removing, inserting or reordering rows breaks the chain
    (`manage.py audit_verify`). The table has no foreign keys: nothing deleted elsewhere may
    cascade into it, and ids stay meaningful after their rows are gone. On PostgreSQL and
    SQLite a trigger refuses UPDATE and DELETE. `audit.services.audit_record` is the only writer.
    """

    sequence = models.BigIntegerField(primary_key=True)
    occurred_at = models.DateTimeField()
    action = models.CharField(max_length=40, choices=Action.choices)
    dicom_event_id = models.CharField(max_length=8, blank=True)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    actor_kind = models.CharField(max_length=12, choices=ActorKind.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    facility_id = models.BigIntegerField(null=True, blank=True)
    target_kind = models.CharField(max_length=12, choices=TargetKind.choices, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    patient_id = models.BigIntegerField(null=True, blank=True)
    study_id = models.BigIntegerField(null=True, blank=True)
    purpose = models.CharField(max_length=10, choices=PurposeOfUse.choices, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    previous_hash = models.CharField(max_length=64)
    row_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ("sequence",)
        indexes = [
            models.Index(fields=["patient_id", "-sequence"], name="audit_patient_idx"),
            models.Index(fields=["study_id", "-sequence"], name="audit_study_idx"),
            models.Index(fields=["facility_id", "-sequence"], name="audit_facility_idx"),
            models.Index(fields=["actor_kind", "actor_id", "-sequence"], name="audit_actor_idx"),
            models.Index(fields=["occurred_at"], name="audit_time_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.outcome}"
