"""Reads of the study index that views share."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Upper

from facilities.models import Facility
from studies.access import patients_visible_to_facility
from studies.models import Patient, Study

PATIENT_SEARCH_LIMIT = 20


def studies_waiting_for_a_person(
    facilities: QuerySet[Facility], *, match: str = Study.Match.PENDING
) -> QuerySet[Study]:
    """Studies of these facilities that wait for staff to match them, oldest first: the
    longer a study waits, the longer it cannot be shared."""
    return (
        Study.objects.filter(source_facility__in=facilities, match=match)
        .select_related("source_facility", "candidate_patient")
        .order_by("received_at")
    )


def patient_search(facility: Facility, query: str) -> list[Patient]:
    """Patients of `facility` whose name contains `query` (any case) or who hold an
    identifier equal to it; at most PATIENT_SEARCH_LIMIT, with their identifiers."""
    query = " ".join(query.split())
    if len(query) < 2:
        return []
    name_words = [word.upper() for word in query.replace(",", " ").split()]
    name_match = Q()
    for word in name_words:
        name_match &= Q(name_upper__contains=word)
    return list(
        patients_visible_to_facility(facility)
        .annotate(name_upper=Upper("name"))
        .filter(name_match | Q(identifiers__value=query))
        .annotate(study_count=Count("studies", distinct=True))
        .prefetch_related("identifiers")
        .order_by("name", "birth_date")[:PATIENT_SEARCH_LIMIT]
    )
