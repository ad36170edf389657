"""Operations wiring that must run in every process (web and django-q2 clusters alike)."""

from __future__ import annotations

from django.apps import AppConfig


class BatchsiteConfig(AppConfig):
    name = "batchsite"
    verbose_name = "Operations"

    def ready(self) -> None:
        from django.core.signals import request_finished
        from django.db.models.signals import post_save
        from django_q.signals import post_execute_in_worker, pre_enqueue, pre_execute

        from batches.models import File
        from batchsite import health, metrics, middleware
        from batchsite.logging import task_context_attach, task_context_enter, task_context_exit

        # Tasks carry the request / batch / worker ids of the code that queued them.
        pre_enqueue.connect(task_context_attach, dispatch_uid="batchsite.log_context.attach")
        pre_execute.connect(task_context_enter, dispatch_uid="batchsite.log_context.enter")
        post_execute_in_worker.connect(task_context_exit, dispatch_uid="batchsite.log_context.exit")
        request_finished.connect(
            middleware.request_context_clear, dispatch_uid="batchsite.request_context_clear"
        )
        post_save.connect(metrics.upload_record, sender=File, dispatch_uid="batchsite.uploads")
        for purpose in File.UPLOAD_PURPOSES:
            # Zero series from the start, so rate() and alerts see the counter before any upload.
            metrics.UPLOAD_BYTES.labels(purpose)
        health.sentry_init()
