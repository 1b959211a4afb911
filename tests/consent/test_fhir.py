"""The FHIR R4 Consent export: search and read for staff, the mapping, errors, audit.

Every body is validated with `fhir.resources`: its `R4B` package, whose Consent, Bundle and
OperationOutcome are the same as R4's (fhir.resources 8 defaults to R5, which changed Consent).
"""

from __future__ import annotations

import datetime
import uuid

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.operationoutcome import OperationOutcome

from audit.codes import Action, Outcome, TargetKind
from audit.models import AuditEvent
from consent.models import ConsentGrant, Purpose, SignedAuthorization
from consent.services import GrantRequest, change_consent, grant_consent, withdraw_consent
from studies.models import Study
from tests.factories import StudyFactory

SEARCH = reverse("fhir:consent-search")
ALL, CHOSEN, RULES = ConsentGrant.Scope.ALL, ConsentGrant.Scope.CHOSEN, ConsentGrant.Scope.RULES
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def read_url(grant: ConsentGrant) -> str:
    return reverse("fhir:consent-read", kwargs={"consent_id": str(grant.public_id)})


@pytest.fixture
def ct(patient_record, origin) -> Study:
    return StudyFactory(
        patient=patient_record,
        source_facility=origin,
        modalities_in_study="CT",
        study_date=datetime.date(2026, 6, 1),
        state=Study.State.AVAILABLE,
        study_instance_uid="2.25.4242",
    )


@pytest.fixture
def mr(patient_record, origin) -> Study:
    return StudyFactory(
        patient=patient_record,
        source_facility=origin,
        modalities_in_study="MR",
        study_date=datetime.date(2026, 7, 1),
        state=Study.State.AVAILABLE,
    )


def grant(patient_record, by, **fields) -> ConsentGrant:
    values = {"patient": patient_record, "purpose": Purpose.TREATMENT, "scope": ALL, **fields}
    return grant_consent(GrantRequest(**values), by=by)


@pytest.fixture
def staff_client(client, front_desk):
    client.force_login(front_desk)
    return client


def search(client, **params):
    return client.get(SEARCH, params)


def body_of(response) -> dict:
    assert response["Content-Type"] == "application/fhir+json"
    return response.json()


def consent_of(response) -> dict:
    body = body_of(response)
    Consent.model_validate(body)
    return body


def only_entry(response) -> dict:
    bundle = body_of(response)
    Bundle.model_validate(bundle)
    assert bundle["total"] == 1
    return bundle["entry"][0]["resource"]


def codes(concepts: list[dict]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for concept in concepts for c in concept["coding"]}


# --- Search ----------------------------------------------------------------------------------


def test_it_returns_a_searchset_bundle_of_the_patients_consents(
    staff_client, patient_record, receiver, ct, patient
):
    first = grant(patient_record, patient, grantee_facility=receiver)
    second = grant(
        patient_record,
        patient,
        grantee_email="Doc@Elsewhere.example.org",
        purpose=Purpose.SECOND_OPINION,
    )
    response = search(staff_client, patient=f"Patient/{patient_record.public_id}")
    assert response.status_code == 200
    bundle = body_of(response)
    Bundle.model_validate(bundle)
    assert (bundle["type"], bundle["total"]) == ("searchset", 2)
    assert bundle["link"] == [
        {
            "relation": "self",
            "url": f"http://testserver/fhir/Consent?patient=Patient%2F{patient_record.public_id}",
        }
    ]
    assert [e["fullUrl"] for e in bundle["entry"]] == [
        f"http://testserver/fhir/Consent/{g.public_id}" for g in (second, first)
    ]
    for entry in bundle["entry"]:
        Consent.model_validate(entry["resource"])
        assert entry["search"] == {"mode": "match"}
    assert "no-store" in response["Cache-Control"]


