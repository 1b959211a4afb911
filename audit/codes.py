"""The vocabularies of the audit record, shared by every app.

Actions carry the DICOM audit event id (DICOM PS3.15 Annex A.5 / DCM 1101xx) where one fits,
so that the FHIR AuditEvent export can use them as `type`. Purposes of use are the HL7 v3
PurposeOfUse codes; they live here, on the lowest floor, because audit rows, facility API
tokens and consent grants all speak of them.
"""

from __future__ import annotations

from django.db import models


class Outcome(models.TextChoices):
    ALLOWED = "allowed", "Allowed"
    DENIED = "denied", "Denied"
    ERROR = "error", "Error"


class ActorKind(models.TextChoices):
    USER = "user", "Signed-in person"
    API_TOKEN = "api_token", "Facility API token"
    SHARE_LINK = "share_link", "Share link"
    DICOM_NODE = "dicom_node", "DICOM node"
    SYSTEM = "system", "The portal itself"
    ANONYMOUS = "anonymous", "Not signed in"


class TargetKind(models.TextChoices):
    USER = "user", "Account"
    FACILITY = "facility", "Facility"
    MEMBERSHIP = "membership", "Staff membership"
    INVITATION = "invitation", "Invitation"
    API_TOKEN = "api_token", "API token"
    PATIENT = "patient", "Patient"
    STUDY = "study", "Study"
    SERIES = "series", "Series"
    INSTANCE = "instance", "Instance"
    GRANT = "grant", "Consent grant"
    SHARE_LINK = "share_link", "Share link"
    AUDIT_LOG = "audit_log", "Audit log"


class PurposeOfUse(models.TextChoices):
    """HL7 v3 PurposeOfUse (2.16.840.1.113883.1.11.20448) codes the portal uses."""

    TREATMENT = "TREAT", "Treatment"
    EMERGENCY = "ETREAT", "Emergency treatment"
    SECOND_OPINION = "CLINTRCH", "Second opinion / consultation"
    TRANSFER_OF_CARE = "COC", "Transfer of care"
    RESEARCH = "HRESCH", "Research"
    EDUCATION = "HEDUC", "Education"
    PATIENT_REQUEST = "PATRQT", "Patient's own request"
    OPERATIONS = "HOPERAT", "Healthcare operations"


