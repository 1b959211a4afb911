"""TOTP keys and recovery-code seeds rest sealed; a database copy alone cannot make codes."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from allauth.mfa.utils import decrypt
from django.test import override_settings

from accounts.sealing import UnsealError, seal, unseal

OLD_KEY = "o" * 60
NEW_KEY = "n" * 60


def test_it_opens_what_it_sealed_and_hides_it():
    sealed = seal("JBSWY3DPEHPK3PXP", site_key=NEW_KEY, purpose="mfa-secret")
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert sealed != seal("JBSWY3DPEHPK3PXP", site_key=NEW_KEY, purpose="mfa-secret")
    assert unseal(sealed, site_keys=[NEW_KEY], purpose="mfa-secret") == "JBSWY3DPEHPK3PXP"


def test_it_still_opens_values_sealed_under_a_rotated_key():
    sealed = seal("secret", site_key=OLD_KEY, purpose="mfa-secret")
    assert unseal(sealed, site_keys=[NEW_KEY, OLD_KEY], purpose="mfa-secret") == "secret"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1],  # a changed ciphertext byte
        lambda v: v[:-8],  # cut short
        lambda v: v.replace("sealed.v1:", ""),  # not sealed at all
        lambda v: "sealed.v1:%%%not-base64%%%",
    ],
)
def test_it_refuses_altered_or_malformed_values(tamper):
    sealed = seal("secret", site_key=NEW_KEY, purpose="mfa-secret")
    with pytest.raises(UnsealError):
        unseal(tamper(sealed), site_keys=[NEW_KEY], purpose="mfa-secret")


def test_it_refuses_a_lost_key_or_another_purpose():
    sealed = seal("secret", site_key=OLD_KEY, purpose="mfa-secret")
    with pytest.raises(UnsealError):
        unseal(sealed, site_keys=[NEW_KEY], purpose="mfa-secret")
    with pytest.raises(UnsealError):
        unseal(sealed, site_keys=[OLD_KEY], purpose="something-else")


@pytest.mark.django_db
def test_totp_keys_and_recovery_seeds_rest_sealed(patient):
    secret = generate_totp_secret()
    totp = TOTP.activate(patient, secret)
    codes = RecoveryCodes.activate(patient)
    stored = Authenticator.objects.get(pk=totp.instance.pk).data["secret"]
    assert stored.startswith("sealed.v1:")
    assert secret not in stored
    assert Authenticator.objects.get(pk=codes.instance.pk).data["seed"].startswith("sealed.v1:")


@pytest.mark.django_db
def test_codes_still_validate_after_the_site_key_is_rotated(patient, settings):
    secret = generate_totp_secret()
    totp = TOTP.activate(patient, secret)
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[settings.SECRET_KEY]):
        assert decrypt(Authenticator.objects.get(pk=totp.instance.pk).data["secret"]) == secret
