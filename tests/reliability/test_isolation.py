"""Who may reach what: every route of the URLconf, walked as a table.

A route added without protection fails here: every /v1 route must refuse a missing, revoked or
malformed key, and another owner's key never reaches an owner's objects; every page outside
/v1 needs a login (staff for the admin, the operator pages and making queues, the reviewers
group for curation) unless it is on the short public list; every POST needs a CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from batches import services as batch_services
from batches.models import ApiKey, Batch, File, WebhookEndpoint
from curation.models import REVIEWER_GROUP, Queue
from inference.models import RegisteredModel
from tests.conftest import chat_line
from tests.reliability.conftest import jsonl, upload

pytestmark = pytest.mark.django_db

# Pages anyone may open: probes, the login and password-reset flow, the home redirect.
PUBLIC = {
    "health",
    "ready",
    "metrics",
    "home",
    "accounts/login/",
    "accounts/logout/",
    "accounts/password_reset/",
    "accounts/password_reset/done/",
    "accounts/reset/<uidb64>/<token>/",
    "accounts/reset/done/",
    "admin/login/",
    "admin/logout/",
}
# Values for the parameters routes take; objects the owner really has are filled in per test.
PLACEHOLDERS = {
    "object_id": "1",
    "id": "1",
    "content_type_id": "1",
    "queue_id": "1",
    "item_id": "1",
    "action_id": "1",
    "uidb64": "MQ",
    "token": "set-password",
    "app_label": "auth",
    "url": "no-such-page/",
}
OWNED_PARAMS = ("file_id", "batch_id", "webhook_endpoint_id")
LOGIN_URLS = ("/accounts/login/", "/admin/login/")
_PARAM = re.compile(r"\(\?P<(\w+)>|<(?:\w+:)?(\w+)>")


@dataclass(frozen=True)
class Route:
    template: str
    name: str
    methods: tuple[str, ...]

    @property
    def params(self) -> list[str]:
        """Names of the route's parameters: regex groups (?P<name>…) and <converter:name>."""
        return [group or converter for group, converter in _PARAM.findall(self.template)]

    def url(self, values: dict[str, str]) -> str:
        return "/" + _fill(self.template, values)

    def __str__(self) -> str:
        return f"{'/'.join(self.methods)} /{self.template}"