def test_it_takes_the_bare_id_and_the_patients_identifier(
    staff_client, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    for params in (
        {"patient": str(patient_record.public_id)},
        {"patient.identifier": "RGH|RGH-0042"},
    ):
        assert only_entry(search(staff_client, **params))["id"] == str(made.public_id)
    bundle = body_of(search(staff_client, **{"patient.identifier": "RGH|RGH-0042"}))
    assert bundle["link"][0]["url"].endswith("?patient.identifier=RGH%7CRGH-0042")


def test_it_answers_an_empty_bundle_for_a_known_patient_without_consents(
    staff_client, patient_record
):
    bundle = body_of(search(staff_client, patient=str(patient_record.public_id)))
    Bundle.model_validate(bundle)
    assert (bundle["total"], bundle["entry"]) == (0, [])


# --- The mapping -----------------------------------------------------------------------------


def test_it_maps_a_facility_grant(staff_client, patient_record, receiver, origin, ct, patient):
    made = grant(patient_record, patient, grantee_facility=receiver)
    consent = consent_of(staff_client.get(read_url(made)))
    assert consent["id"] == str(made.public_id)
    assert consent["status"] == "active"
    assert codes([consent["scope"]]) == {
        ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
    }
    assert codes(consent["category"]) == {
        ("http://loinc.org", "59284-0"),
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IDSCL"),
    }
    assert consent["patient"] == {"reference": f"Patient/{patient_record.public_id}"}
    assert consent["performer"] == [consent["patient"]]
    assert consent["organization"] == [
        {"reference": f"Organization/{origin.pk}", "type": "Organization", "display": origin.name}
    ]
    assert codes([consent["policyRule"]]) == {
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN")
    }
    assert consent["dateTime"] == made.created_at.astimezone(datetime.UTC).isoformat(
        timespec="seconds"
    )
    provision = consent["provision"]
    assert provision["type"] == "permit"
    assert provision["period"] == {
        "start": made.valid_from.astimezone(datetime.UTC).isoformat(timespec="seconds"),
        "end": made.valid_until.astimezone(datetime.UTC).isoformat(timespec="seconds"),
    }
    [actor] = provision["actor"]
    assert codes([actor["role"]]) == {
        ("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")
    }
    assert actor["reference"]["reference"] == f"Organization/{receiver.pk}"
    assert actor["reference"]["display"] == "Lakeside Imaging Center"
    assert provision["purpose"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "TREAT",
            "display": "Treatment",
        }
    ]
    assert provision["class"][0]["code"] == "ImagingStudy"
    assert "data" not in provision
    assert "securityLabel" not in provision
    assert "extension" not in consent
    assert "sourceAttachment" not in consent


def test_it_names_a_facilitys_npi(staff_client, patient_record, receiver, ct, patient):
    receiver.npi = "1234567893"
    receiver.save()
    made = grant(patient_record, patient, grantee_facility=receiver)
    [actor] = consent_of(staff_client.get(read_url(made)))["provision"]["actor"]
    assert actor["reference"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/us-npi",
        "value": "1234567893",
    }


def test_it_shows_a_withdrawn_grant_as_inactive_ending_at_the_withdrawal(
    staff_client, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    withdrawal = withdraw_consent(made, by=patient, reason="changed my mind")
    consent = only_entry(search(staff_client, patient=str(patient_record.public_id)))
    assert consent["status"] == "inactive"
    assert consent["provision"]["period"]["end"] == withdrawal.withdrawn_at.isoformat(
        timespec="seconds"
    )
    assert "changed my mind" not in str(consent)


def test_it_shows_an_expired_grant_as_inactive(
    client, front_desk, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    with time_machine.travel(made.valid_until + datetime.timedelta(seconds=1)):
        client.force_login(front_desk)
        consent = consent_of(client.get(read_url(made)))
    assert consent["status"] == "inactive"
    assert consent["provision"]["period"]["end"] == made.valid_until.astimezone(
        datetime.UTC
    ).isoformat(timespec="seconds")


def test_it_names_chosen_studies_as_data(staff_client, patient_record, receiver, ct, mr, patient):
    made = grant(patient_record, patient, grantee_facility=receiver, scope=CHOSEN, studies=[ct])
    provision = consent_of(staff_client.get(read_url(made)))["provision"]
    assert provision["data"] == [
        {
            "meaning": "related",
            "reference": {
                "reference": f"ImagingStudy/{ct.public_id}",
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:2.25.4242"},
            },
        }
    ]


def test_it_maps_rules_to_modality_codes_and_a_data_period(
    staff_client, patient_record, receiver, ct, mr, patient
):
    made = grant(
        patient_record,
        patient,
        grantee_facility=receiver,
        scope=RULES,
        purpose=Purpose.RESEARCH,
        rule_modalities=["mr", "CT"],
        rule_date_from=datetime.date(2026, 1, 1),
    )
    provision = consent_of(staff_client.get(read_url(made)))["provision"]
    assert codes(provision["code"]) == {(DCM, "CT"), (DCM, "MR")}
    assert provision["dataPeriod"] == {"start": "2026-01-01"}
    assert provision["purpose"][0]["code"] == "HRESCH"
    # Research recipients only ever get de-identified copies.
    assert provision["securityLabel"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "DEID",
            "display": "deidentify",
        }
    ]
    assert "data" not in provision


def test_it_names_a_clinician_by_their_email(staff_client, patient_record, ct, patient):
    made = grant(patient_record, patient, grantee_email="doc@elsewhere.example.org")
    [actor] = consent_of(staff_client.get(read_url(made)))["provision"]["actor"]
    assert actor["reference"] == {
        "type": "Practitioner",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "mailto:doc@elsewhere.example.org"},
        "display": "doc@elsewhere.example.org",
    }


