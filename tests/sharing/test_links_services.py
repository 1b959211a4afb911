"""Share links as services: making one (and its grant), ending one, reading through one, and
the access decision asked again on every use."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from unittest import mock

import pytest
import time_machine
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from consent.models import ConsentGrant, Purpose
from consent.services import GrantRequest, grant_consent, withdraw_consent
from sharing import links
from sharing.links import (
    LinkRefused,
    ShareLinkError,
    ShareLinkRequest,
    create_share_link,
    link_read_access,
    revoke_share_link,
    share_link_for_token,
)
from sharing.models import ShareLink
from studies.models import Study
from tests.factories import PatientFactory, StudyFactory
from tests.sharing.conftest import LINK_RECIPIENT

pytestmark = pytest.mark.django_db


def verified_request(link: ShareLink, *, address: str = "203.0.113.7"):
    """A request whose session proved the link's code, as `verify_code` leaves it."""
    request = RequestFactory().get("/", REMOTE_ADDR=address)
    from django.contrib.sessions.backends.db import SessionStore

    request.session = SessionStore()
    links.remember_token(request, link)
    links._bind_session(request, link)
    return request


# --- Making a link --------------------------------------------------------------------------------


def test_it_gives_a_grant_for_the_clinician_when_none_covers_the_link(
    make_link, patient, patient_record, shared_study
):
    link, _ = make_link()
    grant = link.grant
    assert grant.patient == patient_record
    assert grant.grantee_email == LINK_RECIPIENT
    assert grant.grantee_facility is None
    assert grant.purpose == Purpose.SECOND_OPINION
    assert grant.scope == ConsentGrant.Scope.CHOSEN
    assert list(grant.studies.all()) == [shared_study]
    assert grant.source == ConsentGrant.Source.PATIENT_ONLINE
    assert grant.valid_until >= link.expires_at
    assert list(link.studies.all()) == [shared_study]
    assert link.purpose == grant.purpose
    assert link.created_by == patient
    assert AuditEvent.objects.filter(action=Action.GRANT_CREATED, target_id=str(grant.pk)).exists()


def test_it_expires_after_the_default_days(make_link, settings):
    settings.LINK_DEFAULT_DAYS = 14
    with time_machine.travel("2026-06-01 12:00:00+00:00", tick=False):
        link, _ = make_link()
    assert link.expires_at == timezone.now().replace(
        year=2026, month=6, day=15, hour=12, minute=0, second=0, microsecond=0
    )


def test_it_gives_the_grant_to_a_facility_chosen_from_the_directory(make_link, receiver):
    link, _ = make_link(recipient_facility=receiver, recipient_facility_name="")
    assert link.grant.grantee_facility == receiver
    assert link.grant.grantee_email == ""
    assert link.recipient_facility == receiver
    assert link.recipient_email == LINK_RECIPIENT


def test_it_reuses_a_grant_that_already_covers_the_link(
    make_link, patient, patient_record, receiver, shared_study, second_study
):
    given = grant_consent(
        GrantRequest(
            patient=patient_record,
            purpose=Purpose.SECOND_OPINION,
            scope=ConsentGrant.Scope.ALL,
            grantee_facility=receiver,
        ),
        by=patient,
    )
    link, _ = make_link(recipient_facility=receiver, studies=[shared_study, second_study], days=30)
    assert link.grant == given
    assert ConsentGrant.objects.count() == 1
    event = AuditEvent.objects.get(action=Action.LINK_CREATED)
    assert event.detail["grant_reused"] is True


def test_a_grant_withdrawn_while_the_link_is_made_is_not_used(
    make_link, patient, patient_record, receiver, shared_study
):
    grant = grant_consent(
        GrantRequest(patient=patient_record, purpose=Purpose.SECOND_OPINION,
                     scope=ConsentGrant.Scope.ALL, grantee_facility=receiver),
        by=patient,
    )  # fmt: skip
    # The withdrawal commits between the look-up and the link: the row lock sees it.
    withdraw_consent(grant, by=patient)
    with (
        mock.patch("sharing.links._reusable_grant", return_value=grant),
        pytest.raises(ShareLinkError, match="just withdrawn"),
    ):
        make_link(recipient_facility=receiver)
    assert ShareLink.objects.count() == 0


