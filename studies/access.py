"""Who may see and decide on studies. The facility membership is part of every query."""

from __future__ import annotations

import uuid

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import User
from facilities.models import Facility, Membership, Role
from studies.models import Patient, Study

# Who fixes studies that could not be matched: the people who register patients.
RECONCILING_ROLES = (Role.FRONT_DESK, Role.FACILITY_ADMIN)


def reconciling_facilities(user: User) -> QuerySet[Facility]:
    """Facilities whose unmatched studies `user` may decide on."""
    return Facility.objects.filter(
        memberships__user=user, memberships__role__in=RECONCILING_ROLES
    ).distinct()


def get_waiting_study_for_user(user: User, public_id: str) -> Study:
    """A study waiting for a person (pending or held) at one of the user's facilities.

    404 for anyone without a membership at the study's facility, 403 for a role there that
    does not reconcile.
    """
    study = (
        Study.objects.select_related("source_facility", "candidate_patient")
        .filter(
            public_id=public_id,
            match__in=(Study.Match.PENDING, Study.Match.HELD),
            source_facility__memberships__user=user,
        )
        .first()
    )
    if study is None:
        raise Http404("No such study")
    role = (
        Membership.objects.filter(user=user, facility_id=study.source_facility_id)
        .values_list("role", flat=True)
        .first()
    )
    if role not in RECONCILING_ROLES:
        raise PermissionDenied("Your role does not match studies to patients")
    return study


def patients_visible_to_facility(facility: Facility) -> QuerySet[Patient]:
    """Patients a facility's staff may pick from: those with an identifier issued through it
    or a study it holds."""
    return Patient.objects.filter(
        Q(identifiers__facility=facility) | Q(studies__source_facility=facility)
    ).distinct()


def get_patient_for_facility(facility: Facility, public_id: str) -> Patient:
    patient = patients_visible_to_facility(facility).filter(public_id=public_id).first()
    if patient is None:
        raise Http404("No such patient")
    return patient


def staff_facilities(user: User) -> QuerySet[Facility]:
    """Facilities where the user holds any role: whose studies they may look at."""
    return Facility.objects.filter(memberships__user=user).order_by("name")


def studies_for_staff(user: User) -> QuerySet[Study]:
    """Studies received by any facility where the user holds a role, whatever the role.

    A membership is unique per (user, facility), so the join cannot repeat a study.
    Platform admins hold no membership and see no study this way.
    """
    return Study.objects.filter(source_facility__memberships__user=user)


def get_study_for_staff(user: User, public_id: str | uuid.UUID) -> Study:
    """A study of one of the user's facilities, with its facility and patient; 404 for
    anyone without a membership there, so a stranger cannot tell it exists."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        raise Http404("No such study") from None
    study = (
        studies_for_staff(user)
        .select_related("source_facility", "patient")
        .filter(public_id=public_id)
        .first()
    )
    if study is None:
        raise Http404("No such study")
    return study


def get_patient_for_user(user: User) -> Patient | None:
    """The patient record a signed-in person's account is linked to, if any."""
    if not user.is_authenticated:
        return None
    return Patient.objects.filter(account=user).first()


# --- Patients: their own studies -----------------------------------------------------------------


def studies_of_patient(patient: Patient) -> QuerySet[Study]:
    """The studies filed under a patient: matched to them, in whatever state. Studies still
    waiting for the front desk are not theirs until a person files them."""
    return Study.objects.filter(patient=patient, match=Study.Match.MATCHED)


def get_study_for_patient(user: User, public_id: str | uuid.UUID) -> Study:
    """One of the signed-in patient's own studies, with its facility: 404 for any other
    study, for staff and for an account linked to no patient, so nobody can tell it exists."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        raise Http404("No such study") from None
    if not user.is_authenticated:
        raise Http404("No such study")
    study = (
        Study.objects.select_related("source_facility")
        .filter(public_id=public_id, patient__account=user, match=Study.Match.MATCHED)
        .first()
    )
    if study is None:
        raise Http404("No such study")
    return study
