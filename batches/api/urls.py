from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from batches.api import webhooks
from batches.api.views import (
    BatchViewSet,
    FileViewSet,
    ModelListView,
    ModelViewSet,
    UnknownRouteView,
)

router = SimpleRouter(trailing_slash=False)
router.register("files", FileViewSet, basename="file")
router.register("batches", BatchViewSet, basename="batch")
router.register("models", ModelViewSet, basename="model")

urlpatterns = [
    path("models", ModelListView.as_view(), name="model-list"),
    *router.urls,
    *webhooks.urlpatterns,
    re_path(r"^.*$", UnknownRouteView.as_view(), name="unknown-route"),
]
