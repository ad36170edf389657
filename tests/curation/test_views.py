from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from curation import services
from curation.models import ConquestSchema, Item, Queue, Response
from curation.schemas import schema_import
from tests.curation.factories import (
    EXAMPLE_SCHEMAS,
    REFERENCE_SCHEMAS,
    chat_request,
    completed_batch,
    ticket_batch,
)

HX = {"HX-Request": "true"}
ANSWERS = {
    "answer-category": "Billing",
    "answer-urgency": "High",
    "answer-needs_reply": "Yes",
}


def _item(queue: Queue, custom_id: str = "ticket-0") -> Item:
    return queue.items.get(custom_id=custom_id)


def _item_url(item: Item) -> str:
    return reverse("curation:item_detail", args=[item.queue_id, item.pk])


def _page_urls(queue: Queue) -> list[str]:
    item = _item(queue)
    return [
        reverse("curation:queue_list"),
        reverse("curation:queue_detail", args=[queue.pk]),
        reverse("curation:queue_stats", args=[queue.pk]),
        reverse("curation:queue_next", args=[queue.pk]),
        _item_url(item),
        reverse("curation:queue_export", args=[queue.pk]) + "?format=csv",
    ]


class TestAccess:
    def test_every_page_asks_for_a_login(self, queue: Queue) -> None:
        for url in [*_page_urls(queue), reverse("curation:batch_list")]:
            response = Client().get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/accounts/login/?next="), url

    def test_the_root_leads_to_the_queues(self, reviewer_client: Client) -> None:
        response = reviewer_client.get("/")
        assert response.status_code == 302
        assert response["Location"] == reverse("curation:queue_list")

    def test_a_user_outside_the_reviewers_group_is_refused(
        self, queue: Queue, outsider: User
    ) -> None:
        client = Client()
        client.force_login(outsider)

        assert client.get(reverse("curation:queue_detail", args=[queue.pk])).status_code == 403
        listing = client.get(reverse("curation:queue_list"))
        assert listing.status_code == 200
        assert "not in the reviewers group" in listing.content.decode()
        assert "Tickets" not in listing.content.decode()

    def test_a_queue_with_named_reviewers_is_hidden_from_the_others(
        self, queue: Queue, reviewer_client: Client, second_reviewer: User
    ) -> None:
        queue.reviewers.add(second_reviewer)

        assert (
            reviewer_client.get(reverse("curation:queue_detail", args=[queue.pk])).status_code
            == 404
        )
        assert "Tickets" not in reviewer_client.get(reverse("curation:queue_list")).content.decode()

    def test_staff_see_every_queue(
        self, queue: Queue, staff_client: Client, second_reviewer: User
    ) -> None:
        queue.reviewers.add(second_reviewer)

        assert (
            staff_client.get(reverse("curation:queue_detail", args=[queue.pk])).status_code == 200
        )

    def test_forms_need_a_csrf_token(self, queue: Queue, reviewer: User) -> None:
        client = Client(enforce_csrf_checks=True)
        client.force_login(reviewer)
        item = _item(queue)

        for url, data in [
            (_item_url(item), {**ANSWERS, "action": "submit"}),
            (reverse("curation:item_star", args=[queue.pk, item.pk]), {"gold": "on"}),
            (reverse("curation:queue_bulk", args=[queue.pk]), {"kind": "gold"}),
        ]:
            assert client.post(url, data, headers=HX).status_code == 403, url
        assert not Response.objects.exists()
        assert not Item.objects.filter(gold_starred_at__isnull=False).exists()

    def test_the_csrf_token_rides_on_every_htmx_request(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        page = reviewer_client.get(_item_url(_item(queue))).content.decode()

        assert 'hx-headers=\'{"X-CSRFToken": "' in page


class TestQueueList:
    def test_it_shows_progress_per_queue(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        services.response_save(
            item=_item(queue),
            reviewer=reviewer,
            answers={"category": "Bug", "urgency": "Low", "needs_reply": "No"},
            status="submitted",
        )

        page = reviewer_client.get(reverse("curation:queue_list")).content.decode()

        assert "Tickets" in page
        assert "1 of 4 · 25%" in page
        assert 'aria-valuenow="25"' in page
        assert reverse("curation:queue_next", args=[queue.pk]) in page


class TestQueuePage:
    def test_a_full_page_and_an_htmx_fragment(self, queue: Queue, reviewer_client: Client) -> None:
        url = reverse("curation:queue_detail", args=[queue.pk])

        full = reviewer_client.get(url)
        fragment = reviewer_client.get(url, {"gold": "not_gold"}, headers=HX)

        assert full.content.decode().startswith("<!doctype html>")
        assert 'id="item-table"' in full.content.decode()
        body = fragment.content.decode()
        assert body.startswith('<div id="item-table">')
        assert "<html" not in body
        assert "HX-Request" in fragment["Vary"]

    def test_the_filter_reaches_the_links_bulk_form_and_exports(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        page = reviewer_client.get(
            reverse("curation:queue_detail", args=[queue.pk]), {"q": "dark", "status": "open"}
        ).content.decode()

        assert '<strong data-testid="matching">1</strong>' in page
        assert '<input type="hidden" name="q" value="dark">' in page
        assert "scope=filter&amp;status=open&amp;q=dark" in page
        assert f"{_item_url(_item(queue, 'ticket-2'))}?status=open&amp;q=dark" in page

    def test_bulk_gold_star_without_javascript_redirects_back_to_the_filter(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            reverse("curation:queue_bulk", args=[queue.pk]), {"kind": "gold", "q": "ticket"}
        )

        assert response.status_code == 302
        assert (
            response["Location"] == reverse("curation:queue_detail", args=[queue.pk]) + "?q=ticket"
        )
        assert queue.items.filter(gold_starred_at__isnull=False).count() == 4
        page = reviewer_client.get(response["Location"]).content.decode()
        assert "Gold-star: 4 items." in page
        assert "Undo" in page

    def test_bulk_actions_and_undo_with_htmx_answer_with_the_table(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            reverse("curation:queue_bulk", args=[queue.pk]),
            {"kind": "gold", "gold": "not_gold"},
            headers=HX,
        )
        assert response.status_code == 200
        assert response.content.decode().startswith('<div id="item-table">')
        assert (
            response["HX-Push-Url"]
            == reverse("curation:queue_detail", args=[queue.pk]) + "?gold=not_gold"
        )
        action = queue.bulk_actions.get()

        undo = reviewer_client.post(
            reverse("curation:bulk_undo", args=[queue.pk, action.pk]), headers=HX
        )

        assert "Undone: gold-star of 4 items." in undo.content.decode()
        assert not queue.items.filter(gold_starred_at__isnull=False).exists()

    def test_an_unknown_bulk_action_is_refused(self, queue: Queue, reviewer_client: Client) -> None:
        response = reviewer_client.post(
            reverse("curation:queue_bulk", args=[queue.pk]), {"kind": "delete"}
        )
        assert response.status_code == 400

    def test_start_reviewing_opens_the_first_item_to_do(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        services.response_save(item=_item(queue), reviewer=reviewer, answers={}, status="discarded")

        response = reviewer_client.get(reverse("curation:queue_next", args=[queue.pk]))

        assert response["Location"] == _item_url(_item(queue, "ticket-1")) + "?status=todo"


class TestItemPage:
    def test_it_renders_the_schema_data_outputs_and_questions(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        page = reviewer_client.get(_item_url(_item(queue))).content.decode()

        assert "Charged twice this month" in page  # header data source
        assert "Refund request" in page  # timeline entry
        assert "Refund a double charge" in page  # the model's output
        assert 'data-question="urgency"' in page
        assert "• Critical: the customer cannot work" in page  # rubric beside the question
        assert 'data-fill="High"' in page  # the model's answer as a suggestion
        assert "Item <strong>1</strong> of 4" in page
        assert 'data-nav="next"' in page
        assert "Keyboard shortcuts" in page
        assert "layout-two-column" in page

    def test_an_htmx_request_gets_only_the_item_panel(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.get(_item_url(_item(queue)), headers=HX)

        body = response.content.decode()
        assert body.startswith('<div id="item-panel"')
        assert "<html" not in body
        assert "HX-Request" in response["Vary"]

    def test_a_history_restore_gets_the_whole_page(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.get(
            _item_url(_item(queue)),
            headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
        )
        assert response.content.decode().startswith("<!doctype html>")

    def test_an_item_of_another_queue_is_not_found(
        self,
        queue: Queue,
        owner: User,
        triage_schema: ConquestSchema,
        reviewer_client: Client,
    ) -> None:
        other = services.queue_create(schema=triage_schema, batches=[ticket_batch(owner)])
        item = other.items.first()
        assert item is not None

        url = reverse("curation:item_detail", args=[queue.pk, item.pk])
        assert reviewer_client.get(url).status_code == 404

    def test_submitting_without_javascript_saves_and_goes_to_the_next_item(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        item = _item(queue)

        response = reviewer_client.post(
            _item_url(item) + "?status=todo",
            {
                **ANSWERS,
                "answer-tags": ["refund", "security"],
                "notes": "ok",
                "action": "submit",
                "opened_at": "0",
            },
        )

        assert response.status_code == 302
        assert response["Location"] == _item_url(_item(queue, "ticket-1")) + "?status=todo"
        saved = Response.objects.get(item=item, reviewer=reviewer)
        assert saved.status == "submitted"
        assert saved.answers == {
            "category": "Billing",
            "urgency": "High",
            "needs_reply": "Yes",
            "tags": ["refund", "security"],
        }
        assert saved.notes == "ok"

    def test_submitting_with_htmx_swaps_in_the_next_item(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            _item_url(_item(queue)), {**ANSWERS, "action": "submit"}, headers=HX
        )

        body = response.content.decode()
        next_item = _item(queue, "ticket-1")
        assert body.startswith('<div id="item-panel" class="conquest-item')
        assert f'data-item="{next_item.pk}"' in body
        assert "Submitted." in body
        assert response["HX-Push-Url"] == _item_url(next_item)

    def test_a_submission_missing_required_answers_shows_the_form_again(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            _item_url(_item(queue)), {"answer-category": "Bug", "action": "submit"}, headers=HX
        )

        body = response.content.decode()
        assert response.status_code == 200
        assert "Answer the required questions" in body
        assert "This question needs an answer." in body
        assert 'value="Bug" id="id_answer-category_1" checked' in body
        assert not Response.objects.exists()

    def test_saving_a_draft_keeps_the_reviewer_on_the_item(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        item = _item(queue)
        response = reviewer_client.post(
            _item_url(item), {"answer-category": "Bug", "edited_output": "fixed", "action": "draft"}
        )

        assert response["Location"] == _item_url(item)
        page = reviewer_client.get(_item_url(item)).content.decode()
        assert "Draft saved." in page
        assert "output edited" in page
        assert 'id="id_edited_output">\nfixed</textarea>' in page

    def test_use_model_answers_fills_in_the_form(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            _item_url(_item(queue)), {"action": "use_model"}, headers=HX
        )

        body = response.content.decode()
        assert 'value="High" id="id_answer-urgency_1" checked' in body
        assert 'value="refund" id="id_answer-tags_0" checked' in body
        assert not Response.objects.exists()

    def test_discarding_moves_on_and_marks_the_item(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        item = _item(queue)
        response = reviewer_client.post(_item_url(item), {"action": "discard"})

        assert response["Location"] == _item_url(_item(queue, "ticket-1"))
        assert Response.objects.get(item=item, reviewer=reviewer).status == "discarded"

    def test_after_the_last_item_of_the_filter_it_returns_to_the_queue(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        item = _item(queue, "ticket-2")
        url = _item_url(item) + "?q=dark"

        plain = reviewer_client.post(url, {"action": "discard"})
        assert plain["Location"] == reverse("curation:queue_detail", args=[queue.pk]) + "?q=dark"
        htmx = reviewer_client.post(url, {"action": "discard"}, headers=HX)
        assert htmx["HX-Redirect"] == reverse("curation:queue_detail", args=[queue.pk]) + "?q=dark"

    def test_gold_star_with_htmx_and_without(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        item = _item(queue)
        url = reverse("curation:item_star", args=[queue.pk, item.pk])

        fragment = reviewer_client.post(url, {"gold": "on"}, headers=HX)
        assert fragment.content.decode().lstrip().startswith('<form id="star-form"')
        assert 'aria-pressed="true"' in fragment.content.decode()
        item.refresh_from_db()
        assert item.gold_starred_by == reviewer

        plain = reviewer_client.post(url + "?gold=gold", {"gold": "off"})
        assert plain["Location"] == _item_url(item) + "?gold=gold"
        item.refresh_from_db()
        assert not item.is_gold

    def test_outputs_of_several_models_are_shown_side_by_side_with_differences_marked(
        self,
        owner: User,
        triage_schema: ConquestSchema,
        reviewer_client: Client,
    ) -> None:
        queue = services.queue_create(
            schema=triage_schema,
            batches=[ticket_batch(owner, model="small"), ticket_batch(owner, model="large")],
        )
        large = _item(queue).outputs.get(model="large")
        large.text = large.text.replace("Billing", "Account")
        large.parsed = json.loads(large.text)
        large.answers = {**large.answers, "category": "Account"}
        large.save()

        page = reviewer_client.get(_item_url(_item(queue))).content.decode()

        assert "outputs side-by-side" in page
        assert '<mark class="diff">&quot;Account&quot;,</mark>' in page
        assert '<td class="differs">Account</td>' in page
        assert "Start from (preferred output)" in page


class TestEscaping:
    def test_model_output_data_and_schema_text_are_escaped(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        item = _item(queue, "ticket-3")  # its data holds <script> and <img onerror>
        output = _item(queue, "ticket-0").outputs.get()
        output.text = '{"summary": "<script>alert(1)</script>"}'
        output.parsed = json.loads(output.text)
        output.answers = {"summary": "<script>alert(1)</script>"}
        output.save()
        schema = queue.schema
        question = schema.questions.get(key="summary")
        question.text = "Summary <b>bold</b>"
        question.help_text = "<script>alert('rubric')</script>"
        question.save()
        services.response_save(
            item=_item(queue, "ticket-0"),
            reviewer=reviewer,
            answers={"summary": "<script>alert(2)</script>"},
            edited_output="</textarea><script>alert(3)</script>",
            notes="<script>alert(4)</script>",
            status="draft",
        )

        pages = [
            reviewer_client.get(_item_url(item)).content.decode(),
            reviewer_client.get(_item_url(_item(queue, "ticket-0"))).content.decode(),
            reviewer_client.get(reverse("curation:queue_detail", args=[queue.pk])).content.decode(),
        ]

        joined = "\n".join(pages)
        assert "<script>alert" not in joined
        assert "<script>window.__pwned" not in joined
        assert "<img src=x" not in joined
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in pages[0]
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[1]
        assert "&lt;/textarea&gt;&lt;script&gt;alert(3)" in pages[1]
        assert "Summary &lt;b&gt;bold&lt;/b&gt;" in pages[1]

    def test_custom_css_cannot_close_its_style_element(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        rendering = queue.schema.rendering
        rendering.custom_css = ".x { color: red } </style><script>alert(1)</script>"
        rendering.save()

        page = reviewer_client.get(_item_url(_item(queue))).content.decode()

        assert "<script>alert(1)" not in page
        assert "@scope (.conquest-item)" in page
        assert page.count("</style>") == 1


class TestExportAndStats:
    def test_gold_items_download_as_a_file(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        services.item_set_gold(item=_item(queue), user=reviewer, gold=True)

        response = reviewer_client.get(
            reverse("curation:queue_export", args=[queue.pk]), {"format": "finetune"}
        )

        assert response.status_code == 200
        assert (
            response["Content-Disposition"]
            == f'attachment; filename="tickets-{queue.pk}-finetune.jsonl"'
        )
        lines = response.getvalue().decode().splitlines()
        assert [json.loads(line)["provenance"]["custom_id"] for line in lines] == ["ticket-0"]

    def test_an_export_of_a_filter(
        self, queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        for item in queue.items.all():
            services.item_set_gold(item=item, user=reviewer, gold=True)

        response = reviewer_client.get(
            reverse("curation:queue_export", args=[queue.pk]),
            {"format": "csv", "scope": "filter", "q": "dark"},
        )

        rows = response.getvalue().decode().splitlines()
        assert len(rows) == 2
        assert response["Content-Type"] == "text/csv; charset=utf-8"

    def test_an_unknown_export_format_is_refused(
        self, queue: Queue, reviewer_client: Client
    ) -> None:
        url = reverse("curation:queue_export", args=[queue.pk])
        assert reviewer_client.get(url, {"format": "xml"}).status_code == 400

    def test_the_stats_page(self, queue: Queue, reviewer: User, reviewer_client: Client) -> None:
        services.response_save(
            item=_item(queue),
            reviewer=reviewer,
            answers={"category": "Billing", "urgency": "High", "needs_reply": "Yes"},
            status="submitted",
            elapsed_seconds=75,
        )

        page = reviewer_client.get(
            reverse("curation:queue_stats", args=[queue.pk])
        ).content.decode()

        assert "Progress per reviewer" in page
        assert "rita" in page
        assert "1 min 15 s" in page
        assert "100%" in page  # rita agreed with the model on every question


class TestQueuesFromBatches:
    def test_only_staff_open_the_batches_page(self, reviewer_client: Client) -> None:
        response = reviewer_client.get(reverse("curation:batch_list"))
        assert response.status_code == 403

    def test_staff_make_a_queue_from_completed_batches(
        self,
        owner: User,
        triage_schema: ConquestSchema,
        staff_client: Client,
    ) -> None:
        small = ticket_batch(owner, model="small")
        large = ticket_batch(owner, model="large")
        page = staff_client.get(
            reverse("curation:batch_list"), {"batch": small.id}
        ).content.decode()
        assert f'value="{small.id}" id="batch-{small.id}" checked' in page
        assert large.id in page

        response = staff_client.post(
            reverse("curation:batch_list"),
            {
                "batches": [small.id, large.id],
                "schema": triage_schema.pk,
                "name": "Small vs large",
                "required_submissions": 2,
            },
        )

        queue = Queue.objects.get(name="Small vs large")
        assert response["Location"] == reverse("curation:queue_detail", args=[queue.pk])
        assert queue.required_submissions == 2
        assert list(queue.queue_batches.values_list("model", flat=True)) == ["small", "large"]

    def test_the_admin_makes_a_queue_from_batches(
        self,
        owner: User,
        staff: User,
        staff_client: Client,
        triage_schema: ConquestSchema,
    ) -> None:
        staff.is_superuser = True
        staff.save()
        batch = ticket_batch(owner)

        response = staff_client.post(
            reverse("admin:curation_queue_add"),
            {
                "name": "From admin",
                "description": "",
                "schema": triage_schema.pk,
                "required_submissions": 1,
                "source_batches": [batch.id],
                "queue_batches-TOTAL_FORMS": "0",
                "queue_batches-INITIAL_FORMS": "0",
            },
        )

        assert response.status_code == 302, response.content.decode()[:2000]
        queue = Queue.objects.get(name="From admin")
        assert queue.items.count() == 4
        assert queue.created_by == staff


class TestOtherQuestionTypes:
    @pytest.fixture
    def review_queue(self, owner: User) -> Queue:
        schema, _ = schema_import(
            data=json.loads((EXAMPLE_SCHEMAS / "answer_review.json").read_text())
        )
        requests = [chat_request("q1", "What is **HTMX**? <b>hi</b>")]
        batches = [
            completed_batch(owner, requests, {"q1": "A library."}, model="small"),
            completed_batch(owner, requests, {"q1": "A small library."}, model="large"),
        ]
        return services.queue_create(schema=schema, batches=batches)

    def test_ranking_number_and_yes_no_questions_are_answered_and_typed(
        self, review_queue: Queue, reviewer: User, reviewer_client: Client
    ) -> None:
        item = review_queue.items.get()
        page = reviewer_client.get(_item_url(item)).content.decode()
        assert "layout-single-column" in page
        assert "<strong>HTMX</strong>" in page  # the question, as Markdown
        assert "&lt;b&gt;hi&lt;/b&gt;" in page
        assert 'name="answer-strengths-rank-2"' in page
        assert 'value="No"' in page  # a boolean without options is answered Yes or No

        response = reviewer_client.post(
            _item_url(item),
            {
                "answer-helpfulness": "Good",
                "answer-factually_correct": "Yes",
                "answer-issues": ["Too short"],
                "answer-strengths-rank-0": "2",
                "answer-strengths-rank-1": "1",
                "answer-confidence": "4",
                "action": "submit",
            },
        )

        assert response.status_code == 302
        assert Response.objects.get(reviewer=reviewer).answers == {
            "helpfulness": "Good",
            "factually_correct": "Yes",
            "issues": ["Too short"],
            "strengths": ["Clarity", "Accuracy"],
            "confidence": 4,
        }

    def test_two_options_may_not_share_a_rank(
        self, review_queue: Queue, reviewer_client: Client
    ) -> None:
        response = reviewer_client.post(
            _item_url(review_queue.items.get()),
            {"answer-strengths-rank-0": "1", "answer-strengths-rank-1": "1", "action": "draft"},
        )

        assert "Give each option a different rank." in response.content.decode()
        assert not Response.objects.exists()

    def test_structured_answers_are_json_when_they_parse(
        self, owner: User, reviewer: User, reviewer_client: Client
    ) -> None:
        schema, _ = schema_import(
            data=json.loads((REFERENCE_SCHEMAS / "cv_parsing.json").read_text())
        )
        answer = {"name": "Ada", "skills": ["Python"], "years_experience": "7.5"}
        batch = completed_batch(
            owner,
            [chat_request("cv", {"resume_text": "# Ada\nEngineer"})],
            {"cv": json.dumps(answer)},
        )
        queue = services.queue_create(schema=schema, batches=[batch])
        item = queue.items.get()
        assert item.outputs.get().answers == {
            "name": "Ada",
            "skills": ["Python"],
            "years_experience": 7.5,
        }
        page = reviewer_client.get(_item_url(item)).content.decode()
        assert "<h1>Ada</h1>" in page  # resume_text is shown as Markdown

        reviewer_client.post(
            _item_url(item),
            {
                "answer-skills": '["Python", "Django"]',
                "answer-education": "BSc, somewhere",
                "answer-years_experience": "7.5",
                "action": "draft",
            },
        )

        assert Response.objects.get(reviewer=reviewer).answers == {
            "skills": ["Python", "Django"],
            "education": "BSc, somewhere",
            "years_experience": 7.5,
        }
