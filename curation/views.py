"""Reviewer pages: one function view per page; HTMX requests get only the part that changes.

Every page needs a login and membership of the reviewers group (staff see everything). Links and
forms are real (href, action), so the pages work without JavaScript; HTMX swaps fragments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, F, Prefetch, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url
from django_htmx.middleware import HtmxDetails

from batches.models import Batch
from curation import exports, services
from curation.filters import ItemFilterForm
from curation.forms import QueueCreateForm, ResponseForm, answer_field_name, rank_field_name
from curation.models import (
    BulkAction,
    Item,
    ItemOutput,
    Question,
    Queue,
    QueueBatch,
    Response,
    is_reviewer,
)
from curation.rendering import output_views, present, question_views, scoped_css
from curation.stats import queue_stats

ITEMS_PER_PAGE = 50
UNDO_WINDOW = timedelta(hours=1)

View = Callable[..., HttpResponseBase]


def reviewer_required(view: View) -> View:
    """Logged in, and a reviewer or staff; others get 403."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_reviewer(request.user):
            raise PermissionDenied("Only reviewers can open curation pages.")
        return view(request, *args, **kwargs)

    return wrapper


def staff_required(view: View) -> View:
    """Logged in and staff; others get 403."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_staff:
            raise PermissionDenied("Only staff can make queues from batches.")
        return view(request, *args, **kwargs)

    return wrapper


def _user(request: HttpRequest) -> User:
    # The decorators let only logged-in users through; this tells the type checker so.
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Log in first.")
    return user


class HtmxHttpRequest(HttpRequest):
    """A request as HtmxMiddleware leaves it, for the type checker (django-htmx's recipe)."""

    htmx: HtmxDetails


def _is_partial(request: HttpRequest) -> bool:
    htmx = cast(HtmxHttpRequest, request).htmx
    return bool(htmx) and not htmx.history_restore_request


def _render(
    request: HttpRequest,
    page: str,
    partial: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> HttpResponse:
    response = render(request, partial if _is_partial(request) else page, context, status=status)
    # The same URL answers with a fragment or a page: caches must keep them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


def _queue(request: HttpRequest, queue_id: int) -> Queue:
    return get_object_or_404(
        Queue.objects.visible_to(request.user).select_related(
            "schema", "schema__rendering", "schema__export"
        ),
        pk=queue_id,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _with_query(url: str, querystring: str) -> str:
    return f"{url}?{querystring}" if querystring else url


# --- Queue list -------------------------------------------------------------------------------


@require_GET
@login_required
def queue_list(request: HttpRequest) -> HttpResponse:
    reviewer = is_reviewer(request.user)
    queues = list(
        Queue.objects.visible_to(request.user)
        .select_related("schema")
        .annotate(
            total=Count("items"),
            complete=Count(
                "items", filter=Q(items__submitted_count__gte=F("required_submissions"))
            ),
            gold=Count("items", filter=Q(items__gold_starred_at__isnull=False)),
        )
    )
    mine: dict[int, int] = dict(
        Response.objects.filter(
            reviewer=_user(request),
            item__queue__in=[queue.pk for queue in queues],
            status__in=[Response.Status.SUBMITTED, Response.Status.DISCARDED],
        )
        .values_list("item__queue")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for queue in queues:
        # Figures for the template, set on the instances: the model declares no such fields.
        queue.mine = mine.get(queue.pk, 0)  # type: ignore[attr-defined]
        queue.percent = round(100 * queue.complete / queue.total) if queue.total else 0  # type: ignore[attr-defined]
        queue.my_percent = round(100 * queue.mine / queue.total) if queue.total else 0  # type: ignore[attr-defined]
    return render(request, "curation/queue_list.html", {"queues": queues, "reviewer": reviewer})


# --- Queue page: items, filters, bulk actions -------------------------------------------------


def _table_context(
    request: HttpRequest, queue: Queue, filters: ItemFilterForm, *, page_number: str | None
) -> dict[str, Any]:
    user = _user(request)
    items = filters.apply(queue.items.all(), user=user).order_by("position")
    page = Paginator(items, ITEMS_PER_PAGE).get_page(page_number)
    rows = list(
        # The stubs type object_list as any sliceable iterable; here it is the QuerySet[Item] above.
        # Rows stay untyped, as the template-only attributes set on them below are undeclared.
        page.object_list.prefetch_related(  # type: ignore[attr-defined]
            Prefetch(
                "responses",
                queryset=Response.objects.filter(reviewer=user),
                to_attr="mine",
            ),
            Prefetch("outputs", queryset=ItemOutput.objects.order_by("position")),
        )
    )
    title_key = next(
        (s.key for s in queue.schema.data_sources.all() if s.type != "chat"),
        None,
    )
    for item in rows:
        item.my_response = item.mine[0] if item.mine else None
        item.title = str(item.data.get(title_key, "")) if title_key else ""
        item.failed = any(output.error is not None for output in item.outputs.all())
    last_action = (
        BulkAction.objects.filter(
            queue=queue,
            user=user,
            undone_at__isnull=True,
            created_at__gte=timezone.now() - UNDO_WINDOW,
        )
        .order_by("-id")
        .first()
    )
    return {
        "queue": queue,
        "filters": filters,
        "filter_params": filters.params(),
        "querystring": filters.querystring(),
        "page": page,
        "rows": rows,
        "matching": page.paginator.count,
        "last_action": last_action,
        "formats": exports.FORMATS,
    }


@require_GET
@reviewer_required
def queue_detail(request: HttpRequest, queue_id: int) -> HttpResponse:
    queue = _queue(request, queue_id)
    filters = ItemFilterForm(request.GET, queue=queue)
    page_number = request.GET.get("page")
    context = _table_context(request, queue, filters, page_number=page_number)
    response = _render(request, "curation/queue_detail.html", "curation/_item_table.html", context)
    if _is_partial(request):
        # The address bar shows the filter as set, not every empty field of the form.
        querystring = filters.querystring()
        if page_number:
            querystring = (
                f"{querystring}&page={page_number}" if querystring else f"page={page_number}"
            )
        url = _with_query(reverse("curation:queue_detail", args=[queue.pk]), querystring)
        return push_url(response, url)
    return response


@require_POST
@reviewer_required
def queue_bulk(request: HttpRequest, queue_id: int) -> HttpResponseBase:
    queue = _queue(request, queue_id)
    filters = ItemFilterForm(request.POST, queue=queue)
    kind = request.POST.get("kind", "")
    if kind not in BulkAction.Kind.values or not filters.is_valid():
        return HttpResponseBadRequest("Unknown bulk action or filter.")
    items = filters.apply(queue.items.all(), user=request.user)
    action = services.bulk_action_apply(
        queue=queue, user=request.user, kind=kind, items=items, filters=filters.params()
    )
    messages.success(
        request, f"{action.get_kind_display().capitalize()}: {_count(action.affected, 'item')}."
    )
    return _after_table_change(request, queue, filters)


@require_POST
@reviewer_required
def bulk_undo(request: HttpRequest, queue_id: int, action_id: int) -> HttpResponseBase:
    queue = _queue(request, queue_id)
    action = get_object_or_404(BulkAction, pk=action_id, queue=queue)
    try:
        services.bulk_action_undo(action=action, user=request.user)
    except services.CurationError as error:
        messages.error(request, str(error))
    else:
        messages.success(
            request, f"Undone: {action.get_kind_display()} of {_count(action.affected, 'item')}."
        )
    filters = ItemFilterForm(action.filters, queue=queue)
    return _after_table_change(request, queue, filters)


def _after_table_change(
    request: HttpRequest, queue: Queue, filters: ItemFilterForm
) -> HttpResponseBase:
    url = _with_query(reverse("curation:queue_detail", args=[queue.pk]), filters.querystring())
    if not _is_partial(request):
        return HttpResponseRedirect(url)
    context = _table_context(request, queue, filters, page_number=None)
    response = render(request, "curation/_item_table.html", context)
    return push_url(response, url)


@require_GET
@reviewer_required
def queue_next(request: HttpRequest, queue_id: int) -> HttpResponseBase:
    """Start reviewing: the first item still to do for this reviewer."""
    queue = _queue(request, queue_id)
    filters = ItemFilterForm({"status": "todo"}, queue=queue)
    item = filters.apply(queue.items.all(), user=request.user).order_by("position").first()
    if item is None:
        messages.info(request, "Nothing left to do in this queue.")
        return redirect("curation:queue_detail", queue_id=queue.pk)
    return redirect(_with_query(_item_url(item), filters.querystring()))


# --- The item page ----------------------------------------------------------------------------


def _item_url(item: Item) -> str:
    return reverse("curation:item_detail", args=[item.queue_id, item.pk])


def _initial(
    response: Response | None, questions: list[Question], outputs: list[ItemOutput]
) -> dict[str, Any]:
    reference = next((o for o in outputs if o.error is None), outputs[0] if outputs else None)
    base = reference
    initial: dict[str, Any] = {"opened_at": time.time()}
    if response is not None:
        for question in questions:
            initial.update(ResponseForm.initial_for(question, response.answers.get(question.key)))
        initial["notes"] = response.notes
        if response.base_output_id is not None:
            base = next((o for o in outputs if o.pk == response.base_output_id), reference)
    initial["base_output"] = base.pk if base else None
    edited = response.edited_output if response else ""
    initial["edited_output"] = edited or (base.text if base else "")
    return initial


def _neighbours(items: QuerySet[Item], item: Item) -> tuple[Item | None, Item | None, int, int]:
    before = items.filter(position__lt=item.position)
    previous = before.order_by("-position").first()
    following = items.filter(position__gt=item.position).order_by("position").first()
    return previous, following, before.count() + 1, items.count()


def _item_context(
    request: HttpRequest,
    queue: Queue,
    item: Item,
    filters: ItemFilterForm,
    form: ResponseForm | None = None,
) -> dict[str, Any]:
    schema = queue.schema
    questions = list(schema.questions.all())
    sources = list(schema.data_sources.all())
    outputs = list(item.outputs.order_by("position"))
    response = Response.objects.filter(item=item, reviewer=_user(request)).first()
    if form is None:
        form = ResponseForm(
            initial=_initial(response, questions, outputs), questions=questions, outputs=outputs
        )
    filtered = filters.apply(queue.items.all(), user=request.user)
    previous, following, index, total = _neighbours(filtered, item)
    querystring = filters.querystring()
    data = [(source, present(source, item.data.get(source.key))) for source in sources]
    others = (
        list(
            Response.objects.filter(item=item)
            .exclude(reviewer=request.user)
            .select_related("reviewer")
            .order_by("reviewer__username")
        )
        if request.user.is_staff
        else []
    )
    return {
        "queue": queue,
        "schema": schema,
        "rendering": schema.rendering,
        "custom_css": scoped_css(schema.rendering.custom_css),
        "item": item,
        "form": form,
        "response": response,
        "questions": question_views(form, questions, outputs),
        "header_sources": [(s, v) for s, v in data if s.display_format == "header"],
        "body_sources": [(s, v) for s, v in data if s.display_format != "header"],
        "outputs": output_views(outputs),
        "several_outputs": len(outputs) > 1,
        "others": others,
        "querystring": querystring,
        "item_url": _with_query(_item_url(item), querystring),
        "previous_url": _with_query(_item_url(previous), querystring) if previous else "",
        "next_url": _with_query(_item_url(following), querystring) if following else "",
        "queue_url": _with_query(reverse("curation:queue_detail", args=[queue.pk]), querystring),
        "index": index,
        "total": total,
    }


@require_http_methods(["GET", "POST"])
@reviewer_required
def item_detail(request: HttpRequest, queue_id: int, item_id: int) -> HttpResponseBase:
    queue = _queue(request, queue_id)
    item = get_object_or_404(Item, pk=item_id, queue=queue)
    filters = ItemFilterForm(request.GET, queue=queue)
    if request.method == "GET":
        context = _item_context(request, queue, item, filters)
        return _render(request, "curation/item.html", "curation/_item_panel.html", context)
    return _item_post(request, queue, item, filters)


_ACTION_STATUS = {
    "draft": Response.Status.DRAFT,
    "submit": Response.Status.SUBMITTED,
    "discard": Response.Status.DISCARDED,
}


def _item_post(
    request: HttpRequest, queue: Queue, item: Item, filters: ItemFilterForm
) -> HttpResponseBase:
    questions = list(queue.schema.questions.all())
    outputs = list(item.outputs.order_by("position"))
    action = request.POST.get("action", "draft")
    form = ResponseForm(request.POST, questions=questions, outputs=outputs)

    if action == "use_model":
        form = _form_with_model_answers(form, questions, outputs)
        messages.info(request, "Filled in the model's answers: check them, then submit.")
        return _item_response(request, queue, item, filters, form)
    if action not in _ACTION_STATUS:
        return HttpResponseBadRequest("Unknown action.")

    # A discard needs no valid answers: whatever was typed is kept as a record.
    if not form.is_valid() and action != "discard":
        messages.error(request, "Some answers need attention.")
        return _item_response(request, queue, item, filters, form)
    cleaned = form.cleaned_data if form.is_valid() else {}
    opened_at = cleaned.get("opened_at")
    base_id = cleaned.get("base_output")
    try:
        services.response_save(
            item=item,
            reviewer=request.user,
            answers=form.answers() if form.is_valid() else {},
            status=_ACTION_STATUS[action],
            edited_output=cleaned.get("edited_output", ""),
            notes=cleaned.get("notes", ""),
            base_output=next((o for o in outputs if o.pk == base_id), None),
            elapsed_seconds=time.time() - opened_at if opened_at else 0.0,
        )
    except ValidationError as error:
        by_key = {q.key: q for q in questions}
        for key, problems in error.message_dict.items():
            question = by_key[key]
            name = (
                rank_field_name(question, 0)
                if question.type == Question.Type.RANKING
                else answer_field_name(question)
            )
            form.add_error(name, problems)
        messages.error(request, "Answer the required questions before submitting.")
        return _item_response(request, queue, item, filters, form)

    if action == "draft":
        messages.success(request, "Draft saved.")
        return _item_response(request, queue, item, filters, None, redirect_after_post=True)
    messages.success(request, "Submitted." if action == "submit" else "Discarded.")
    following = _next_item(queue, item, filters, user=request.user)
    if following is None:
        messages.info(request, "That was the last item of this filter.")
        url = _with_query(reverse("curation:queue_detail", args=[queue.pk]), filters.querystring())
        return HttpResponseClientRedirect(url) if _is_partial(request) else redirect(url)
    return _item_response(request, queue, following, filters, None, redirect_after_post=True)


def _form_with_model_answers(
    form: ResponseForm, questions: list[Question], outputs: list[ItemOutput]
) -> ResponseForm:
    chosen = form.data.get("base_output")
    usable = [o for o in outputs if o.error is None]
    base = next((o for o in usable if str(o.pk) == chosen), usable[0] if usable else None)
    initial: dict[str, Any] = {
        name: form.data.get(name, "") for name in ("edited_output", "notes", "opened_at")
    }
    initial["base_output"] = base.pk if base else None
    for question in questions:
        if base is not None:
            initial.update(ResponseForm.initial_for(question, base.answers.get(question.key)))
    return ResponseForm(initial=initial, questions=questions, outputs=outputs)


def _next_item(queue: Queue, item: Item, filters: ItemFilterForm, *, user: Any) -> Item | None:
    remaining = filters.apply(queue.items.all(), user=user).exclude(pk=item.pk)
    return (
        remaining.filter(position__gt=item.position).order_by("position").first()
        or remaining.order_by("position").first()
    )


def _item_response(
    request: HttpRequest,
    queue: Queue,
    item: Item,
    filters: ItemFilterForm,
    form: ResponseForm | None,
    *,
    redirect_after_post: bool = False,
) -> HttpResponseBase:
    url = _with_query(_item_url(item), filters.querystring())
    if redirect_after_post and not _is_partial(request):
        return HttpResponseRedirect(url)
    context = _item_context(request, queue, item, filters, form)
    response = _render(request, "curation/item.html", "curation/_item_panel.html", context)
    return push_url(response, url) if _is_partial(request) else response


@require_POST
@reviewer_required
def item_star(request: HttpRequest, queue_id: int, item_id: int) -> HttpResponseBase:
    queue = _queue(request, queue_id)
    item = get_object_or_404(Item, pk=item_id, queue=queue)
    services.item_set_gold(item=item, user=request.user, gold=request.POST.get("gold") == "on")
    if not _is_partial(request):
        querystring = ItemFilterForm(request.GET, queue=queue).querystring()
        return HttpResponseRedirect(_with_query(_item_url(item), querystring))
    return render(
        request,
        "curation/_star.html",
        {"item": item, "queue": queue, "querystring": request.GET.urlencode()},
    )


# --- Stats and export -------------------------------------------------------------------------


@require_GET
@reviewer_required
def queue_stats_view(request: HttpRequest, queue_id: int) -> HttpResponse:
    queue = _queue(request, queue_id)
    return render(
        request, "curation/queue_stats.html", {"queue": queue, "stats": queue_stats(queue)}
    )


@require_GET
@reviewer_required
def queue_export(request: HttpRequest, queue_id: int) -> HttpResponseBase:
    """Download gold items (or the items of a filter) in one of the export formats."""
    queue = _queue(request, queue_id)
    export_format = request.GET.get("format", "")
    if export_format not in exports.FORMATS:
        return HttpResponseBadRequest("Unknown export format.")
    items = queue.items.all()
    if request.GET.get("scope", "gold") == "gold":
        items = items.filter(gold_starred_at__isnull=False)
    else:
        items = ItemFilterForm(request.GET, queue=queue).apply(items, user=request.user)
    extension = exports.FORMATS[export_format][1]
    response = StreamingHttpResponse(
        exports.export_lines(queue=queue, items=items, format=export_format),
        content_type=exports.CONTENT_TYPES[extension],
    )
    filename = exports.export_filename(queue, export_format)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- Staff: queues from batches ---------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@staff_required
def batch_list(request: HttpRequest) -> HttpResponseBase:
    """Completed batches, with a form that makes a queue of one or several of them."""
    completed = Batch.objects.filter(status=Batch.Status.COMPLETED).order_by("-created_at")
    form = QueueCreateForm(
        request.POST if request.method == "POST" else None,
        batches=completed,
        initial={"batches": request.GET.getlist("batch")},
    )
    if request.method == "POST" and form.is_valid():
        try:
            queue = services.queue_create(
                schema=form.cleaned_data["schema"],
                batches=form.cleaned_data["batches"].order_by("created_at"),
                name=form.cleaned_data["name"],
                required_submissions=form.cleaned_data["required_submissions"],
                user=request.user,
            )
        except services.CurationError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Queue “{queue.name}” created.")
            return redirect("curation:queue_detail", queue_id=queue.pk)
    page = Paginator(completed, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    batch_ids = [batch.id for batch in page.object_list]
    queues_of: dict[str, list[Queue]] = {}
    for link in QueueBatch.objects.filter(batch_id__in=batch_ids).select_related("queue"):
        queues_of.setdefault(link.batch_id, []).append(link.queue)
    rows = [(batch, queues_of.get(batch.id, [])) for batch in page.object_list]
    return render(
        request,
        "curation/batch_list.html",
        {"form": form, "page": page, "rows": rows, "selected": set(request.GET.getlist("batch"))},
    )
