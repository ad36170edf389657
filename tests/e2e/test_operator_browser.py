"""An operator watches a real batch in headless Chromium (Debian's chromium package).

The batch goes through the whole path: the openai SDK uploads and creates it, a real CPU cluster
validates it, a real GPU cluster (``manage.py qcluster``) runs it on vLLM with the tiny model in
small chunks. The operator pages are read while it runs: the queue's progress bar moves by HTMX
polling, a second batch waits behind it, the worker and the event log (with each chunk's
throughput) show it. Then it is cancelled, and every poll on its page stops once the page shows
the end. Once the second batch has completed too, the history page tells the two apart by status,
with their stats and throughput chart, and the models page shows the model's measured speed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.template.defaultfilters import floatformat
from django.utils import timezone
from openai import OpenAI
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)

from batches import services as batch_services
from inference import services, stats
from inference.models import Worker
from tests.e2e.conftest import Cluster, wait_for
from tests.e2e.test_curation_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from tests.e2e.test_worker_e2e import request_line, submit

pytestmark = [
    pytest.mark.browser,
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
]

MODEL = "tiny-operator"
PASSWORD = "operator-password-1"
# Many small chunks: the bar moves every second or so, and the batch outlasts the whole visit
# (it is cancelled at the end, so its size costs nothing).
CHUNK_SIZE = 20
REQUESTS = 10_000
# Text a page must never run if it ever shows the requests.
HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop on this thread; the ORM calls in between are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # Inside sync_playwright the ORM opens new connections and no longer sees those opened
    # before; closed on both sides, none is left open for PostgreSQL's DROP DATABASE to trip on.
    connections.close_all()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        connections.close_all()


@pytest.fixture
def sdk(live_server: Any) -> Iterator[OpenAI]:
    submitter = User.objects.create_user("ada")
    _, raw_key = batch_services.api_key_create(owner=submitter, name="operator browser test")
    with OpenAI(base_url=f"{live_server.url}/v1", api_key=raw_key, max_retries=0) as client:
        yield client
    # Closed, its kept-alive sockets end the live server's threads and their database
    # connections (CONN_MAX_AGE): PostgreSQL would not drop the test database under them.


@pytest.fixture
def tiny_model(tiny_model_path: Path, transactional_db: None) -> str:
    services.model_register(
        name=MODEL, source=str(tiny_model_path), engine_args={"max_model_len": 256}
    )
    return MODEL


@pytest.fixture
def people(transactional_db: None) -> None:
    User.objects.create_user("olga", password=PASSWORD, is_staff=True)
    User.objects.create_user("nora", password=PASSWORD)


@dataclass
class Poll:
    """One HTMX request the page made, and the status it got (None while unanswered)."""

    path: str
    at: float
    status: int | None = None


class Polls:
    def __init__(self, page: Page) -> None:
        self.seen: list[Poll] = []
        self._open: dict[Request, Poll] = {}
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request: Request) -> None:
        if request.headers.get("hx-request") == "true":
            poll = Poll(path=re.sub(r"^https?://[^/]+", "", request.url), at=time.monotonic())
            self._open[request] = poll
            self.seen.append(poll)

    def _response(self, response: Response) -> None:
        poll = self._open.pop(response.request, None)
        if poll is not None:
            poll.status = response.status

    def to(self, path: str) -> list[Poll]:
        return [p for p in self.seen if p.path == path]


def _log_in(page: Page, username: str, *, lands_on: str) -> None:
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(re.compile(re.escape(lands_on) + "$"))


def _bar(page: Page, batch_id: str) -> tuple[int, float]:
    """The progress bar's value (requests done) and its filled width in percent."""
    done, width = page.evaluate(
        """id => {
            const bar = document.querySelector(`#progress-${id} [role=progressbar]`);
            const width = parseFloat(bar.firstElementChild.style.width);
            return [Number(bar.getAttribute("aria-valuenow")), width];
        }""",
        batch_id,
    )
    return int(done), float(width)


