"""The patient's consent forms. They check the shape of what was sent; the services decide."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from django import forms

from consent.models import DEIDENTIFIED_PURPOSES, ConsentGrant, Purpose
from consent.selectors import grant_facilities
from consent.services import REASON_MAX_LENGTH, GrantRequest
from studies.models import Patient, Study

# Modalities a patient may recognise, in their words; codes found in their studies are added.
MODALITY_NAMES = {
    "CT": "CT scan",
    "MR": "MRI",
    "US": "Ultrasound",
    "CR": "X-ray (CR)",
    "DX": "X-ray (DX)",
    "MG": "Mammography",
    "NM": "Nuclear medicine",
    "PT": "PET",
    "XA": "Angiography",
}

PURPOSE_HELP = {
    Purpose.TREATMENT: "Doctors there treating you now.",
    Purpose.SECOND_OPINION: "Another doctor reviewing your images.",
    Purpose.TRANSFER_OF_CARE: "You are moving your care there.",
    Purpose.EMERGENCY: "Emergency care.",
    Purpose.RESEARCH: "Medical research. Always de-identified.",
    Purpose.EDUCATION: "Teaching. Always de-identified.",
}


def study_label(study: Study) -> str:
    when = f"{study.study_date:%d %b %Y}" if study.study_date else "No date"
    kind = ", ".join(study.modalities) or "Images"
    return f"{when} · {study.description or 'No description'} ({kind}) · {study.source_facility}"


class GrantForm(forms.Form):
    label_suffix = ""

    facility = forms.ModelChoiceField(
        queryset=grant_facilities(),
        label="Facility",
        empty_label="Choose a facility",
        help_text="Any facility on the portal, not only the one that took your images.",
        error_messages={
            "required": "Choose the facility that may see your images.",
            "invalid_choice": "Choose a facility from the list: that one is not on the portal.",
        },
    )
    purpose = forms.ChoiceField(
        choices=Purpose.choices,
        widget=forms.RadioSelect,
        label="What for",
        error_messages={
            "required": "Choose what the images may be used for.",
            "invalid_choice": "Choose what the images may be used for.",
        },
    )
    scope = forms.ChoiceField(
        choices=ConsentGrant.Scope.choices,
        widget=forms.RadioSelect,
        label="Which studies",
        initial=ConsentGrant.Scope.ALL,
        error_messages={
            "required": "Choose which studies the consent covers.",
            "invalid_choice": "Choose which studies the consent covers.",
        },
    )
    studies = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Chosen studies"
    )
    modalities = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Kinds of exam",
        help_text="None ticked: any kind.",
    )
    date_from = forms.DateField(
        required=False,
        label="Studies from",
        widget=forms.DateInput(attrs={"type": "date"}),
        error_messages={"invalid": "Enter the date as year-month-day."},
    )
    date_to = forms.DateField(
        required=False,
        label="Studies up to",
        widget=forms.DateInput(attrs={"type": "date"}),
        error_messages={"invalid": "Enter the date as year-month-day."},
    )
    valid_until = forms.DateField(
        required=False,
        label="Until (optional)",
        help_text="Leave empty for the usual period: 12 months after the latest study it covers.",
        widget=forms.DateInput(attrs={"type": "date"}),
        error_messages={"invalid": "Enter the date as year-month-day."},
    )
    deidentify = forms.BooleanField(
        required=False,
        label="Share de-identified copies only (name, birth date and IDs removed)",
        help_text="Research and education always get de-identified copies, whatever you tick.",
    )

    def __init__(self, *args: Any, studies: Sequence[Study], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_studies = {str(study.public_id): study for study in studies}
        self._choice_field("studies").choices = [
            (public_id, study_label(study)) for public_id, study in self.own_studies.items()
        ]
        found = {code for study in studies for code in study.modalities}
        codes = sorted(set(MODALITY_NAMES) | found, key=lambda c: (c not in found, c))
        self._choice_field("modalities").choices = [
            (code, f"{MODALITY_NAMES.get(code, code)}") for code in codes
        ]
        self._choice_field("purpose").choices = [
            (value, f"{label}: {PURPOSE_HELP[Purpose(value)]}") for value, label in Purpose.choices
        ]

    def _choice_field(self, name: str) -> forms.ChoiceField:
        return cast(forms.ChoiceField, self.fields[name])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        scope = data.get("scope")
        if scope == ConsentGrant.Scope.CHOSEN and not data.get("studies"):
            self.add_error("studies", "Choose at least one study.")
        first, last = data.get("date_from"), data.get("date_to")
        if scope == ConsentGrant.Scope.RULES and first and last and first > last:
            self.add_error("date_to", "The date range ends before it starts.")
        if data.get("purpose") in DEIDENTIFIED_PURPOSES:
            data["deidentify"] = True
        return data

    def grant_request(self, patient: Patient) -> GrantRequest:
        data = self.cleaned_data
        rules = data["scope"] == ConsentGrant.Scope.RULES
        return GrantRequest(
            patient=patient,
            grantee_facility=data["facility"],
            purpose=data["purpose"],
            scope=data["scope"],
            studies=[self.own_studies[pk] for pk in data["studies"]]
            if data["scope"] == ConsentGrant.Scope.CHOSEN
            else [],
            rule_modalities=data["modalities"] if rules else [],
            rule_date_from=data["date_from"] if rules else None,
            rule_date_to=data["date_to"] if rules else None,
            valid_until=data["valid_until"],
            deidentify=data["deidentify"],
        )


class WithdrawForm(forms.Form):
    label_suffix = ""

    reason = forms.CharField(
        required=False,
        max_length=REASON_MAX_LENGTH,
        label="Why (optional)",
        help_text="Kept in your consent history.",
    )