def test_it_links_a_change_to_the_grant_it_replaces(
    staff_client, patient_record, receiver, ct, patient
):
    old = grant(patient_record, patient, grantee_facility=receiver)
    new = change_consent(
        old,
        GrantRequest(
            patient=patient_record, purpose=Purpose.EMERGENCY, scope=ALL, grantee_facility=receiver
        ),
        by=patient,
    )
    bundle = body_of(search(staff_client, patient=str(patient_record.public_id)))
    Bundle.model_validate(bundle)
    by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert by_id[str(old.public_id)]["status"] == "inactive"
    assert by_id[str(new.public_id)]["status"] == "active"
    assert by_id[str(new.public_id)]["extension"] == [
        {
            "url": "http://testserver/fhir/StructureDefinition/consent-replaces",
            "valueReference": {"reference": f"Consent/{old.public_id}"},
        }
    ]


def test_it_points_a_signed_grant_at_its_authorization(
    staff_client, patient_record, receiver, origin, ct, front_desk
):
    made = grant(
        patient_record,
        front_desk,
        grantee_facility=receiver,
        source=ConsentGrant.Source.SIGNED_AUTHORIZATION,
    )
    signed_at = timezone.now().replace(microsecond=0)
    authorization = SignedAuthorization.objects.create(
        patient=patient_record,
        facility=origin,
        witnessed_by=front_desk,
        signed_at=signed_at,
        method=SignedAuthorization.Method.DRAWN,
        statement="I authorize…",
        content_sha256="0" * 64,
        pdf_object_name=f"authorizations/{uuid.uuid4().hex}",
        pdf_kek_id="test",
        pdf_wrapped_key=b"k",
        pdf_object_id=b"0" * 16,
        pdf_sha256="1" * 64,
        pdf_size=12345,
    )
    ConsentGrant.objects.filter(pk=made.pk).update(authorization=authorization)
    consent = consent_of(staff_client.get(read_url(made)))
    assert ("http://loinc.org", "64292-6") in codes(consent["category"])
    assert consent["performer"] == [{"reference": f"Patient/{patient_record.public_id}"}]
    assert consent["sourceAttachment"] == {
        "contentType": "application/pdf",
        "title": "Signed authorization (signed on screen)",
        "creation": signed_at.astimezone(datetime.UTC).isoformat(),
        "size": 12345,
    }
    assert [o["reference"] for o in consent["organization"]] == [f"Organization/{origin.pk}"]


# --- Who may read ----------------------------------------------------------------------------


