"""The consent ledger as HL7 FHIR R4 resources: pure functions from rows to JSON-ready dicts.

Nothing here reads the database beyond the rows (and their prefetched relations) it is given,
nor decides who may see what: `consent.fhir_views` does that, then calls these. The output is
checked against the R4 structure definitions in `tests/consent/test_fhir.py` (with
`fhir.resources.R4B`, whose Consent and Bundle are the same as R4's).

How a grant maps onto a Consent, and why:

- `id` is the grant's `public_id`; `identifier` repeats it as `urn:uuid:` so a copy kept
  elsewhere still names the grant. Patients, studies and grants are named by their opaque
  public ids, never by MRN or a DICOM UID in a reference.
- `status`: `active` while the grant is in force, `inactive` once it was withdrawn or its
  period ended (`rejected` and `proposed` are never used: the ledger holds only given consent).
- `scope`: `patient-privacy`. `category`: LOINC 59284-0 "Patient consent" on every grant, and
  v3 ActConsentType `IDSCL` (information disclosure), because every grant lets someone outside
  the originating facility see the studies. A signed authorization also carries LOINC 64292-6
  "Release of information consent": the signed form is exactly that document.
- `performer` is the patient on every grant. R4 defines the performer as the grantor (or the
  grantee); for a signed authorization the patient still grants and the front desk only
  captures the signature, so the capturing facility is not a performer. It is one of the
  custodians in `organization`: a front desk captures only for patients its facility knows.
- `organization` (custodian): the facilities that hold the patient's studies or identifiers
  (the originating facilities), as `Organization/<facility id>` with the facility's name as
  display and its NPI as identifier when it has one. The portal itself has no FHIR identity.
- `policyRule`: v3 ActCode `OPTIN`: nothing is shared without a grant.
- `provision` (type `permit`):
  - `period`: from `valid_from` to `valid_until`, or to the withdrawal when it came earlier.
  - `actor`: role v3 ParticipationType `IRCP` (information recipient). A facility is an
    `Organization/<id>` reference with its name. A named clinician has no resource here, so the
    reference carries only an identifier, the e-mail address as a `mailto:` URI under
    `urn:ietf:rfc:3986`, and the address as display: the grant means nothing without knowing
    whom it names, the address is the clinician's (not the patient's), and staff reading this
    export already see it in the portal.
  - `action`: consentaction `access` and `collect`: recipients view the images and may keep
    copies (DICOMweb retrieve, download).
  - `purpose`: the grant's purpose as a v3 ActReason (PurposeOfUse) Coding.
  - `class`: `ImagingStudy`: a grant covers imaging studies, not the rest of a record.
  - `data`: for chosen studies, one `related` entry per study: `ImagingStudy/<public id>`,
    with the StudyInstanceUID as the `urn:dicom:uid` identifier ImagingStudy itself uses, so a
    PACS that cannot resolve the portal's ids can still match the study.
  - rules: the modalities become `code` (DICOM DCM codes: a study with any of them matches) and
    the study date range becomes `dataPeriod` (dates, both ends inclusive, open ends omitted),
    on the one provision rather than nested ones, since nested provisions are exceptions.
  - `securityLabel`: v3 ObligationPolicy `DEID` when recipients only get de-identified copies.
- `sourceAttachment`: for a grant given by a signed authorization, the signed PDF's content
  type, title, signing time and size. No URL and no hash: the document is read in the portal
  (audited there), and R4's `Attachment.hash` is SHA-1 while the portal keeps SHA-256. The
  facility that captured it is among the custodians.
- A change is a new grant whose `replaces` points at the old one. R4 Consent has no element for
  that (`source[x]` is the document the consent rests on, not its predecessor), so it is the
  portal's extension `<FHIR base>/StructureDefinition/consent-replaces` with a
  `Consent/<public id>` reference; the old grant shows as `inactive`, ended by the withdrawal
  the change made.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from consent.models import ConsentGrant, Purpose
from facilities.models import Facility
from studies.models import Study

FHIR_JSON = "application/fhir+json"

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
LOINC = "http://loinc.org"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
URI = "urn:ietf:rfc:3986"
US_NPI = "http://hl7.org/fhir/sid/us-npi"
ISSUE_TYPE = "http://hl7.org/fhir/issue-type"
# The portal's own extension (the grant this one replaced), under the portal's FHIR base.
REPLACES_EXTENSION_PATH = "StructureDefinition/consent-replaces"


@dataclass(frozen=True)
class SignedSource:
    """The signed authorization a grant rests on, as much of it as the export shows."""

    title: str
    created: datetime
    size: int | None = None
    content_type: str = "application/pdf"


@dataclass(frozen=True)
class GrantContext:
    """What a Consent needs beyond the grant's own row, gathered by the caller."""

    custodians: Sequence[Facility] = ()
    signed_source: SignedSource | None = None
    studies: Sequence[Study] = field(default_factory=tuple)


def consent_status(grant: ConsentGrant, now: datetime) -> str:
    withdrawal = getattr(grant, "withdrawal", None)
    if withdrawal is not None and withdrawal.withdrawn_at <= now:
        return "inactive"
    if now >= grant.valid_until:
        return "inactive"
    return "active"


def provision_end(grant: ConsentGrant) -> datetime:
    withdrawal = getattr(grant, "withdrawal", None)
    if withdrawal is not None and withdrawal.withdrawn_at < grant.valid_until:
        return withdrawal.withdrawn_at
    return grant.valid_until