class Action(models.TextChoices):
    # Accounts and sessions (DCM 110114 User Authentication)
    LOGIN = "user.login", "Signed in"
    LOGIN_FAILED = "user.login_failed", "Sign-in failed"
    LOGOUT = "user.logout", "Signed out"
    SESSION_EXPIRED = "user.session_expired", "Session ended by timeout"
    MFA_ADDED = "user.mfa_added", "Two-factor method added"
    MFA_REMOVED = "user.mfa_removed", "Two-factor method removed"
    MFA_RECOVERY_CODES_RESET = "user.mfa_reset", "Recovery codes renewed"
    PASSWORD_CHANGED = "user.password_changed", "Password changed"
    PASSWORD_RESET = "user.password_reset", "Password reset"
    # Facility staff and API tokens (DCM 110136 Security Roles Changed, 110137 attributes)
    STAFF_INVITED = "staff.invited", "Staff member invited"
    STAFF_INVITATION_REVOKED = "staff.invitation_revoked", "Staff invitation withdrawn"
    STAFF_JOINED = "staff.joined", "Staff member joined"
    STAFF_REMOVED = "staff.removed", "Staff member removed"
    API_TOKEN_CREATED = "api_token.created", "API token created"
    API_TOKEN_REVOKED = "api_token.revoked", "API token revoked"
    API_TOKEN_REJECTED = "api_token.rejected", "API token refused"
    STAFF_ROLE_CHANGED = "staff.role_changed", "Staff member's role changed"
    STAFF_INVITATION_REFUSED = "staff.invitation_refused", "Staff invitation link refused"
    FACILITY_CHANGED = "facility.changed", "Facility settings changed"
    # Ingest (DCM 110104 DICOM Instances Transferred, 110106 Export/110107 Import)
    IMAGES_RECEIVED = "study.images_received", "Images received"
    INSTANCE_REFUSED = "instance.refused", "Image refused"
    INSTANCE_CONFLICT = "instance.conflict", "Image refused: differs from the one already held"
    DICOM_ASSOCIATION_REFUSED = "dicom.association_refused", "DICOM connection refused"
    # Matching studies to patients (DCM 110110 Patient Record)
    PATIENT_CREATED = "patient.created", "Patient record created"
    STUDY_QUEUED_FOR_RECONCILIATION = "study.queued", "Study set aside for a person to match"
    STUDY_ATTACHED = "study.attached", "Study attached to a patient"
    STUDY_SPLIT = "study.split", "Study split off to a new patient record"
    STUDY_HELD = "study.held", "Study marked as not this patient"
    STUDY_VIEWED = "study.viewed", "Study details opened"
    # Patients joining by invitation, and opening their own records
    PATIENT_IDENTITY_VERIFIED = "patient.identity_verified", "Patient's identity checked"
    PATIENT_INVITED = "patient.invited", "Patient invited to see their records"
    PATIENT_INVITATION_ACCEPTED = "patient.invitation_accepted", "Patient invitation accepted"
    PATIENT_INVITATION_REFUSED = "patient.invitation_refused", "Patient invitation link refused"
    PATIENT_ACCOUNT_LINKED = "patient.account_linked", "Account linked to a patient record"
    PATIENT_RECORDS_MERGED = "patient.records_merged", "Patient records of one person merged"
    PATIENT_STUDIES_LISTED = "patient.studies_listed", "Patient opened their study list"
    PATIENTS_SEARCHED = "patient.searched", "Patients searched at a front desk"
    PATIENT_RECORD_VIEWED = "patient.viewed", "Patient record opened at a front desk"
    # Consent
    GRANT_CREATED = "consent.granted", "Consent given"
    GRANT_WITHDRAWN = "consent.withdrawn", "Consent withdrawn"
    CONSENT_EXPORTED = "consent.fhir_exported", "Consents exported as FHIR"
    AUTHORIZATION_SIGNED = "consent.authorization_signed", "Signed authorization captured"
    AUTHORIZATION_REFUSED = "consent.authorization_refused", "Signed authorization refused"
    AUTHORIZATION_DOWNLOADED = "consent.authorization_read", "Signed authorization downloaded"
    CONSENT_PAGE_VIEWED = "consent.page_viewed", "Consent page opened"
    # The encrypted store
    STUDY_PUBLISHED = "study.published", "Images stored encrypted and made available"
    INSTANCE_READ = "instance.read", "Image opened"
    OBJECT_INTEGRITY_FAILED = "object.integrity_failed", "Stored image failed its integrity check"
    STUDY_SHREDDED = "study.shredded", "Study deleted: its key destroyed, its images removed"
    LEGAL_HOLD_CHANGED = "study.legal_hold", "Legal hold set or lifted"
    DATA_KEYS_REWRAPPED = "keys.rewrapped", "Study keys re-wrapped under a new key version"
    # Share links: a named clinician opens chosen studies with a link and an e-mailed code
    LINK_CREATED = "link.created", "Share link made"
    LINK_REVOKED = "link.revoked", "Share link ended"
    LINK_CODE_SENT = "link.code_sent", "Share link code e-mailed"
    LINK_CODE_FAILED = "link.code_failed", "Share link code refused"
    LINK_OPENED = "link.opened", "Share link opened"
    LINK_REFUSED = "link.refused", "Share link refused"
    LINK_STUDIES_LISTED = "link.studies_listed", "Shared studies listed"
    # Reading study data in the browser: the viewer and downloads
    SERIES_VIEWED = "series.viewed", "Series opened in the viewer"
    STUDY_DOWNLOADED = "study.downloaded", "Images downloaded"
    SERIES_DOWNLOADED = "series.downloaded", "Series downloaded"
    DOWNLOAD_FAILED = "study.download_failed", "Download stopped: an image could not be read"
    ACCESS_LOG_VIEWED = "patient.access_log_viewed", "Patient opened their access log"
    # The audit log itself (DCM 110113 Security Alert)
    AUDIT_CHAIN_VERIFIED = "audit.verified", "Audit log verified"
    AUDIT_CHAIN_BROKEN = "audit.broken", "Audit log found altered"


