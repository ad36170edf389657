from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Files and batches"

    def ready(self) -> None:
        # Registers the OpenAPI descriptions of our own field and authentication classes.
        from batches.api import schema  # noqa: F401
