from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authentication import SessionAuthentication

from batches.auth import ApiKeyAuthentication

# The schema and its Swagger UI need a key too (or a logged-in session, for the browser).
_schema_auth = [ApiKeyAuthentication, SessionAuthentication]

urlpatterns = [
    path(
        "v1/openapi.json",
        SpectacularAPIView.as_view(authentication_classes=_schema_auth),
        name="openapi-schema",
    ),
    path(
        "v1/docs",
        SpectacularSwaggerView.as_view(
            url_name="openapi-schema", authentication_classes=_schema_auth
        ),
        name="openapi-docs",
    ),
    path("v1/", include("batches.api.urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
]