def test_every_role_of_a_facility_that_knows_the_patient_may_read(
    client, facility_admin, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    client.force_login(facility_admin)
    assert client.get(read_url(made)).status_code == 200


def test_it_sends_anonymous_visitors_to_sign_in(client, patient_record, receiver, ct, patient):
    made = grant(patient_record, patient, grantee_facility=receiver)
    for url in (f"{SEARCH}?patient={patient_record.public_id}", read_url(made)):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize("who", ["patient", "platform_admin"])
def test_it_refuses_people_who_are_not_facility_staff(
    client, request, who, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    client.force_login(request.getfixturevalue(who))
    for url in (f"{SEARCH}?patient={patient_record.public_id}", read_url(made)):
        response = client.get(url)
        assert response.status_code == 403
        OperationOutcome.model_validate(body_of(response))
    assert not AuditEvent.objects.filter(action=Action.CONSENT_EXPORTED).exists()


@pytest.mark.parametrize("who", ["stranger", "clinician"])
def test_staff_of_facilities_that_do_not_know_the_patient_get_404(
    client, request, who, patient_record, receiver, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    client.force_login(request.getfixturevalue(who))
    for url in (
        f"{SEARCH}?patient={patient_record.public_id}",
        read_url(made),
        f"{SEARCH}?patient.identifier=RGH|RGH-0042",
    ):
        response = client.get(url)
        assert response.status_code == 404
        outcome = body_of(response)
        OperationOutcome.model_validate(outcome)
        assert outcome["issue"][0]["code"] == "not-found"
    denied = AuditEvent.objects.filter(action=Action.CONSENT_EXPORTED, outcome=Outcome.DENIED)
    assert denied.count() == 3
    assert set(denied.values_list("patient_id", flat=True)) == {patient_record.pk}


def test_it_answers_404_for_what_does_not_exist(staff_client, patient_record):
    for url in (
        f"{SEARCH}?patient={uuid.uuid4()}",
        f"{SEARCH}?patient.identifier=RGH|NOPE",
        reverse("fhir:consent-read", kwargs={"consent_id": str(uuid.uuid4())}),
        reverse("fhir:consent-read", kwargs={"consent_id": "not-a-uuid"}),
    ):
        response = staff_client.get(url)
        assert response.status_code == 404, url
        OperationOutcome.model_validate(body_of(response))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "patient=",
        "patient=Patient/123",
        "patient=Observation/1",
        "patient=RGH-0042",
        "patient.identifier=RGH-0042",
        "patient.identifier=|RGH-0042",
        "patient.identifier=RGH|",
        "patient={id}&patient.identifier=RGH|RGH-0042",
        "patient={id}&patient={id}",
        "patient={id},{id}",
        "name=DOE",
    ],
)
def test_it_refuses_a_bad_or_missing_patient_parameter_with_400(
    staff_client, patient_record, query
):
    response = staff_client.get(f"{SEARCH}?{query.format(id=patient_record.public_id)}")
    assert response.status_code == 400
    outcome = body_of(response)
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["code"] in ("required", "invalid")
    assert not AuditEvent.objects.filter(action=Action.CONSENT_EXPORTED).exists()


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_it_only_answers_get(staff_client, patient_record, receiver, ct, patient, method):
    made = grant(patient_record, patient, grantee_facility=receiver)
    for url in (f"{SEARCH}?patient={patient_record.public_id}", read_url(made)):
        response = getattr(staff_client, method)(url)
        assert response.status_code == 405
        assert response["Allow"] == "GET, HEAD"
        OperationOutcome.model_validate(body_of(response))
    assert ConsentGrant.objects.filter(pk=made.pk).exists()


# --- Audit -----------------------------------------------------------------------------------


def test_every_export_is_audited(
    staff_client, front_desk, patient_record, receiver, origin, ct, patient
):
    made = grant(patient_record, patient, grantee_facility=receiver)
    search(staff_client, patient=str(patient_record.public_id))
    staff_client.get(read_url(made))
    searched, read = AuditEvent.objects.filter(action=Action.CONSENT_EXPORTED).order_by("sequence")
    for event in (searched, read):
        assert (event.outcome, event.actor_id, event.facility_id, event.patient_id) == (
            Outcome.ALLOWED,
            str(front_desk.pk),
            origin.pk,
            patient_record.pk,
        )
        assert event.dicom_event_id == "110106"
    assert (searched.target_kind, searched.target_id) == (
        TargetKind.PATIENT,
        str(patient_record.pk),
    )
    assert searched.detail == {"format": "fhir", "interaction": "search", "resources": 1}
    assert (read.target_kind, read.target_id, read.purpose) == (
        TargetKind.GRANT,
        str(made.pk),
        "TREAT",
    )
