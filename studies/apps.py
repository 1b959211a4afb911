from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"

    def ready(self) -> None:
        from studies import receivers  # noqa: F401  (links patient accounts at sign-up)
