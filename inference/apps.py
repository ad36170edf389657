from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from inference.signals import on_worker_spawn

        post_spawn.connect(on_worker_spawn, dispatch_uid="inference.worker_spawn")
