from django.urls import path

from curation import views

app_name = "curation"

urlpatterns = [
    path("", views.queue_list, name="queue_list"),
    path("batches/", views.batch_list, name="batch_list"),
    path("queues/<int:queue_id>/", views.queue_detail, name="queue_detail"),
    path("queues/<int:queue_id>/next/", views.queue_next, name="queue_next"),
    path("queues/<int:queue_id>/bulk/", views.queue_bulk, name="queue_bulk"),
    path("queues/<int:queue_id>/bulk/<int:action_id>/undo/", views.bulk_undo, name="bulk_undo"),
    path("queues/<int:queue_id>/stats/", views.queue_stats_view, name="queue_stats"),
    path("queues/<int:queue_id>/export/", views.queue_export, name="queue_export"),
    path("queues/<int:queue_id>/items/<int:item_id>/", views.item_detail, name="item_detail"),
    path("queues/<int:queue_id>/items/<int:item_id>/star/", views.item_star, name="item_star"),
]