@pytest.mark.parametrize(
    "differs",
    ["purpose", "withdrawn", "deidentified", "other study", "other grantee"],
)
def test_it_does_not_reuse_a_grant_that_does_not_fit(
    differs, make_link, patient, patient_record, receiver, elsewhere, shared_study, second_study
):
    grant = grant_consent(
        GrantRequest(
            patient=patient_record,
            purpose=Purpose.TREATMENT if differs == "purpose" else Purpose.SECOND_OPINION,
            scope=ConsentGrant.Scope.CHOSEN,
            studies=[second_study] if differs == "other study" else [shared_study],
            grantee_facility=elsewhere if differs == "other grantee" else receiver,
            deidentify=differs == "deidentified",
        ),
        by=patient,
    )
    if differs == "withdrawn":
        withdraw_consent(grant, by=patient)
    link, _ = make_link(recipient_facility=receiver)
    assert link.grant != grant
    assert link.grant.grantee_facility == receiver
    assert link.grant.deidentify is False


def test_it_never_outlasts_its_grant(make_link, patient_record, origin):
    # A study whose availability ends in 5 days: the grant (and so the link) ends with it.
    today = timezone.localdate()
    ending = StudyFactory(
        patient=patient_record,
        source_facility=origin,
        study_date=today - timedelta(days=400),
        available_until=today + timedelta(days=5),
        state=Study.State.AVAILABLE,
    )
    link, _ = make_link(studies=[ending], days=14)
    assert link.expires_at == link.grant.valid_until
    assert link.expires_at < timezone.now() + timedelta(days=7)
    assert AuditEvent.objects.get(action=Action.LINK_CREATED).detail["capped"] is True


def test_the_preview_says_when_the_link_is_cut_short(patient, patient_record, origin):
    today = timezone.localdate()
    ending = StudyFactory(
        patient=patient_record,
        source_facility=origin,
        study_date=today - timedelta(days=400),
        available_until=today + timedelta(days=5),
        state=Study.State.AVAILABLE,
    )
    preview = links.share_link_preview(
        ShareLinkRequest(
            patient=patient_record,
            studies=[ending],
            recipient_email="a@b.example.org",
            purpose=Purpose.TREATMENT,
            recipient_facility_name="Clinic",
        ),
        by=patient,
    )
    assert preview.capped
    assert preview.new_grant
    assert preview.grant_last_day == today + timedelta(days=5)
    assert ShareLink.objects.count() == 0
    assert ConsentGrant.objects.count() == 0


def test_it_keeps_only_the_hash_of_the_token(make_link):
    link, token = make_link()
    assert len(token) == 43  # 256 random bits
    assert link.token_hash == hashlib.sha256(token.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM sharing_sharelink")
        rows = cursor.fetchall()
    assert token not in repr(rows)
    event = AuditEvent.objects.get(action=Action.LINK_CREATED)
    assert token not in repr(event.detail)


def test_tokens_differ_between_links(make_link):
    _, first = make_link()
    _, second = make_link()
    assert first != second


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipient_email": "not an address"}, "e-mail address"),
        ({"recipient_email": ""}, "e-mail address"),
        ({"purpose": Purpose.RESEARCH}, "Choose what the images are for"),
        ({"purpose": Purpose.EDUCATION}, "Choose what the images are for"),
        ({"purpose": "NONSENSE"}, "Choose what the images are for"),
        ({"recipient_facility_name": ""}, "type its name"),
        ({"recipient_facility_name": "x" * 201}, "200 characters"),
        ({"days": 0}, "from 1 to"),
        ({"days": 91}, "from 1 to"),
        ({"studies": []}, "at least one study"),
    ],
)
def test_it_refuses_bad_requests_and_keeps_nothing(make_link, change, message):
    with pytest.raises(ShareLinkError, match=message):
        make_link(**change)
    assert ShareLink.objects.count() == 0
    assert ConsentGrant.objects.count() == 0
    assert not AuditEvent.objects.filter(action=Action.LINK_CREATED).exists()


