"""The front desk's authorization form: what the patient agrees to, and how they sign.

The form checks what a person typed or chose; `consent.authorizations` decides (periods, scope,
documents). A drawn signature arrives as a PNG data URL in a hidden field (static/js/signature.js);
a paper form arrives as a file, read from memory only (see the view's upload handler).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django import forms
from django.utils import timezone

from consent.authorizations import (
    AuthorizationError,
    Scan,
    check_scan,
    check_signature,
    scan_max_bytes,
)
from consent.models import ConsentGrant, Purpose
from consent.services import patient_studies
from facilities.models import Facility
from studies.models import Patient

DATA_URL_PREFIX = "data:image/png;base64,"
# Base64 of the largest signature accepted, plus the prefix: anything longer is refused unread.
SIGNATURE_FIELD_MAX_LENGTH = 720_000


class StudyChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        date = obj.study_date.isoformat() if obj.study_date else "no date"
        return f"{date} · {obj.modalities_in_study or '?'} · {obj.description or 'No description'}"


class AuthorizationForm(forms.Form):
    grantee_facilities = forms.ModelMultipleChoiceField(
        queryset=Facility.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        label="Facilities that may see the studies",
        error_messages={
            "required": "Choose at least one facility.",
            "invalid_choice": "Choose facilities from the list; one of them is not known here.",
            "invalid_pk_value": "Choose facilities from the list; one of them is not known here.",
        },
    )
    purposes = forms.MultipleChoiceField(
        choices=Purpose.choices,
        widget=forms.CheckboxSelectMultiple,
        label="For what",
        error_messages={"required": "Choose at least one purpose."},
    )
    scope = forms.ChoiceField(
        choices=ConsentGrant.Scope.choices,
        widget=forms.RadioSelect,
        initial=ConsentGrant.Scope.ALL,
        label="Which studies",
    )
    studies = StudyChoiceField(
        queryset=Patient.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Chosen studies",
        error_messages={"invalid_choice": "Choose among this patient's own studies."},
    )
    rule_modalities = forms.CharField(
        required=False,
        max_length=100,
        label="Modalities (for rules)",
        help_text="Separated by commas, e.g. CT, MR. Empty: any modality.",
    )
    rule_date_from = forms.DateField(
        required=False, label="Study date from", widget=forms.DateInput(attrs={"type": "date"})
    )
    rule_date_to = forms.DateField(
        required=False, label="Study date to", widget=forms.DateInput(attrs={"type": "date"})
    )
    valid_until = forms.DateField(
        required=False,
        label="Until",
        help_text="Empty: 12 months after the latest study it covers (never less).",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    deidentify = forms.BooleanField(
        required=False,
        label="Share de-identified copies only",
        help_text="Always so for research and education.",
    )
    method = forms.ChoiceField(
        choices=[
            ("drawn", "The patient signs on this screen"),
            ("paper", "Upload the signed paper form"),
        ],
        widget=forms.RadioSelect,
        initial="drawn",
        label="How the patient signs",
    )
    signature = forms.CharField(
        required=False, widget=forms.HiddenInput, max_length=SIGNATURE_FIELD_MAX_LENGTH
    )
    scan = forms.FileField(
        required=False,
        label="Signed paper form (PDF, JPEG or PNG)",
        widget=forms.ClearableFileInput(attrs={"accept": "application/pdf,image/jpeg,image/png"}),
    )
    identity_checked = forms.BooleanField(
        label="I checked the patient's identity and witnessed the signature",
        error_messages={"required": "Confirm that you checked who the patient is."},
    )

    def __init__(self, *args: Any, facility: Facility, patient: Patient, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.facility, self.patient = facility, patient
        self.fields["grantee_facilities"].queryset = Facility.objects.exclude(pk=facility.pk)
        self.fields["studies"].queryset = patient_studies(patient).order_by("-study_date")
        self.fields["signature"].error_messages["max_length"] = (
            "The signature image is too large. Clear the box and sign again."
        )

    def clean_valid_until(self) -> Any:
        until = self.cleaned_data.get("valid_until")
        if until is not None and until <= timezone.localdate():
            raise forms.ValidationError("The end date must be in the future.")
        return until

    def clean_rule_modalities(self) -> list[str]:
        text = self.cleaned_data.get("rule_modalities", "")
        values = [part.strip().upper() for part in text.replace(";", ",").split(",")]
        values = [value for value in values if value]
        if any(not value.isalnum() or len(value) > 16 for value in values):
            raise forms.ValidationError("Modalities are short codes such as CT, MR or US.")
        return values

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        scope = data.get("scope")
        if scope == ConsentGrant.Scope.CHOSEN and not data.get("studies"):
            self.add_error("studies", "Choose at least one study.")
        start, end = data.get("rule_date_from"), data.get("rule_date_to")
        if start and end and start > end:
            self.add_error("rule_date_to", "The date range ends before it starts.")
        method = data.get("method")
        if method == "drawn":
            try:
                data["signature_png"] = check_signature(self._signature_bytes())
            except AuthorizationError as error:
                self.add_error("signature", str(error))
            data["scan_checked"] = None
        elif method == "paper":
            data["signature_png"] = None
            upload = data.get("scan")
            if upload is None:
                self.add_error("scan", "Choose the scanned form to upload.")
            elif getattr(upload, "too_large", False):
                self.add_error("scan", _too_large_message())
            else:
                try:
                    data["scan_checked"] = check_scan(upload.read())
                except AuthorizationError as error:
                    self.add_error("scan", str(error))
        return data

    def _signature_bytes(self) -> bytes:
        text = self.cleaned_data.get("signature", "") or ""
        if not text:
            return b""
        if not text.startswith(DATA_URL_PREFIX):
            return b"not a png"
        try:
            return base64.b64decode(text[len(DATA_URL_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            return b"not a png"

    @property
    def scan_checked(self) -> Scan | None:
        return self.cleaned_data.get("scan_checked")


def _too_large_message() -> str:
    return (
        f"The scanned form is larger than {scan_max_bytes() // (1024 * 1024)} MB. Scan it at a "
        "lower resolution, or in black and white."
    )