DICOM_EVENT_ID: dict[str, str] = {
    Action.LOGIN: "110114",
    Action.LOGIN_FAILED: "110114",
    Action.LOGOUT: "110114",
    Action.SESSION_EXPIRED: "110114",
    Action.MFA_ADDED: "110137",
    Action.MFA_REMOVED: "110137",
    Action.MFA_RECOVERY_CODES_RESET: "110137",
    Action.PASSWORD_CHANGED: "110137",
    Action.PASSWORD_RESET: "110137",
    Action.STAFF_INVITED: "110136",
    Action.STAFF_INVITATION_REVOKED: "110136",
    Action.STAFF_JOINED: "110136",
    Action.STAFF_REMOVED: "110136",
    Action.API_TOKEN_CREATED: "110137",
    Action.API_TOKEN_REVOKED: "110137",
    Action.API_TOKEN_REJECTED: "110113",
    Action.STAFF_ROLE_CHANGED: "110136",
    Action.STAFF_INVITATION_REFUSED: "110113",
    Action.FACILITY_CHANGED: "110113",
    Action.IMAGES_RECEIVED: "110104",
    Action.INSTANCE_REFUSED: "110104",
    Action.INSTANCE_CONFLICT: "110104",
    Action.DICOM_ASSOCIATION_REFUSED: "110113",
    Action.PATIENT_CREATED: "110110",
    Action.STUDY_QUEUED_FOR_RECONCILIATION: "110110",
    Action.STUDY_ATTACHED: "110110",
    Action.STUDY_SPLIT: "110110",
    Action.STUDY_HELD: "110110",
    Action.STUDY_VIEWED: "110103",
    Action.PATIENT_IDENTITY_VERIFIED: "110110",
    Action.PATIENT_INVITED: "110136",
    Action.PATIENT_INVITATION_ACCEPTED: "110136",
    Action.PATIENT_INVITATION_REFUSED: "110113",
    Action.PATIENT_ACCOUNT_LINKED: "110136",
    Action.PATIENT_RECORDS_MERGED: "110110",
    Action.PATIENT_STUDIES_LISTED: "110110",
    Action.PATIENTS_SEARCHED: "110112",
    Action.PATIENT_RECORD_VIEWED: "110110",
    Action.GRANT_CREATED: "110110",
    Action.GRANT_WITHDRAWN: "110110",
    Action.CONSENT_EXPORTED: "110106",
    Action.AUTHORIZATION_SIGNED: "110110",
    Action.AUTHORIZATION_REFUSED: "110110",
    Action.AUTHORIZATION_DOWNLOADED: "110106",
    Action.CONSENT_PAGE_VIEWED: "110110",
    Action.STUDY_PUBLISHED: "110104",
    Action.INSTANCE_READ: "110103",
    Action.OBJECT_INTEGRITY_FAILED: "110113",
    Action.STUDY_SHREDDED: "110105",
    Action.LEGAL_HOLD_CHANGED: "110110",
    Action.DATA_KEYS_REWRAPPED: "110113",
    Action.LINK_CREATED: "110110",
    Action.LINK_REVOKED: "110110",
    Action.LINK_CODE_SENT: "110114",
    Action.LINK_CODE_FAILED: "110114",
    Action.LINK_OPENED: "110114",
    Action.LINK_REFUSED: "110113",
    Action.LINK_STUDIES_LISTED: "110103",
    Action.SERIES_VIEWED: "110103",
    Action.STUDY_DOWNLOADED: "110106",
    Action.SERIES_DOWNLOADED: "110106",
    Action.DOWNLOAD_FAILED: "110113",
    Action.ACCESS_LOG_VIEWED: "110101",
    Action.AUDIT_CHAIN_VERIFIED: "110113",
    Action.AUDIT_CHAIN_BROKEN: "110113",
}