def test_it_refuses_a_facility_and_a_typed_name_together(make_link, receiver):
    with pytest.raises(ShareLinkError, match="type its name"):
        make_link(recipient_facility=receiver, recipient_facility_name="Another")


def test_it_refuses_another_patients_study(make_link, origin):
    foreign = StudyFactory(source_facility=origin, patient=PatientFactory(),
                           state=Study.State.AVAILABLE)  # fmt: skip
    with pytest.raises(ShareLinkError, match="cannot be shared"):
        make_link(studies=[foreign])
    assert ShareLink.objects.count() == 0


@pytest.mark.parametrize("state", [Study.State.PUBLISHING, Study.State.SHREDDED])
def test_it_refuses_a_study_that_is_not_available(make_link, patient_record, origin, state):
    study = StudyFactory(patient=patient_record, source_facility=origin, state=state)
    with pytest.raises(ShareLinkError, match="cannot be shared"):
        make_link(studies=[study])


def test_only_the_patient_makes_links_for_themselves(make_link, other_patient, front_desk):
    for stranger in (other_patient, front_desk):
        with pytest.raises(PermissionDenied):
            make_link(by=stranger)
    assert ShareLink.objects.count() == 0


# --- The front desk, for a patient at the desk ----------------------------------------------------


def _verify_identity(patient_record, origin, front_desk):
    from studies.invitations import identity_verification_record
    from studies.models import IdentityVerification

    identity_verification_record(
        patient=patient_record,
        facility=origin,
        method=IdentityVerification.Method.choices[0][0],
        document_type=IdentityVerification.Document.choices[0][0],
        actor=front_desk,
    )


def test_the_front_desk_shares_under_a_consent_the_patient_gave(
    patient, patient_record, origin, receiver, front_desk, shared_study
):
    given = grant_consent(
        GrantRequest(
            patient=patient_record,
            purpose=Purpose.TREATMENT,
            scope=ConsentGrant.Scope.ALL,
            grantee_facility=receiver,
        ),
        by=patient,
    )
    _verify_identity(patient_record, origin, front_desk)
    link, _ = create_share_link(
        ShareLinkRequest(
            patient=patient_record,
            studies=[shared_study],
            recipient_email=LINK_RECIPIENT,
            purpose=Purpose.TREATMENT,
            recipient_facility=receiver,
        ),
        by=front_desk,
        on_behalf_at=origin,
    )
    assert link.grant == given
    assert link.created_by == front_desk
    event = AuditEvent.objects.get(action=Action.LINK_CREATED)
    assert event.detail["by"] == "front_desk"
    assert event.facility_id == origin.pk
    assert event.actor_id == str(front_desk.pk)


def test_the_front_desk_never_gives_consent_itself(
    patient_record, origin, receiver, front_desk, shared_study
):
    _verify_identity(patient_record, origin, front_desk)
    with pytest.raises(ShareLinkError, match="signed authorization"):
        create_share_link(
            ShareLinkRequest(
                patient=patient_record,
                studies=[shared_study],
                recipient_email=LINK_RECIPIENT,
                purpose=Purpose.TREATMENT,
                recipient_facility=receiver,
            ),
            by=front_desk,
            on_behalf_at=origin,
        )
    assert ConsentGrant.objects.count() == 0
    assert ShareLink.objects.count() == 0


def test_the_front_desk_checks_identity_first(
    patient, patient_record, origin, receiver, front_desk, shared_study
):
    grant_consent(
        GrantRequest(patient=patient_record, purpose=Purpose.TREATMENT,
                     scope=ConsentGrant.Scope.ALL, grantee_facility=receiver),
        by=patient,
    )  # fmt: skip
    with pytest.raises(ShareLinkError, match="identity"):
        create_share_link(
            ShareLinkRequest(patient=patient_record, studies=[shared_study],
                             recipient_email=LINK_RECIPIENT, purpose=Purpose.TREATMENT,
                             recipient_facility=receiver),
            by=front_desk,
            on_behalf_at=origin,
        )  # fmt: skip


