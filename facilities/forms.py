"""Forms check the shape of what a facility admin typed; the services decide the rest."""

from __future__ import annotations

from django import forms

from audit.codes import PurposeOfUse
from facilities.models import APIToken, Role
from facilities.services import API_TOKEN_MAX_DAYS, API_TOKEN_MIN_DAYS

ROLE_HELP = (
    "Front desk: registers patients, records consent and uploads studies. "
    "Clinician: views the studies shared with this facility. "
    "Facility admin: everything above, plus staff and API tokens."
)


class StaffInviteForm(forms.Form):
    email = forms.EmailField(
        label="E-mail address",
        help_text="The invitation link goes to this address; only its owner can accept it.",
        widget=forms.EmailInput(attrs={"autocomplete": "off"}),
    )
    role = forms.ChoiceField(label="Role", choices=Role.choices, help_text=ROLE_HELP)


class APITokenCreateForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=APIToken._meta.get_field("name").max_length,
        help_text="What will use this token, e.g. \u201cRadiology PACS\u201d.",
    )
    scopes = forms.MultipleChoiceField(
        label="What the token may do",
        choices=list(APIToken.SCOPES.items()),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one thing the token may do."},
    )
    purpose_of_use = forms.ChoiceField(
        label="Purpose of use",
        choices=PurposeOfUse.choices,
        initial=PurposeOfUse.TREATMENT,
        help_text="Every search and retrieval with this token is recorded with this purpose, "
        "and only studies consented for it are returned.",
    )
    expires_in_days = forms.IntegerField(
        label="Expires after (days)",
        min_value=API_TOKEN_MIN_DAYS,
        max_value=API_TOKEN_MAX_DAYS,
        initial=90,
        help_text=f"From {API_TOKEN_MIN_DAYS} to {API_TOKEN_MAX_DAYS} days. "
        "Make a new token before this one expires.",
    )
