"""Operator pages, mounted at /operator/ (staff only)."""

from django.urls import path

from inference import views

app_name = "operator"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("batches/<str:batch_id>", views.batch_detail, name="batch"),
    path("batches/<str:batch_id>/progress", views.batch_progress, name="batch-progress"),
    path("history", views.history, name="history"),
    path("workers", views.workers, name="workers"),
    path("models", views.models, name="models"),
]