def test_staff_of_another_facility_cannot_share(patient_record, elsewhere, stranger, shared_study):
    with pytest.raises(PermissionDenied):
        create_share_link(
            ShareLinkRequest(patient=patient_record, studies=[shared_study],
                             recipient_email=LINK_RECIPIENT, purpose=Purpose.TREATMENT,
                             recipient_facility_name="Clinic"),
            by=stranger,
            on_behalf_at=elsewhere,
        )  # fmt: skip


# --- Tokens ---------------------------------------------------------------------------------------


def test_it_finds_a_link_by_its_token(make_link):
    link, token = make_link()
    assert share_link_for_token(token) == link


@pytest.mark.parametrize(
    "token",
    ["", "short", "A" * 42, "A" * 44, "A" * 42 + "!", "../" * 15, "A" * 42 + "\n"],
)
def test_malformed_tokens_are_refused_before_the_database(token, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert share_link_for_token(token) is None


def test_an_unknown_token_finds_nothing(make_link):
    _, token = make_link()
    other = ("B" if token[0] != "B" else "C") + token[1:]
    assert share_link_for_token(other) is None


# --- Reading through a link -----------------------------------------------------------------------


def test_a_verified_session_reads_the_shared_study(make_link, shared_study):
    link, _ = make_link()
    access = link_read_access(verified_request(link), link.public_id)
    assert access.allows(shared_study)
    assert access.reader.actor_kind == ActorKind.SHARE_LINK
    assert access.reader.actor_id == link.pk
    assert access.reader.purpose == Purpose.SECOND_OPINION


def test_it_reads_no_other_study(make_link, shared_study, second_study, origin):
    foreign = StudyFactory(source_facility=origin, patient=PatientFactory(),
                           state=Study.State.AVAILABLE)  # fmt: skip
    link, _ = make_link()
    access = link_read_access(verified_request(link), link.public_id)
    assert not access.allows(second_study)
    assert not access.allows(foreign)


def test_revocation_stops_the_next_read(make_link, patient, shared_study):
    link, _ = make_link()
    access = link_read_access(verified_request(link), link.public_id)
    assert access.allows(shared_study)
    revoke_share_link(link, patient)
    assert not access.allows(shared_study)
    with pytest.raises(LinkRefused) as refused:
        link_read_access(verified_request(link), link.public_id)
    assert refused.value.reason == "revoked"


def test_withdrawal_stops_the_next_read(make_link, patient, shared_study):
    link, _ = make_link()
    access = link_read_access(verified_request(link), link.public_id)
    withdraw_consent(link.grant, by=patient)
    assert not access.allows(shared_study)
    with pytest.raises(LinkRefused) as refused:
        link_read_access(verified_request(link), link.public_id)
    assert refused.value.reason == "withdrawn"
    link.refresh_from_db()
    assert link.state_at(timezone.now()) == ShareLink.State.ENDED


def test_expiry_stops_the_next_read(make_link, shared_study):
    link, _ = make_link(days=1)
    access = link_read_access(verified_request(link), link.public_id)
    with time_machine.travel(link.expires_at + timedelta(seconds=1)):
        assert not access.allows(shared_study)
        with pytest.raises(LinkRefused) as refused:
            link_read_access(verified_request(link), link.public_id)
    assert refused.value.reason == "expired"


def test_a_session_that_did_not_prove_the_code_reads_nothing(make_link):
    link, _ = make_link()
    request = RequestFactory().get("/")
    from django.contrib.sessions.backends.db import SessionStore

    request.session = SessionStore()
    links.remember_token(request, link)  # holds the token, but no code yet
    with pytest.raises(LinkRefused) as refused:
        link_read_access(request, link.public_id)
    assert refused.value.reason == "not_verified"


def test_a_verified_session_is_asked_again_after_its_hours(make_link, settings):
    settings.LINK_SESSION_HOURS = 2
    link, _ = make_link()
    request = verified_request(link)
    with (
        time_machine.travel(timezone.now() + timedelta(hours=2, minutes=1)),
        pytest.raises(LinkRefused) as refused,
    ):
        link_read_access(request, link.public_id)
    assert refused.value.reason == "not_verified"


def test_proof_for_one_link_opens_no_other(make_link):
    first, _ = make_link()
    second, _ = make_link()
    with pytest.raises(LinkRefused):
        link_read_access(verified_request(first), second.public_id)


def test_an_unknown_link_is_refused_and_audited(db):
    request = RequestFactory().get("/")
    from django.contrib.sessions.backends.db import SessionStore

    request.session = SessionStore()
    with pytest.raises(LinkRefused) as refused:
        link_read_access(request, uuid.uuid4())
    assert refused.value.reason == "unknown"
    event = AuditEvent.objects.get(action=Action.LINK_REFUSED)
    assert event.outcome == Outcome.DENIED
    assert event.detail == {"reason": "unknown"}


def test_refusals_are_audited_against_the_patient(make_link, patient, patient_record):
    link, _ = make_link()
    revoke_share_link(link, patient)
    with pytest.raises(LinkRefused):
        link_read_access(verified_request(link), link.public_id)
    event = AuditEvent.objects.filter(action=Action.LINK_REFUSED).get()
    assert event.patient_id == patient_record.pk
    assert event.actor_kind == ActorKind.SHARE_LINK
    assert event.actor_id == str(link.pk)
    assert event.target_kind == TargetKind.SHARE_LINK
    assert event.detail == {"reason": "revoked"}
    assert event.client_address == "203.0.113.7"


def test_a_shredded_study_is_not_read(make_link, shared_study):
    link, _ = make_link()
    access = link_read_access(verified_request(link), link.public_id)
    Study.objects.filter(pk=shared_study.pk).update(state=Study.State.SHREDDED)
    shared_study.refresh_from_db()
    assert not access.allows(shared_study)


# --- Ending a link --------------------------------------------------------------------------------


def test_revoking_is_recorded_and_audited(
    make_link, patient, patient_record, django_capture_on_commit_callbacks
):
    link, _ = make_link()
    with django_capture_on_commit_callbacks() as callbacks:
        ended = revoke_share_link(link, patient)
    assert ended.revoked_at is not None
    assert ended.revoked_by == patient
    assert len(callbacks) == 1  # the recipient's e-mail, queued on commit
    event = AuditEvent.objects.get(action=Action.LINK_REVOKED)
    assert event.patient_id == patient_record.pk
    assert event.target_id == str(link.pk)


def test_revoking_twice_changes_nothing(make_link, patient, django_capture_on_commit_callbacks):
    link, _ = make_link()
    first = revoke_share_link(link, patient)
    with django_capture_on_commit_callbacks() as callbacks:
        second = revoke_share_link(link, patient)
    assert second.revoked_at == first.revoked_at
    assert callbacks == []
    assert AuditEvent.objects.filter(action=Action.LINK_REVOKED).count() == 1


def test_revoking_an_expired_link_tells_nobody(
    make_link, patient, django_capture_on_commit_callbacks
):
    link, _ = make_link(days=1)
    with (
        time_machine.travel(link.expires_at + timedelta(hours=1)),
        django_capture_on_commit_callbacks() as callbacks,
    ):
        revoke_share_link(link, patient)
    assert callbacks == []


@pytest.mark.parametrize(
    ("setup", "state"),
    [
        ("new", ShareLink.State.ACTIVE),
        ("opened", ShareLink.State.OPENED),
        ("revoked", ShareLink.State.ENDED),
        ("withdrawn", ShareLink.State.ENDED),
        ("expired", ShareLink.State.EXPIRED),
    ],
)
def test_the_state_a_patient_sees(make_link, patient, setup, state):
    link, _ = make_link(days=1)
    now = timezone.now()
    if setup == "opened":
        link.first_opened_at = now
    if setup == "revoked":
        revoke_share_link(link, patient)
        link.refresh_from_db()
    if setup == "withdrawn":
        withdraw_consent(link.grant, by=patient)
        link = ShareLink.objects.select_related("grant__withdrawal").get(pk=link.pk)
    when = link.expires_at + timedelta(seconds=1) if setup == "expired" else timezone.now()
    assert link.state_at(when) == state
