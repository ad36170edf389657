from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated

from batches.auth import ApiKeyAuthentication
from batchsite import health, metrics

# The schema and its Swagger UI need a key too (or a logged-in session, for the browser).
_schema_auth = {
    "authentication_classes": [ApiKeyAuthentication, SessionAuthentication],
    "permission_classes": [IsAuthenticated],
}

urlpatterns = [
    path(
        "v1/openapi.json",
        SpectacularJSONAPIView.as_view(**_schema_auth),
        name="openapi-schema",
    ),
    path(
        "v1/docs",
        SpectacularSwaggerView.as_view(url_name="openapi-schema", **_schema_auth),
        name="openapi-docs",
    ),
    path("v1/", include("batches.api.urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("operator/", include("inference.urls")),
    path("curation/", include("curation.urls")),
    path("", RedirectView.as_view(pattern_name="curation:queue_list"), name="home"),
]