def consent_resource(
    grant: ConsentGrant, context: GrantContext, *, base: str, now: datetime
) -> dict:
    """One grant as an R4 Consent; `context.studies` are the chosen studies (CHOSEN scope) and
    `base` the FHIR base URL ending in `/`, which the portal's extension URL hangs off."""
    patient_reference = {"reference": f"Patient/{grant.patient.public_id}"}
    withdrawal = getattr(grant, "withdrawal", None)
    last_change = withdrawal.withdrawn_at if withdrawal is not None else grant.created_at
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(grant.public_id),
        "meta": {"lastUpdated": _instant(last_change)},
        "identifier": [{"system": URI, "value": f"urn:uuid:{grant.public_id}"}],
        "status": consent_status(grant, now),
        "scope": _concept(CONSENT_SCOPE, "patient-privacy", "Privacy Consent"),
        "category": _categories(grant),
        "patient": patient_reference,
        "dateTime": _instant(grant.created_at),
        "performer": [patient_reference],
        "policyRule": _concept(V3_ACT_CODE, "OPTIN", "opt-in"),
        "provision": _provision(grant, context.studies),
    }
    custodians = _unique_by_pk(context.custodians)
    if custodians:
        resource["organization"] = [organization_reference(f) for f in custodians]
    if context.signed_source is not None:
        signed = context.signed_source
        attachment: dict[str, Any] = {
            "contentType": signed.content_type,
            "title": signed.title,
            "creation": _instant(signed.created),
        }
        if signed.size is not None:
            attachment["size"] = signed.size
        resource["sourceAttachment"] = attachment
    replaced = grant.replaces
    if replaced is not None:
        resource["extension"] = [
            {
                "url": base + REPLACES_EXTENSION_PATH,
                "valueReference": {"reference": f"Consent/{replaced.public_id}"},
            }
        ]
    return resource


def organization_reference(facility: Facility) -> dict:
    reference: dict[str, Any] = {
        "reference": f"Organization/{facility.pk}",
        "type": "Organization",
        "display": facility.name,
    }
    if facility.npi:
        reference["identifier"] = {"system": US_NPI, "value": facility.npi}
    return reference


def searchset_bundle(entries: Iterable[tuple[str, dict]], *, self_url: str, now: datetime) -> dict:
    """A searchset Bundle of (fullUrl, resource) pairs, all matches on one page."""
    entry = [
        {"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}
        for full_url, resource in entries
    ]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": _instant(now)},
        "type": "searchset",
        "total": len(entry),
        "link": [{"relation": "self", "url": self_url}],
        "entry": entry,
    }


def operation_outcome(code: str, diagnostics: str, *, severity: str = "error") -> dict:
    """An OperationOutcome with one issue; `code` from the R4 IssueType value set."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": code,
                "details": {"text": diagnostics},
                "diagnostics": diagnostics,
            }
        ],
    }


# --- Parts ----------------------------------------------------------------------------------


def _categories(grant: ConsentGrant) -> list[dict]:
    categories = [
        _concept(LOINC, "59284-0", "Patient Consent"),
        _concept(V3_ACT_CODE, "IDSCL", "information disclosure"),
    ]
    if grant.source == ConsentGrant.Source.SIGNED_AUTHORIZATION:
        categories.append(_concept(LOINC, "64292-6", "Release of information consent"))
    return categories


def _provision(grant: ConsentGrant, studies: Sequence[Study]) -> dict:
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": _instant(grant.valid_from), "end": _instant(provision_end(grant))},
        "actor": [
            {
                "role": _concept(V3_PARTICIPATION_TYPE, "IRCP", "information recipient"),
                "reference": _grantee_reference(grant),
            }
        ],
        "action": [
            _concept(CONSENT_ACTION, "access", "Access"),
            _concept(CONSENT_ACTION, "collect", "Collect"),
        ],
        "purpose": [
            {
                "system": V3_ACT_REASON,
                "code": grant.purpose,
                "display": Purpose(grant.purpose).label,
            }
        ],
        "class": [{"system": RESOURCE_TYPES, "code": "ImagingStudy", "display": "ImagingStudy"}],
    }
    if grant.deidentify:
        provision["securityLabel"] = [
            {"system": V3_ACT_CODE, "code": "DEID", "display": "deidentify"}
        ]
    if grant.scope == ConsentGrant.Scope.CHOSEN:
        provision["data"] = [
            {
                "meaning": "related",
                "reference": {
                    "reference": f"ImagingStudy/{study.public_id}",
                    "type": "ImagingStudy",
                    "identifier": {
                        "system": DICOM_UID,
                        "value": f"urn:oid:{study.study_instance_uid}",
                    },
                },
            }
            for study in studies
        ]
    elif grant.scope == ConsentGrant.Scope.RULES:
        if grant.modalities:
            provision["code"] = [
                {"coding": [{"system": DICOM_DCM, "code": modality}]}
                for modality in grant.modalities
            ]
        data_period = {}
        if grant.rule_date_from:
            data_period["start"] = _date(grant.rule_date_from)
        if grant.rule_date_to:
            data_period["end"] = _date(grant.rule_date_to)
        if data_period:
            provision["dataPeriod"] = data_period
    return provision


def _grantee_reference(grant: ConsentGrant) -> dict:
    if grant.grantee_facility is not None:
        return organization_reference(grant.grantee_facility)
    return {
        "type": "Practitioner",
        "identifier": {"system": URI, "value": f"mailto:{grant.grantee_email}"},
        "display": grant.grantee_email,
    }


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _instant(moment: datetime) -> str:
    # FHIR instants need a zone; always UTC, so the same moment always reads the same.
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _date(day: date) -> str:
    return day.isoformat()


def _unique_by_pk(facilities: Iterable[Facility]) -> list[Facility]:
    seen: dict[int, Facility] = {}
    for facility in facilities:
        seen.setdefault(facility.pk, facility)
    return sorted(seen.values(), key=lambda f: f.name)