def _nothing_ran(page: Page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert "<script>window.__pwned" not in page.content()


def test_an_operator_watches_a_running_batch_through_to_its_cancellation(
    browser: Browser,
    live_server: Any,
    people: None,
    tiny_model: str,
    sdk: OpenAI,
    start_cluster: Any,
) -> None:
    # A shared CI machine can be slow; the default five seconds is not always enough.
    expect.set_options(timeout=15_000)
    clusters: list[Cluster] = [
        start_cluster(name, BATCH_CHUNK_SIZE=str(CHUNK_SIZE)) for name in ("cpu", "gpu")
    ]
    messages = [{"role": "user", "content": f"{HOSTILE} Tell me a story."}]
    running_id = submit(
        sdk,
        [
            request_line(f"r{i}", MODEL, max_tokens=16, ignore_eos=True, messages=messages)
            for i in range(REQUESTS)
        ],
    )

    # While the model loads: someone without staff status is refused and sent to log in.
    with browser.new_context(base_url=live_server.url) as reader:
        page = reader.new_page()
        page.goto("/accounts/login/")
        _log_in(page, "nora", lands_on="/")
        page.goto("/operator/")
        assert re.search(r"/login/\?next=/operator/$", page.url), page.url
        expect(page.get_by_text("Live queue")).to_have_count(0)
        expect(page.locator("body")).to_contain_text("not authorized")

    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    polls = Polls(page)

    # The operator opens the queue, logs in, and lands on it.
    page.goto("/operator/")
    assert "/login/" in page.url
    _log_in(page, "olga", lands_on="/operator/")
    expect(page.locator("h1")).to_have_text("Live queue")

    # The running batch, once its first chunk is done: a bar, a speed and an ETA.
    progress = page.locator(f"#progress-{running_id}")
    expect(progress).to_contain_text("tokens/s", timeout=240_000)
    expect(progress).to_contain_text("ETA")
    expect(progress).to_contain_text(f"/ {REQUESTS} requests")
    # ... and shown: nothing clipped by the 8 px bars the curation pages style as `.progress`.
    assert progress.evaluate("el => el.scrollHeight <= el.clientHeight && el.clientHeight > 20")
    worker = Worker.objects.get(current_batch_id=running_id)
    running_row = page.locator("#queue tr", has_text=running_id)
    expect(running_row).to_contain_text(MODEL)
    expect(running_row).to_contain_text("ada")
    expect(running_row).to_contain_text(worker.name)

    # The bar moves on its own: HTMX polls swap it in place, the page is never reloaded.
    page.evaluate("window.__same_page = true")
    progress_url = f"/operator/batches/{running_id}/progress"
    # The bar polls every 2 s; the whole queue, bar included, every 5 s.
    polls_before = len(polls.to(progress_url)) + len(polls.to("/operator/"))
    done, width = _bar(page, running_id)
    assert 0 < done < REQUESTS
    page.wait_for_function(
        """([id, done, width]) => {
            const bar = document.querySelector(`#progress-${id} [role=progressbar]`);
            return bar && Number(bar.getAttribute("aria-valuenow")) > done
                && parseFloat(bar.firstElementChild.style.width) > width;
        }""",
        arg=[running_id, done, width],
        timeout=60_000,
    )
    later_done, later_width = _bar(page, running_id)
    assert later_done > done and later_width > width
    assert page.evaluate("window.__same_page") is True
    assert len(polls.to(progress_url)) + len(polls.to("/operator/")) > polls_before
    assert polls.to(progress_url) and all(p.status in (200, None) for p in polls.seen)

    # A second batch waits behind it, first in line.
    waiting_id = submit(sdk, [request_line(f"w{i}", MODEL, max_tokens=4) for i in range(5)])
    waiting_row = page.locator("#queue tr", has_text=waiting_id)
    expect(waiting_row.locator("td").first).to_have_text("1", timeout=60_000)
    expect(waiting_row).to_contain_text("in_progress")
    expect(waiting_row.locator("td").nth(6)).to_have_text("5")  # requests left
    expect(progress).to_be_visible()  # still running
    _nothing_ran(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1440, "height": 720})
    page.screenshot(path=str(SCREENSHOTS / "operator_queue.png"), full_page=True)
    assert (SCREENSHOTS / "operator_queue.png").stat().st_size > 10_000
    page.set_viewport_size({"width": 1440, "height": 900})

    # The worker: a fresh heartbeat, the loaded model, the batch it runs.
    page.goto("/operator/workers")
    worker_row = page.locator("#workers tr", has_text=worker.name)
    expect(worker_row).to_contain_text(MODEL)
    expect(worker_row.locator(f'a[href="/operator/batches/{running_id}"]')).to_be_visible()
    heartbeat = worker_row.locator("td").nth(3)
    age = re.fullmatch(r"(\d+) s ago", heartbeat.inner_text().strip())
    # Fresh: within the three beats (5 s apart) after which another worker takes the batch.
    assert age is not None and int(age.group(1)) <= 3 * settings.WORKER_HEARTBEAT_SECONDS, (
        heartbeat.inner_text()
    )
    expect(heartbeat).not_to_have_class("stale")

    # The batch's own page tells its story so far.
    page.goto(f"/operator/batches/{running_id}")
    events = page.locator("#events")
    for text in ("validated", f"validated: {REQUESTS} requests for {MODEL}", "started"):
        expect(events).to_contain_text(text)
    expect(events).to_contain_text(f"worker {worker.name} took the batch")
    expect(events).to_contain_text("chunk_done")
    expect(events).to_contain_text(f"chunk 0 done: {CHUNK_SIZE} requests")
    # Its throughput, from the event's data: requests, seconds, tokens/s.
    chunk_cells = events.locator("tr", has_text="chunk 0 done:").locator("td")
    expect(chunk_cells.nth(3)).to_have_text(str(CHUNK_SIZE))
    expect(chunk_cells.nth(4)).to_have_text(re.compile(r"^\d+\.\d\d$"))
    expect(chunk_cells.nth(5)).to_have_text(re.compile(r"^\d+\.\d$"))
    _nothing_ran(page)

    # Cancel it: the page reaches the end by itself, and then every poll stops.
    events_url = f"/operator/batches/{running_id}"
    polls.seen.clear()
    assert sdk.batches.cancel(running_id).status in ("cancelling", "cancelled")
    expect(progress.locator(".status")).to_have_text("cancelled", timeout=60_000)
    expect(progress.locator(".bar")).to_have_class(re.compile(r"\bdone\b"))
    expect(events).to_contain_text("finalized as cancelled", timeout=20_000)

    def stopped(path: str) -> bool:
        return any(p.status == 286 for p in polls.to(path))

    deadline = time.monotonic() + 20
    while not (stopped(progress_url) and stopped(events_url)) and time.monotonic() < deadline:
        page.wait_for_timeout(250)  # lets Playwright deliver the request/response events
    assert stopped(progress_url), [(p.path, p.status) for p in polls.seen]
    assert stopped(events_url), [(p.path, p.status) for p in polls.seen]
    polled = len(polls.seen)
    page.wait_for_timeout(6_000)  # longer than either poll's interval (2 s and 5 s)
    assert len(polls.seen) == polled, [(p.path, p.status) for p in polls.seen[polled:]]
    assert page.evaluate("window.__pwned === undefined")

    # The waiting batch runs next, behind the cancelled one, and completes.
    wait_for(
        lambda: sdk.batches.retrieve(waiting_id).status == "completed",
        timeout=120,
        what=f"{waiting_id} to complete",
        clusters=clusters,
    )
    cancelled = sdk.batches.retrieve(running_id)
    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert 0 < cancelled.request_counts.completed < REQUESTS

    # History: both batches, then only those of the chosen status, swapped in by HTMX.
    page.goto("/operator/history")
    expect(page.locator("h1")).to_have_text("History")
    results = page.locator("#results")
    expect(results.locator("tbody tr", has_text=running_id)).to_contain_text("cancelled")
    expect(results.locator("tbody tr", has_text=waiting_id)).to_contain_text("completed")
    page.evaluate("window.__same_page = true")
    page.select_option("select[name=status]", "completed")
    page.wait_for_url(re.compile(r"[?&]status=completed(&|$)"))
    expect(results.locator("tbody tr", has_text=running_id)).to_have_count(0)
    expect(results.locator("tbody tr", has_text=waiting_id)).to_contain_text("ada")
    assert page.evaluate("window.__same_page") is True

    def card(status: str) -> Locator:
        return results.locator(".card", has=page.locator(f".status-{status}")).locator("b")

    expect(card("completed")).to_have_text("1")
    expect(card("cancelled")).to_have_text("0")
    expect(results.locator(".card", has_text="batch success rate").locator("b")).to_have_text(
        "100%"
    )
    speed_row = results.locator("h2:has-text('Speed per model') + table tbody tr")
    expect(speed_row).to_have_count(1)
    expect(speed_row.locator("td").first).to_have_text(MODEL)
    expect(speed_row.locator("td").nth(1)).to_have_text(re.compile(r"^\d+\.\d$"))
    chart = results.locator("svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator("circle").count() >= 1
    expect(chart.locator("circle title").first).to_contain_text("tokens/s")
    expect(chart.locator("g.tick text").first).to_have_text(re.compile(r"^\d\d:\d\d$"))
    expect(results.locator(".chart-span")).to_contain_text("per hour")

    page.select_option("select[name=status]", "cancelled")
    page.wait_for_url(re.compile(r"[?&]status=cancelled(&|$)"))
    expect(results.locator("tbody tr", has_text=running_id)).to_contain_text("cancelled")
    expect(results.locator("tbody tr", has_text=waiting_id)).to_have_count(0)
    expect(card("cancelled")).to_have_text("1")
    expect(results.locator("svg.chart")).to_be_visible()
    _nothing_ran(page)

    # Models: the registered model with the speed it was last measured at, nothing waiting.
    rate = stats.model_rates([MODEL])[MODEL]
    assert rate.measured_at is not None
    page.goto("/operator/models")
    model_cells = page.locator("tr", has_text=MODEL).locator("td")
    expect(model_cells.first).to_have_text(MODEL)
    expect(model_cells.nth(2)).to_have_text("yes")
    expect(model_cells.nth(3)).to_have_text(floatformat(rate.tokens_per_second, 1))
    expect(model_cells.nth(4)).to_have_text(floatformat(rate.requests_per_second, 2))
    expect(model_cells.nth(5)).to_have_text(
        f"{timezone.localtime(rate.measured_at):%Y-%m-%d %H:%M}"
    )
    expect(model_cells.nth(6)).to_have_text("0")
    expect(page.get_by_text("never run")).to_have_count(0)
    context.close()

    for cluster in clusters:
        cluster.stop()
