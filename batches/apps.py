from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Files and batches"

    def ready(self) -> None:
        # Registers the OpenAPI descriptions of our own field and authentication classes.
        # A revoked key or a deactivated owner stops working in this process at once.
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from batches.api import schema  # noqa: F401
        from batches.auth import verified_keys_forget

        for model in (self.get_model("ApiKey"), get_user_model()):
            post_save.connect(verified_keys_forget, sender=model, dispatch_uid=f"keys-{model}")
            post_delete.connect(verified_keys_forget, sender=model, dispatch_uid=f"keys-d-{model}")
