from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit.codes import Action, ActorKind, Outcome, TargetKind
from audit.models import AuditEvent
from facilities.models import Membership, Role
from facilities.services import membership_remove


def membership_of(user, facility):
    return Membership.objects.get(user=user, facility=facility)


def test_it_removes_and_audits(origin, front_desk, facility_admin):
    membership = membership_of(front_desk, origin)

    membership_remove(membership=membership, actor=facility_admin)

    assert not Membership.objects.filter(pk=membership.pk).exists()
    event = AuditEvent.objects.get(action=Action.STAFF_REMOVED)
    assert event.outcome == Outcome.ALLOWED
    assert event.facility_id == origin.pk
    assert event.actor_kind == ActorKind.USER
    assert event.actor_id == str(facility_admin.pk)
    assert event.target_kind == TargetKind.MEMBERSHIP
    assert event.target_id == str(membership.pk)
    assert event.detail == {"role": Role.FRONT_DESK, "user_id": front_desk.pk}


def test_it_keeps_the_account(origin, front_desk, facility_admin):
    membership_remove(membership=membership_of(front_desk, origin), actor=facility_admin)
    front_desk.refresh_from_db()
    assert front_desk.is_active


def test_it_refuses_to_remove_the_last_facility_admin(origin, facility_admin):
    membership = membership_of(facility_admin, origin)

    with pytest.raises(ValidationError, match="last facility admin of Riverside"):
        membership_remove(membership=membership, actor=facility_admin)

    assert Membership.objects.filter(pk=membership.pk).exists()
    assert not AuditEvent.objects.filter(action=Action.STAFF_REMOVED).exists()


def test_it_removes_an_admin_when_another_remains(origin, facility_admin, second_admin):
    membership_remove(membership=membership_of(second_admin, origin), actor=facility_admin)
    assert list(Membership.objects.filter(facility=origin, role=Role.FACILITY_ADMIN)) == [
        membership_of(facility_admin, origin)
    ]
    # Now the one left is the last one, even when removing themselves.
    with pytest.raises(ValidationError):
        membership_remove(membership=membership_of(facility_admin, origin), actor=facility_admin)


def test_it_lets_an_admin_leave_when_another_remains(origin, facility_admin, second_admin):
    membership_remove(membership=membership_of(facility_admin, origin), actor=facility_admin)
    assert not Membership.objects.filter(user=facility_admin, facility=origin).exists()


def test_it_does_nothing_when_already_removed(origin, front_desk, facility_admin):
    membership = membership_of(front_desk, origin)
    membership_remove(membership=membership, actor=facility_admin)
    membership_remove(membership=membership, actor=facility_admin)
    assert AuditEvent.objects.filter(action=Action.STAFF_REMOVED).count() == 1


@pytest.mark.parametrize("actor_name", ["front_desk", "stranger", "clinician", "patient"])
def test_it_refuses_an_actor_who_is_not_a_facility_admin_there(
    request, origin, facility_admin, actor_name
):
    actor = request.getfixturevalue(actor_name)
    membership = membership_of(facility_admin, origin)
    with pytest.raises(PermissionDenied):
        membership_remove(membership=membership, actor=actor)
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_it_refuses_an_admin_who_was_deactivated(origin, front_desk, facility_admin):
    facility_admin.is_active = False
    facility_admin.save()
    with pytest.raises(PermissionDenied):
        membership_remove(membership=membership_of(front_desk, origin), actor=facility_admin)
