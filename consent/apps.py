from django.apps import AppConfig


class ConsentConfig(AppConfig):
    name = "consent"

    def ready(self) -> None:
        from consent import receivers  # noqa: F401  (queues the follow-up of withdrawals)
