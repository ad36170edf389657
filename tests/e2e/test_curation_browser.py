"""A reviewer's walk through a curation queue in headless Chromium (Debian's chromium package).

The queue comes from the ``completed_batch`` fixture through the result handler, as in
production; the walk depends only on the batch's input (which the fixture writes), never on what
the model answered (the tiny model's text is gibberish), and the batch is run by the real
worker loop on vLLM.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from batches.models import Batch, File
from batches.services import file_create_generated
from curation import handlers
from curation.models import REVIEWER_GROUP, ConquestSchema, Item, Queue, Response
from curation.schemas import schema_import
from tests.curation import factories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The README's screenshots are refreshed by `SCREENSHOTS_DIR=static/screenshots make test`;
# otherwise they go to a scratch folder, so that a test run leaves the checkout as it was.
SCREENSHOTS = Path(os.environ.get("SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "screenshots")
PASSWORD = "reviewer-password-1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
]


@pytest.fixture
def triage_schema(transactional_db: None) -> ConquestSchema:
    data = json.loads((factories.EXAMPLE_SCHEMAS / "ticket_triage.json").read_text())
    return schema_import(data=data)[0]


@pytest.fixture
def completed_batch(
    owner: User,
    triage_schema: ConquestSchema,
    tiny_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Batch:
    """A batch of support tickets really run by the worker loop on vLLM (the tiny model).

    Its metadata asks for the ticket_triage schema. The worker loop runs in this process with
    the real engine (no cluster: the CPU cluster's finalization is called inline).
    """
    from inference import engine
    from inference import services as inference_services
    from inference.models import Worker

    inference_services.model_register(
        name="tiny-chat", source=str(tiny_model_path), engine_args={"max_model_len": 512}
    )
    requests = [
        factories.chat_request(f"ticket-{i}", ticket) for i, ticket in enumerate(factories.TICKETS)
    ]
    content = "".join(json.dumps(line) + "\n" for line in requests).encode()
    input_file = file_create_generated(
        owner=owner, purpose=File.Purpose.BATCH, filename="tickets.jsonl", content=BytesIO(content)
    )
    now = timezone.now()
    batch = Batch.objects.create(
        owner=owner,
        endpoint=Batch.Endpoint.CHAT_COMPLETIONS,
        input_file_id=input_file.id,
        status=Batch.Status.IN_PROGRESS,
        model="tiny-chat",
        metadata={"curation_schema": "ticket_triage", "curation_queue": "Support tickets"},
        request_total=len(requests),
        in_progress_at=now,
        expires_at=now + timedelta(hours=24),
    )
    monkeypatch.setattr(inference_services, "workers_wake", lambda: None)
    monkeypatch.setattr(
        inference_services,
        "finalize_enqueue",
        lambda batch_id: inference_services.batch_finalize(batch_id=batch_id),
    )
    Worker.objects.create(name="browser-test:1", host="test", pid=1)
    try:
        inference_services.batches_run(
            worker=inference_services.WorkerHandle("browser-test:1"), budget_seconds=900
        )
    finally:
        engine.engine_release()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED
    assert batch.request_completed + batch.request_failed == len(requests)
    return batch


@pytest.fixture
def reviewer(transactional_db: None) -> User:
    user = User.objects.create_user("rita", password=PASSWORD, first_name="Rita")
    # Transactional tests flush the group the migration made: make sure it is there.
    user.groups.add(Group.objects.get_or_create(name=REVIEWER_GROUP)[0])
    return user


@pytest.fixture
def page(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the ORM calls in between are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1440, "height": 900}, accept_downloads=True, base_url=live_server.url
        )
        page = context.new_page()
        page.set_default_timeout(15_000)
        # hx-confirm asks before a bulk action; the reviewer says yes.
        page.on("dialog", lambda dialog: dialog.accept())
        yield page
        context.close()
        browser.close()


def _log_in(page: Any) -> None:
    page.goto("/curation/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "rita")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/curation/$"))


def _panel_item(page: Any) -> int:
    return int(page.get_attribute("#item-panel", "data-item"))


def test_a_reviewer_works_through_a_queue_with_the_keyboard(
    page: Any, reviewer: User, completed_batch: Batch
) -> None:
    from playwright.sync_api import expect

    # A shared CI machine can be slow; the default five seconds is not always enough.
    expect.set_options(timeout=15_000)
    handlers.import_batch(completed_batch)  # idempotent: a no-op if the worker already ran it
    queue = Queue.objects.get(queue_batches__batch=completed_batch)
    items = {item.custom_id: item for item in queue.items.all()}
    assert len(items) == len(factories.TICKETS)

    _log_in(page)
    expect(page.locator(".queue-card h2")).to_have_text("Support tickets")

    # Open the queue: the first item to do.
    page.click("text=Start reviewing")
    page.wait_for_selector("#item-panel")
    assert _panel_item(page) == items["ticket-0"].pk
    expect(page.locator(".shortcut-bar")).to_contain_text("help")

    # "?" shows the shortcuts; Escape closes them.
    page.keyboard.press("?")
    expect(page.locator("#shortcut-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#shortcut-help")).to_be_hidden()

    # Answer with number keys: each picks an option and moves to the next question.
    page.keyboard.press("1")  # Category: Billing
    page.keyboard.press("2")  # Urgency: High
    page.keyboard.press("1")  # Needs a reply: Yes
    expect(page.locator("input[name=answer-category][value=Billing]")).to_be_checked()
    expect(page.locator("input[name=answer-urgency][value=High]")).to_be_checked()
    expect(page.locator("input[name=answer-needs_reply][value=Yes]")).to_be_checked()

    # Edit the output: "e" opens the editor and focuses it.
    page.keyboard.press("e")
    editor = page.locator("#id_edited_output")
    expect(editor).to_be_focused()
    editor.fill('{"category": "Billing", "urgency": "High", "summary": "Refund one charge"}')
    page.keyboard.press("Escape")

    # Gold star with "g": swapped in place by HTMX.
    page.keyboard.press("g")
    expect(page.locator("#star-form button")).to_have_attribute("aria-pressed", "true")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # A tall window rather than a full-page capture: the shortcut bar is fixed to its bottom.
    page.set_viewport_size({"width": 1440, "height": 1340})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / "item_page.png"))
    page.set_viewport_size({"width": 1440, "height": 900})

    # Submit with "s": the next item comes in without a page load.
    page.keyboard.press("s")
    expect(page.locator("#item-panel")).to_have_attribute("data-item", str(items["ticket-1"].pk))
    expect(page.locator(".messages")).to_contain_text("Submitted.")
    assert f"/items/{items['ticket-1'].pk}/" in page.url

    response = Response.objects.get(item=items["ticket-0"], reviewer=reviewer)
    assert response.status == Response.Status.SUBMITTED
    assert response.answers == {"category": "Billing", "urgency": "High", "needs_reply": "Yes"}
    assert (
        response.edited_output
        == '{"category": "Billing", "urgency": "High", "summary": "Refund one charge"}'
    )
    assert response.time_spent_seconds > 0
    assert Item.objects.get(pk=items["ticket-0"].pk).gold_starred_by == reviewer

    # A <script> in the data, and one typed as an answer, stay text.
    page.goto(f"/curation/queues/{queue.pk}/items/{items['ticket-3'].pk}/")
    page.fill("#id_answer-summary", "<script>window.__pwned = 3</script>")
    page.keyboard.press("Escape")
    page.keyboard.press("d")
    expect(page.locator(".messages")).to_contain_text("Draft saved.")
    page.reload()
    expect(page.locator(".data-header")).to_contain_text("<script>window.__pwned = 1</script>")
    expect(page.locator("#id_answer-summary")).to_have_value("<script>window.__pwned = 3</script>")
    assert page.evaluate("typeof window.__pwned") == "undefined"

    # Filter with a text search, then gold-star everything the filter finds.
    page.goto(f"/curation/queues/{queue.pk}/")
    page.fill("#id_q", "dark theme")
    page.keyboard.press("Enter")
    expect(page.locator("[data-testid=matching]")).to_have_text("1")
    assert "q=dark+theme" in page.url
    page.click("[data-bulk=gold]")
    expect(page.locator(".undo-bar")).to_contain_text("gold-star of 1 item")
    assert Item.objects.filter(queue=queue, gold_starred_at__isnull=False).count() == 2

    # Undo puts it back; star again for the export.
    page.click("[data-action=undo]")
    expect(page.locator("#item-table .messages")).to_contain_text("Undone")
    assert Item.objects.filter(queue=queue, gold_starred_at__isnull=False).count() == 1
    page.click("[data-bulk=gold]")
    expect(page.locator(".undo-bar")).to_be_visible()

    # The gold filter shows both starred items.
    page.fill("#id_q", "")
    page.select_option("#id_gold", "gold")
    expect(page.locator("[data-testid=matching]")).to_have_text("2")
    expect(page.locator("table.items tbody tr")).to_have_count(2)

    # Export the gold items as OpenAI chat fine-tuning data.
    page.click(".menu summary")
    with page.expect_download() as download_info:
        page.click("[data-export=gold-openai]")
    download = download_info.value
    lines = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    assert [line["metadata"]["custom_id"] for line in lines] == ["ticket-0", "ticket-2"]
    assert lines[0]["metadata"]["reviewer"] == "rita"
    assert lines[0]["messages"][-1]["content"].startswith("Category: Billing\nUrgency: High")

    page.goto("/curation/")
    expect(page.locator(".queue-card")).to_contain_text("Complete")
    page.set_viewport_size({"width": 1440, "height": 560})
    page.screenshot(path=str(SCREENSHOTS / "queue_list.png"))
    assert os.path.getsize(SCREENSHOTS / "queue_list.png") > 10_000
