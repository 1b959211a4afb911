from __future__ import annotations

import datetime

import factory
from allauth.account.models import EmailAddress
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.utils import timezone

from accounts.models import User
from facilities.models import Facility, Membership, Role
from studies.models import Patient, PatientIdentifier, Series, Study

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.org")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def verified_email(self, create: bool, extracted: object, **kwargs: object) -> None:
        """Everyone who can sign in has a verified address (allauth requires it)."""
        if create:
            self.save()
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)


class FacilityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Facility

    name = factory.Sequence(lambda n: f"Facility {n}")
    kind = Facility.Kind.BOTH
    contact_email = factory.Sequence(lambda n: f"imaging{n}@facility.example.org")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    facility = factory.SubFactory(FacilityFactory)
    role = Role.FRONT_DESK


def enable_totp(user: User) -> str:
    """Give a user an authenticator app; returns its secret so tests can make codes."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def make_staff(facility: Facility, role: str, *, email: str, mfa: bool = True) -> User:
    user = UserFactory(email=email)
    MembershipFactory(user=user, facility=facility, role=role)
    if mfa:
        enable_totp(user)
    return user


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    name = factory.Sequence(lambda n: f"PATIENT{n}^TEST")
    birth_date = datetime.date(1980, 3, 5)
    sex = "F"


class StudyFactory(factory.django.DjangoModelFactory):
    """An index row without files: for pages and rules that never read the images."""

    class Meta:
        model = Study

    study_instance_uid = factory.Sequence(lambda n: f"2.25.{1000 + n}")
    source_facility = factory.SubFactory(FacilityFactory)
    patient = factory.SubFactory(PatientFactory)
    patient_name = factory.LazyAttribute(lambda s: s.patient.name if s.patient else "DOE^JANE")
    patient_id_value = factory.Sequence(lambda n: f"MRN{n:05d}")
    issuer_of_patient_id = "RGH"
    patient_birth_date = datetime.date(1980, 3, 5)
    study_date = datetime.date(2026, 1, 2)
    modalities_in_study = "CT"
    description = "CT CHEST"
    number_of_series = 1
    number_of_instances = 3
    available_until = factory.LazyFunction(lambda: timezone.localdate() + datetime.timedelta(365))


class SeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Series

    study = factory.SubFactory(StudyFactory)
    series_instance_uid = factory.Sequence(lambda n: f"2.25.{900000 + n}")
    modality = "CT"
    series_number = 1
    number_of_instances = 3


class PatientIdentifierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PatientIdentifier

    patient = factory.SubFactory(PatientFactory)
    facility = factory.SubFactory(FacilityFactory)
    issuer = "RGH"
    value = factory.Sequence(lambda n: f"MRN{n:05d}")
