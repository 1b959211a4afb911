from __future__ import annotations

import pytest
from allauth.account.signals import user_signed_up
from django.contrib.messages import get_messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore

from facilities.models import Membership, Role
from facilities.selectors import INVITATION_SESSION_KEY
from facilities.services import staff_invitation_create
from tests.factories import UserFactory


@pytest.fixture
def signup_request(rf):
    request = rf.post("/accounts/signup/")
    request.session = SessionStore()
    request._messages = FallbackStorage(request)
    return request


@pytest.fixture
def invitation(origin, facility_admin, rf):
    invitation, _ = staff_invitation_create(
        facility=origin,
        email="newcomer@example.org",
        role=Role.CLINICIAN,
        actor=facility_admin,
        request=rf.post("/"),
    )
    return invitation


def test_it_accepts_the_invitation_of_the_session(signup_request, invitation):
    signup_request.session[INVITATION_SESSION_KEY] = invitation.pk
    user = UserFactory(email="newcomer@example.org")

    user_signed_up.send(sender=type(user), request=signup_request, user=user)

    assert Membership.objects.get(user=user).role == Role.CLINICIAN
    assert INVITATION_SESSION_KEY not in signup_request.session


def test_it_keeps_the_account_without_a_role_when_the_invitation_does_not_fit(
    signup_request, invitation
):
    signup_request.session[INVITATION_SESSION_KEY] = invitation.pk
    user = UserFactory(email="someone.else@example.org")

    user_signed_up.send(sender=type(user), request=signup_request, user=user)

    assert not Membership.objects.filter(user=user).exists()
    assert INVITATION_SESSION_KEY not in signup_request.session
    messages = [str(m) for m in get_messages(signup_request)]
    assert "the invitation was no longer valid" in messages[0]


def test_it_does_nothing_without_an_invitation(signup_request, db):
    user = UserFactory(email="someone@example.org")
    user_signed_up.send(sender=type(user), request=signup_request, user=user)
    assert not Membership.objects.exists()
