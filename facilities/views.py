"""Facility admins manage staff and API tokens here; invited people accept their invitation.

Every admin view starts with `get_facility_for_user(..., roles=ADMIN_ONLY)`, through
`facility_admin_view`: a stranger gets 404, another role 403, before the method is looked at.
Changes that grant or take away access (inviting, removing staff, creating or revoking an API
token) also ask for a recent re-authentication. They are wrapped in allauth's
`reauthentication_required`, which suspends the POST, asks for the password and then replays
the POST through the whole view, access checks included.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from allauth.account.adapter import get_adapter
from allauth.account.decorators import reauthentication_required
from allauth.account.models import EmailAddress
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.formats import date_format
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts.guesses import address_key, count_guess, guesses
from accounts.models import User
from accounts.policies import PUBLIC, ROLE, policy
from audit.codes import Action, Outcome, TargetKind
from audit.services import audit_record
from facilities import selectors, services
from facilities.access import get_facility_for_user, staff_invitation_for_token
from facilities.forms import APITokenCreateForm, StaffInviteForm
from facilities.models import APIToken, Facility, Membership, Role, StaffInvitation

ADMIN_ONLY = (Role.FACILITY_ADMIN,)

# Guessing invitation links: after this many refused links from one address within the
# window, that address is refused outright until the window ends.
INVITATION_GUESS_LIMIT = 20
INVITATION_GUESS_WINDOW_SECONDS = 600


def _user(request: HttpRequest) -> User:
    """The signed-in user; only called behind `policy(ROLE)` or after checking."""
    return request.user  # type: ignore[return-value]


def _when(moment: Any) -> str:
    """A date a person cannot misread, written as the invitation e-mail writes it."""
    return date_format(timezone.localtime(moment), "l j F Y, H:i T")


def facility_admin_view(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Resolve `facility_id` to a facility the user administers, before anything else: a
    stranger gets 404 and another role 403 whatever the method, so a refused method says
    nothing about a facility to someone with no business there. The view receives the facility.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, facility_id: int, *args: Any, **kwargs: Any) -> HttpResponse:
        facility = get_facility_for_user(_user(request), facility_id, roles=ADMIN_ONLY)
        return view(request, facility, *args, **kwargs)

    return wrapper


# --- Staff -------------------------------------------------------------------------------------


@policy(ROLE)
@facility_admin_view
@require_http_methods(["GET", "POST"])
def staff(request: HttpRequest, facility: Facility) -> HttpResponse:
    if request.method == "POST":
        form = StaffInviteForm(request.POST)
        if form.is_valid():
            response = _invite(request, facility, form)
            if response is not None:
                return response
        status = 400
    else:
        form, status = StaffInviteForm(), 200
    context = {
        "facility": facility,
        "members": selectors.members_of_facility(facility),
        "invitations": selectors.staff_invitations_open_for_facility(facility),
        "form": form,
        "now": timezone.now(),
    }
    return render(request, "facilities/staff.html", context, status=status)


@reauthentication_required
def _invite(request: HttpRequest, facility: Facility, form: StaffInviteForm) -> HttpResponse | None:
    """Send the invitation; None when the service refused it (the errors are on the form)."""
    try:
        invitation, _token = services.staff_invitation_create(
            facility=facility,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor=_user(request),
            request=request,
        )
    except ValidationError as error:
        form.add_error(None, error)
        return None
    messages.success(
        request,
        f"Invitation sent to {invitation.email} as {invitation.get_role_display()}. "
        f"The link expires on {_when(invitation.expires_at)}.",
    )
    return redirect("facilities:staff", facility.pk)


@policy(ROLE)
@facility_admin_view
@require_http_methods(["GET", "POST"])
def membership_remove(request: HttpRequest, facility: Facility, membership_id: int) -> HttpResponse:
    """GET asks to confirm, POST removes; both need a recent re-authentication."""
    membership = get_object_or_404(
        Membership.objects.select_related("user"), pk=membership_id, facility=facility
    )
    return _membership_remove_confirmed(request, facility, membership)


@reauthentication_required
def _membership_remove_confirmed(
    request: HttpRequest, facility: Facility, membership: Membership
) -> HttpResponse:
    error = None
    if request.method == "POST":
        try:
            services.membership_remove(membership=membership, actor=_user(request), request=request)
        except ValidationError as refusal:
            error = " ".join(refusal.messages)
        else:
            messages.success(
                request, f"{membership.user} is no longer on the staff of {facility.name}."
            )
            if membership.user_id == request.user.pk:
                return redirect("portal:home")
            return redirect("facilities:staff", facility.pk)
    context = {
        "facility": facility,
        "membership": membership,
        "is_self": membership.user_id == request.user.pk,
        "error": error,
    }
    return render(
        request, "facilities/membership_remove.html", context, status=400 if error else 200
    )


@policy(ROLE)
@facility_admin_view
@require_POST
def invitation_revoke(request: HttpRequest, facility: Facility, invitation_id: int) -> HttpResponse:
    invitation = get_object_or_404(StaffInvitation, pk=invitation_id, facility=facility)
    try:
        services.staff_invitation_revoke(
            invitation=invitation, actor=_user(request), request=request
        )
    except ValidationError as refusal:
        messages.error(request, " ".join(refusal.messages))
    else:
        messages.success(
            request,
            f"The invitation to {invitation.email} was withdrawn. Its link no longer works.",
        )
    return redirect("facilities:staff", facility.pk)


# --- API tokens --------------------------------------------------------------------------------


@policy(ROLE)
@facility_admin_view
@require_http_methods(["GET", "POST"])
@never_cache
def tokens(request: HttpRequest, facility: Facility) -> HttpResponse:
    """The list and the create form. A created token's secret is in this POST's response only:
    never in a URL, a message or the session, and `never_cache` keeps it out of caches."""
    if request.method == "POST":
        form = APITokenCreateForm(request.POST)
        if form.is_valid():
            response = _create_token(request, facility, form)
            if response is not None:
                return response
        status = 400
    else:
        form, status = APITokenCreateForm(), 200
    context = {
        "facility": facility,
        "tokens": selectors.api_tokens_for_facility(facility),
        "form": form,
        "now": timezone.now(),
    }
    return render(request, "facilities/tokens.html", context, status=status)


@reauthentication_required
def _create_token(
    request: HttpRequest, facility: Facility, form: APITokenCreateForm
) -> HttpResponse | None:
    try:
        token, raw_token = services.api_token_create(
            facility=facility,
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            purpose_of_use=form.cleaned_data["purpose_of_use"],
            expires_in_days=form.cleaned_data["expires_in_days"],
            actor=_user(request),
            request=request,
        )
    except ValidationError as error:
        form.add_error(None, error)
        return None
    context = {"facility": facility, "token": token, "raw_token": raw_token}
    return render(request, "facilities/token_created.html", context, status=201)


@policy(ROLE)
@facility_admin_view
@require_POST
def token_revoke(request: HttpRequest, facility: Facility, token_id: int) -> HttpResponse:
    token = get_object_or_404(APIToken, pk=token_id, facility=facility)
    return _revoke_token(request, facility, token)


@reauthentication_required
def _revoke_token(request: HttpRequest, facility: Facility, token: APIToken) -> HttpResponse:
    services.api_token_revoke(token=token, actor=_user(request), request=request)
    messages.success(
        request,
        f"The token \u201c{token.name}\u201d was revoked. Systems using it are refused now.",
    )
    return redirect("facilities:tokens", facility.pk)


# --- Accepting an invitation -------------------------------------------------------------------


@policy(PUBLIC)
@require_http_methods(["GET", "POST"])
@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """Where the e-mailed link leads.

    Not signed in: the invitation opens sign-up (or sign-in, for an existing account) for the
    invited address. Signed in as that address: confirm, then join. Any link that is not a
    pending invitation gets the same "no longer valid" page, is audited as denied and counts
    against the caller's address, so guessing links is slow and visible.
    """
    if guesses(_invitation_guess_key(request)) >= INVITATION_GUESS_LIMIT:
        return render(request, "facilities/invitation_rate_limited.html", status=429)
    invitation = staff_invitation_for_token(token)
    now = timezone.now()
    if (
        invitation is not None
        and request.user.is_authenticated
        and invitation.accepted_by_id == request.user.pk
    ):
        # The person who accepted opened the link again: nothing to refuse.
        return redirect("portal:staff-home")
    if invitation is None or not invitation.is_pending_at(now):
        return _refuse_invitation(request, invitation, now)

    if not request.user.is_authenticated:
        if _account_exists(invitation.email):
            return redirect_to_login(request.get_full_path())
        request.session[selectors.INVITATION_SESSION_KEY] = invitation.pk
        # The address is the one the invitation was e-mailed to, and the visitor holds that
        # e-mail's link: allauth may mark it verified at sign-up instead of sending a code.
        get_adapter(request).stash_verified_email(request, invitation.email)
        return redirect("account_signup")

    user = _user(request)
    if user.email.lower() != invitation.email.lower():
        return render(request, "facilities/invitation_wrong_account.html", status=403)

    error = None
    if request.method == "POST":
        try:
            membership = services.staff_invitation_accept(
                invitation=invitation, user=user, request=request
            )
        except ValidationError as refusal:
            error = " ".join(refusal.messages)
        else:
            messages.success(
                request,
                f"You joined {membership.facility.name} as {membership.get_role_display()}.",
            )
            return redirect("portal:staff-home")
    return render(
        request,
        "facilities/invitation_confirm.html",
        {"invitation": invitation, "error": error},
        status=400 if error else 200,
    )


def _refuse_invitation(
    request: HttpRequest, invitation: StaffInvitation | None, now: Any
) -> HttpResponse:
    count_guess(_invitation_guess_key(request), INVITATION_GUESS_WINDOW_SECONDS)
    reason = "unknown" if invitation is None else invitation.state_at(now)
    audit_record(
        action=Action.STAFF_INVITATION_REFUSED,
        outcome=Outcome.DENIED,
        request=request,
        facility_id=invitation.facility_id if invitation else None,
        target_kind=TargetKind.INVITATION if invitation else "",
        target_id=invitation.pk if invitation else "",
        detail={"reason": reason},
    )
    # Same words whatever the reason; only a real, expired link (which a guesser does not
    # hold) gets 410 so that its owner knows to ask for a new one.
    status = 410 if reason == "expired" else 404
    return render(request, "facilities/invitation_invalid.html", status=status)


def _account_exists(email: str) -> bool:
    return (
        User.objects.filter(email__iexact=email).exists()
        or EmailAddress.objects.filter(email__iexact=email).exists()
    )


def _invitation_guess_key(request: HttpRequest) -> str:
    return address_key("facilities:invitation-guesses", request)
