"""The platform admin's view of facilities.

Platform admins create facilities and their AE titles, and can give a first facility admin a
membership (a new facility has nobody to invite them). Every change made here is audited like
the same change made elsewhere. Invitations and API tokens are made and withdrawn by facility
admins on the facility's own pages, where the re-checks and the one-time display live; here
they can only be looked at, and neither a token hash nor a secret is ever shown.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from audit.codes import Action, TargetKind
from audit.services import audit_record
from facilities.models import AETitle, APIToken, Facility, Membership, StaffInvitation


class AETitleInline(admin.TabularInline):
    model = AETitle
    extra = 0


@admin.register(Facility)
class FacilityAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "npi", "retention_months", "created_at")
    list_filter = ("kind",)
    search_fields = ("name", "npi")
    inlines = (AETitleInline,)

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        # AE titles decide which DICOM nodes may send studies in: their changes are audited
        # together with the facility's own fields, as one change.
        ae_titles_changed = any(formset.has_changed() for formset in formsets)
        if form.has_changed() or ae_titles_changed or not change:
            audit_record(
                action=Action.FACILITY_CHANGED,
                request=request,
                facility_id=form.instance.pk,
                target_kind=TargetKind.FACILITY,
                target_id=form.instance.pk,
                detail={
                    "created": not change,
                    "fields": ",".join(sorted(form.changed_data)),
                    "ae_titles_changed": ae_titles_changed,
                },
            )

    def delete_model(self, request: HttpRequest, obj: Facility) -> None:
        facility_id = obj.pk
        super().delete_model(request, obj)
        _audit_facility_deleted(request, facility_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Facility]) -> None:
        for facility in queryset:
            self.delete_model(request, facility)


def _audit_facility_deleted(request: HttpRequest, facility_id: int) -> None:
    audit_record(
        action=Action.FACILITY_CHANGED,
        request=request,
        facility_id=facility_id,
        target_kind=TargetKind.FACILITY,
        target_id=facility_id,
        detail={"deleted": True},
    )


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "facility", "role", "created_at")
    list_filter = ("role", "facility")
    search_fields = ("user__email", "user__first_name", "user__last_name", "facility__name")
    autocomplete_fields = ("user", "facility")
    list_select_related = ("user", "facility")

    def save_model(
        self, request: HttpRequest, obj: Membership, form: ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        if change and not form.has_changed():
            return
        audit_record(
            action=Action.STAFF_ROLE_CHANGED if change else Action.STAFF_JOINED,
            request=request,
            facility_id=obj.facility_id,
            target_kind=TargetKind.MEMBERSHIP,
            target_id=obj.pk,
            detail={
                "role": obj.role,
                "user_id": obj.user_id,
                "by_platform_admin": True,
                "fields": ",".join(sorted(form.changed_data)),
            },
        )

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        membership_id, facility_id, user_id, role = obj.pk, obj.facility_id, obj.user_id, obj.role
        super().delete_model(request, obj)
        audit_record(
            action=Action.STAFF_REMOVED,
            request=request,
            facility_id=facility_id,
            target_kind=TargetKind.MEMBERSHIP,
            target_id=membership_id,
            detail={"role": role, "user_id": user_id, "by_platform_admin": True},
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset:
            self.delete_model(request, membership)


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Look, do not touch: these rows change only through the facility's own pages."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StaffInvitation)
class StaffInvitationAdmin(_ReadOnlyAdmin):
    list_display = ("email", "facility", "role", "created_at", "expires_at", "state")
    list_filter = ("role", "facility")
    search_fields = ("email", "facility__name")
    list_select_related = ("facility",)
    exclude = ("token_hash",)

    @admin.display(description="State")
    def state(self, obj: StaffInvitation) -> str:
        return obj.state_at(timezone.now())


@admin.register(APIToken)
class APITokenAdmin(_ReadOnlyAdmin):
    list_display = (
        "name",
        "facility",
        "public_id",
        "scope_list",
        "purpose_of_use",
        "expires_at",
        "last_used_at",
        "state",
    )
    list_filter = ("purpose_of_use", "facility")
    search_fields = ("name", "public_id", "facility__name")
    list_select_related = ("facility",)
    exclude = ("secret_hash",)

    @admin.display(description="May")
    def scope_list(self, obj: APIToken) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="State")
    def state(self, obj: APIToken) -> str:
        return obj.state_at(timezone.now())
