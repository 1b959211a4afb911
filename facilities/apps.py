from django.apps import AppConfig


class FacilitiesConfig(AppConfig):
    name = "facilities"
    verbose_name = "Facilities"

    def ready(self) -> None:
        from facilities import receivers  # noqa: F401  (accepts invitations at sign-up)
