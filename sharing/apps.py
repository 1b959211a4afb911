from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, register
from django.core.signals import setting_changed


class SharingConfig(AppConfig):
    name = "sharing"

    def ready(self) -> None:
        from sharing import receivers  # noqa: F401  (publishing starts when an instance arrives)

        register(keyring_check)
        setting_changed.connect(_forget_keyring, dispatch_uid="sharing.forget_keyring")


def keyring_check(**kwargs: Any) -> list[CheckMessage]:
    """Refuse to start without a usable keyring, rather than fail at the first publish."""
    from sharing.crypto import KeyringError
    from sharing.keys import get_keyring

    try:
        get_keyring()
    except KeyringError as exc:
        return [Error(f"The keyring cannot be loaded: {exc}", id="sharing.E001")]
    return []


def _forget_keyring(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("PORTAL_KEYRING") or setting in ("DEBUG", "VAR_DIR"):
        from sharing.keys import get_keyring

        get_keyring.cache_clear()