def _fill(template: str, values: dict[str, str]) -> str:
    """A concrete path for a route: regex groups and <converters> replaced by values."""
    out: list[str] = []
    i = 0
    while i < len(template):
        if template.startswith("(?P<", i):
            name = template[i + 4 : template.index(">", i)]
            depth, j = 0, i
            while True:
                depth += {"(": 1, ")": -1}.get(template[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append(values[name])
            i = j + 1
        elif template[i] == "<":
            end = template.index(">", i)
            out.append(values[template[i + 1 : end].rpartition(":")[2]])
            i = end + 1
        elif template[i] in "^$":
            i += 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out).replace(".*", "no-such-route")


def _methods(callback: Any) -> tuple[str, ...]:
    actions = getattr(callback, "actions", None)
    if actions:
        return tuple(sorted(method.upper() for method in actions))
    view_class = getattr(callback, "view_class", None)
    if view_class is not None:
        names = [
            m
            for m in view_class.http_method_names
            if m not in ("options", "head") and hasattr(view_class, m)
        ]
        return tuple(sorted(m.upper() for m in names)) or ("GET",)
    return ("GET", "POST")  # a function view: try both; the decorators decide


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[Route]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            template = prefix + str(pattern.pattern)
            yield Route(template, pattern.name or template, _methods(pattern.callback))


ROUTES = list(_walk(get_resolver().url_patterns))
API_ROUTES = [r for r in ROUTES if r.template.startswith("v1/")]
PAGES = [r for r in ROUTES if not r.template.startswith("v1/")]
PROTECTED_PAGES = [r for r in PAGES if r.name not in PUBLIC and r.template not in PUBLIC]
STAFF_PAGES = [
    r
    for r in PROTECTED_PAGES
    if r.template.startswith(("admin/", "operator/")) or r.template == "curation/batches/"
]
REVIEWER_PAGES = [r for r in PROTECTED_PAGES if r.template.startswith("curation/queues/")]


def _api_cases(routes: list[Route]) -> list[Any]:
    return [
        pytest.param(route, method, id=f"{method} /{route.template}")
        for route in routes
        for method in route.methods
    ]


def _page_cases(routes: list[Route]) -> list[Any]:
    return [pytest.param(route, id=route.template or "/") for route in routes]


@pytest.fixture
def owned(owner: User, api: APIClient, registered_model: RegisteredModel) -> dict[str, Any]:
    """One of each of the owner's objects, and the values that fill route parameters."""
    file = File.objects.get(pk=upload(api, jsonl([chat_line("a")]))["id"])
    batch = Batch.objects.create(
        owner=owner, input_file_id=file.id, endpoint="/v1/chat/completions"
    )
    # Straight into the table: creating through the service resolves the host (no network here).
    endpoint = WebhookEndpoint.objects.create(
        owner=owner, url="https://example.com/hook", event_types=["batch.completed"]
    )
    values = {
        **PLACEHOLDERS,
        "file_id": file.id,
        "batch_id": batch.id,
        "webhook_endpoint_id": endpoint.id,
        "model": registered_model.name,
    }
    return {"file": file, "batch": batch, "endpoint": endpoint, "values": values}


def call(client: Client | APIClient, method: str, url: str) -> Any:
    send: Callable[..., Any] = getattr(client, method.lower())
    if method in ("POST", "PUT", "PATCH"):
        return send(url, data={}, content_type="application/json")
    return send(url)


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.content[:300]
    if response["Content-Type"].startswith("text/html"):
        return  # the Swagger UI, a page for browsers: its 401 is HTML
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_the_route_table_covers_the_api_and_every_page() -> None:
    names = {route.name for route in ROUTES}
    assert {"file-list", "batch-cancel", "file-content", "unknown-route", "openapi-schema"} <= names
    assert {"queue", "queue_detail", "item_detail", "index"} <= names
    for route in ROUTES:
        missing = set(route.params) - set(PLACEHOLDERS) - {*OWNED_PARAMS, "model"}
        assert not missing, f"{route}: teach this test a value for {missing}"


# --- /v1: keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "method"), _api_cases(API_ROUTES))
def test_every_api_route_refuses_a_request_without_a_key(
    route: Route, method: str, owned: dict[str, Any], anonymous_api: APIClient
) -> None:
    assert_unauthorized(call(anonymous_api, method, route.url(owned["values"])))


@pytest.mark.parametrize(("route", "method"), _api_cases(API_ROUTES))
def test_every_api_route_refuses_revoked_malformed_and_deactivated_keys(
    route: Route, method: str, owned: dict[str, Any], owner: User, other_owner: User
) -> None:
    revoked_key, revoked = batch_services.api_key_create(owner=owner, name="old")
    batch_services.api_key_revoke(key=revoked_key)
    _, of_inactive = batch_services.api_key_create(owner=other_owner, name="gone")
    User.objects.filter(pk=other_owner.pk).update(is_active=False)
    prefix = ApiKey.objects.exclude(revoked_at=None).get().prefix
    url = route.url(owned["values"])

    for header in (
        f"Bearer {revoked}",
        f"Bearer {of_inactive}",
        f"Bearer sk-batch-{prefix}-not-the-secret",
        "Bearer sk-batch-",
        "Basic b3duZXI6b3duZXItcGFzc3dvcmQtMQ==",
        "Bearer " + "x" * 10_000,
    ):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert_unauthorized(call(client, method, url))


def test_a_logged_in_session_is_no_api_credential(owner: User) -> None:
    # So a browser session can never be ridden cross-site into /v1 (no CSRF exposure there).
    client = Client()
    client.force_login(owner)
    assert_unauthorized(client.get("/v1/files"))
    assert_unauthorized(client.post("/v1/batches", {}, content_type="application/json"))


OWNED_ROUTES = [r for r in API_ROUTES if set(r.params) & set(OWNED_PARAMS)]


@pytest.mark.parametrize(("route", "method"), _api_cases(OWNED_ROUTES))
def test_another_owners_key_finds_none_of_the_owners_objects(
    route: Route, method: str, owned: dict[str, Any], other_api: APIClient
) -> None:
    response = call(other_api, method, route.url(owned["values"]))

    assert response.status_code == 404, response.content[:300]
    assert response.json()["error"]["type"] == "invalid_request_error"
    for key in ("file", "batch", "endpoint"):
        before = owned[key]
        after = type(before).objects.get(pk=before.pk)
        assert after.__dict__ == {**before.__dict__, "_state": after._state}, f"{key} changed"


LIST_ROUTES = [r for r in API_ROUTES if not r.params and "GET" in r.methods and "list" in r.name]


@pytest.mark.parametrize("route", _page_cases(LIST_ROUTES))
def test_lists_show_only_the_callers_own_objects(
    route: Route, owned: dict[str, Any], api: APIClient, other_api: APIClient
) -> None:
    mine = {owned["file"].id, owned["batch"].id, owned["endpoint"].id}
    url = route.url(owned["values"])
    theirs = {item["id"] for item in other_api.get(url).json()["data"]}
    own = {item["id"] for item in api.get(url).json()["data"]}

    assert not theirs & mine
    if route.name != "model-list":
        assert own & mine, "the owner sees its own objects (the test reached the data)"


def test_a_batch_on_another_owners_file_fails_without_reading_it(
    owned: dict[str, Any], other_api: APIClient
) -> None:
    response = other_api.post(
        "/v1/batches",
        {
            "input_file_id": owned["file"].id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        format="json",
    )
    batch = batch_services.batch_validate(batch_id=response.json()["id"])

    assert batch.status == Batch.Status.FAILED and batch.request_total == 0
    assert batch.errors is not None
    assert batch.errors["data"][0]["param"] == "file_id"


# --- Pages: logins, staff, reviewers --------------------------------------------------------


def assert_refused(response: Any, route: Route) -> None:
    """No content: a redirect to a login page, or 403/404/405."""
    if response.status_code == 302:
        assert response["Location"].startswith(LOGIN_URLS), f"{route} -> {response['Location']}"
    else:
        assert response.status_code in (403, 404, 405), f"{route} answered {response.status_code}"


@pytest.mark.parametrize("route", _page_cases(PROTECTED_PAGES))
def test_every_page_outside_the_api_needs_a_login(route: Route, owned: dict[str, Any]) -> None:
    url = route.url(owned["values"])
    for method in ("GET", "POST"):
        assert_refused(call(Client(), method, url), route)


@pytest.fixture
def reviewer_user(db: None) -> User:
    user = User.objects.create_user("reviewer", password="reviewer-password-1")
    user.groups.add(Group.objects.get_or_create(name=REVIEWER_GROUP)[0])
    return user


@pytest.mark.parametrize("route", _page_cases(STAFF_PAGES))
def test_staff_pages_refuse_a_reviewer_who_is_not_staff(
    route: Route, owned: dict[str, Any], reviewer_user: User
) -> None:
    client = Client()
    client.force_login(reviewer_user)
    url = route.url(owned["values"])
    for method in ("GET", "POST"):
        assert_refused(call(client, method, url), route)


@pytest.mark.parametrize("route", _page_cases(REVIEWER_PAGES))
def test_reviewer_pages_refuse_a_logged_in_user_outside_the_reviewers_group(
    route: Route, owned: dict[str, Any], other_owner: User
) -> None:
    client = Client()
    client.force_login(other_owner)
    url = route.url(owned["values"])
    for method in ("GET", "POST"):
        response = call(client, method, url)
        assert response.status_code in (403, 405), f"{route} answered {response.status_code}"


def test_the_queue_list_shows_an_outsider_no_queue(other_owner: User, owner: User) -> None:
    from curation.models import ConquestSchema

    schema = ConquestSchema.objects.create(key="secret-schema", name="Secret schema")
    Queue.objects.create(name="Top secret queue", schema=schema, created_by=owner)
    client = Client()
    client.force_login(other_owner)

    page = client.get("/curation/")

    assert page.status_code == 200
    assert "Top secret queue" not in page.content.decode()


OPERATOR_PAGES = [r for r in STAFF_PAGES if r.template.startswith("operator/")]


@pytest.mark.parametrize("route", _page_cases(OPERATOR_PAGES))
def test_staff_open_every_operator_page(route: Route, owned: dict[str, Any], staff: User) -> None:
    # The other side of the refusals above: the table reaches real pages.
    client = Client()
    client.force_login(staff)
    assert client.get(route.url(owned["values"])).status_code == 200


# --- CSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", _page_cases(PAGES))
def test_every_post_outside_the_api_needs_a_csrf_token(
    route: Route, owned: dict[str, Any], staff: User
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)

    response = client.post(route.url(owned["values"]), {"name": "x"})

    assert response.status_code == 403, f"{route} answered {response.status_code}"
    assert b"CSRF" in response.content


FORM = re.compile(rb"<form\b[^>]*>.*?</form>", re.S | re.I)


@pytest.mark.parametrize(
    "route",
    _page_cases([r for r in PAGES if "GET" in r.methods and not r.params and r.name not in PUBLIC]),
)
def test_every_post_form_on_a_page_carries_the_csrf_token(
    route: Route, owned: dict[str, Any], staff: User
) -> None:
    client = Client()
    client.force_login(staff)
    response = client.get(route.url(owned["values"]), follow=True)
    if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
        return
    for form in FORM.findall(response.content):
        if re.search(rb'method=["\']?post', form, re.I):
            assert b"csrfmiddlewaretoken" in form, f"{route}: {form[:200]!r}"
    if re.search(rb"hx-(post|put|patch|delete)=", response.content):
        assert b"X-CSRFToken" in response.content, f"{route}: htmx requests without the token"


def test_revoked_keys_stay_revoked(owner: User, anonymous_api: APIClient) -> None:
    key, raw = batch_services.api_key_create(owner=owner, name="k")
    batch_services.api_key_revoke(key=key)
    first = ApiKey.objects.get(pk=key.pk).revoked_at
    batch_services.api_key_revoke(key=ApiKey.objects.get(pk=key.pk))

    assert ApiKey.objects.get(pk=key.pk).revoked_at == first
    assert first is not None and first <= timezone.now()
    anonymous_api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_unauthorized(anonymous_api.get("/v1/models"))


def test_webhook_secrets_never_show_to_another_owner(
    owned: dict[str, Any], other_api: APIClient
) -> None:
    endpoint: WebhookEndpoint = owned["endpoint"]
    body = other_api.get("/v1/webhook_endpoints").content
    assert endpoint.secret.encode() not in body
    assert endpoint.id.encode() not in body
