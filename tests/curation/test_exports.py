from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from curation import services
from curation.exports import export_lines, fill_template
from curation.models import Item, Queue, Response
from tests.curation.factories import TICKETS

REVIEWED_AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def exported(queue: Queue, reviewer: User) -> Queue:
    """ticket-0: reviewed (urgency corrected, output edited) and gold; ticket-2: gold only;
    ticket-1: reviewed, not gold; ticket-3: neither."""
    items = {item.custom_id: item for item in queue.items.all()}
    services.response_save(
        item=items["ticket-0"],
        reviewer=reviewer,
        answers={"category": "Billing", "urgency": "Critical", "needs_reply": "Yes"},
        edited_output='{"category": "Billing", "urgency": "Critical"}',
        status="submitted",
    )
    services.response_save(
        item=items["ticket-1"],
        reviewer=reviewer,
        answers={"category": "Bug", "urgency": "Normal", "needs_reply": "No"},
        status="submitted",
    )
    Response.objects.update(submitted_at=REVIEWED_AT)
    for custom_id in ("ticket-0", "ticket-2"):
        services.item_set_gold(item=items[custom_id], user=reviewer, gold=True)
    return queue


def _provenance(
    queue: Queue, custom_id: str, *, reviewed: bool, edited: bool = False
) -> dict[str, Any]:
    item = queue.items.get(custom_id=custom_id)
    return {
        "queue": "Tickets",
        "queue_id": queue.pk,
        "custom_id": custom_id,
        "model": "tiny-chat",
        "batch_id": item.outputs.get().batch_id,
        "reviewer": "rita" if reviewed else None,
        "reviewed_at": "2025-03-01T12:30:00+00:00" if reviewed else None,
        "gold": item.is_gold,
        "edited": edited,
    }


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"


def _export(queue: Queue, format: str, *, gold_only: bool = True) -> list[str]:
    items = queue.items.all()
    if gold_only:
        items = items.filter(gold_starred_at__isnull=False)
    return list(export_lines(queue=queue, items=items, format=format))


def test_icl_lines_fill_the_schemas_templates_with_edited_answers_first(exported: Queue) -> None:
    assert _export(exported, "icl") == [
        _line(
            {
                "system": "You triage customer support tickets.",
                "user": "Subject: Charged twice this month\nCustomer: Ada Lovelace (Pro)\n\n"
                "My card was charged twice for March. Please refund one of them.",
                "assistant": "Category: Billing\nUrgency: Critical\nNeeds reply: Yes\n"
                "Tags: refund\nSummary: Refund a double charge",
                "provenance": _provenance(exported, "ticket-0", reviewed=True, edited=True),
            }
        ),
        _line(
            {
                "system": "You triage customer support tickets.",
                "user": "Subject: Please add dark mode\nCustomer: Alan Turing (Free)\n\n"
                "Would love a dark theme for late-night work.",
                "assistant": "Category: \nUrgency: \nNeeds reply: \nTags: \nSummary: ",
                "provenance": _provenance(exported, "ticket-2", reviewed=False),
            }
        ),
    ]


def test_finetuning_pairs_use_the_schemas_input_and_output_fields(exported: Queue) -> None:
    first = _export(exported, "finetune")[0]

    assert first == _line(
        {
            "input": {
                "subject": "Charged twice this month",
                "body": "My card was charged twice for March. Please refund one of them.",
            },
            "output": {
                "category": "Billing",
                "urgency": "Critical",
                "needs_reply": "Yes",
                "tags": ["refund"],
                "summary": "Refund a double charge",
            },
            "provenance": _provenance(exported, "ticket-0", reviewed=True, edited=True),
        }
    )


def test_openai_chat_lines_are_system_user_assistant_messages(exported: Queue) -> None:
    first = _export(exported, "openai")[0]

    assert first == _line(
        {
            "messages": [
                {"role": "system", "content": "You triage customer support tickets."},
                {
                    "role": "user",
                    "content": "Subject: Charged twice this month\nCustomer: Ada Lovelace (Pro)\n\n"
                    "My card was charged twice for March. Please refund one of them.",
                },
                {
                    "role": "assistant",
                    "content": "Category: Billing\nUrgency: Critical\nNeeds reply: Yes\n"
                    "Tags: refund\nSummary: Refund a double charge",
                },
            ],
            "metadata": _provenance(exported, "ticket-0", reviewed=True, edited=True),
        }
    )


def test_without_templates_openai_lines_replay_the_request_and_the_edited_output(
    exported: Queue,
) -> None:
    config = exported.schema.export
    config.icl_user_template = ""
    config.icl_assistant_template = ""
    config.save()

    first = json.loads(_export(exported, "openai")[0])

    assert first["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": json.dumps(TICKETS[0])},
        {"role": "assistant", "content": '{"category": "Billing", "urgency": "Critical"}'},
    ]


def test_csv_has_a_header_and_one_row_per_item(exported: Queue) -> None:
    batch_id = exported.items.get(custom_id="ticket-0").outputs.get().batch_id
    history = json.dumps(exported.items.get(custom_id="ticket-0").data["history"])

    lines = _export(exported, "csv")

    assert lines[0] == (
        "queue,custom_id,model,batch_id,reviewer,reviewed_at,gold,edited,"
        "subject,customer,plan,body,history,category,urgency,needs_reply,tags,summary,output\n"
    )
    history_cell = '"' + history.replace('"', '""') + '"'
    assert lines[1] == (
        f"Tickets,ticket-0,tiny-chat,{batch_id},rita,2025-03-01T12:30:00+00:00,true,true,"
        "Charged twice this month,Ada Lovelace,Pro,"
        "My card was charged twice for March. Please refund one of them.,"
        f'{history_cell},Billing,Critical,Yes,"[""refund""]",Refund a double charge,'
        '"{""category"": ""Billing"", ""urgency"": ""Critical""}"\n'
    )
    assert lines[2].startswith(f"Tickets,ticket-2,tiny-chat,{batch_id},,,true,false,")
    assert len(lines) == 3


def test_csv_cells_that_look_like_formulas_are_defused(exported: Queue) -> None:
    item = exported.items.get(custom_id="ticket-2")
    item.data = {**item.data, "subject": '=HYPERLINK("http://x")', "plan": "-5"}
    item.save()

    row = _export(exported, "csv")[2]

    assert ',"\'=HYPERLINK(""http://x"")",' in row
    assert ",-5," in row  # a number stays a number


def test_items_nobody_submitted_or_starred_are_not_exported(exported: Queue) -> None:
    custom_ids = [
        json.loads(line)["provenance"]["custom_id"]
        for line in _export(exported, "icl", gold_only=False)
    ]

    assert custom_ids == ["ticket-0", "ticket-1", "ticket-2"]


def test_the_latest_submission_wins_and_its_preferred_output_is_used(
    exported: Queue, second_reviewer: User
) -> None:
    item: Item = exported.items.get(custom_id="ticket-0")
    services.response_save(
        item=item,
        reviewer=second_reviewer,
        answers={"category": "Account", "urgency": "Low", "needs_reply": "No"},
        status="submitted",
    )

    line = json.loads(_export(exported, "finetune")[0])

    assert line["output"]["category"] == "Account"
    assert line["provenance"]["reviewer"] == "rob"
    assert line["provenance"]["edited"] is False


def test_placeholders_that_are_not_fields_stay_as_written() -> None:
    assert fill_template("{a} {b} {not a field} {{a}}", {"a": 1}, {"b": [1, {"x": 2}]}) == (
        '1 [1, {"x": 2}] {not a field} {1}'
    )


def test_the_export_queue_command_writes_a_format_to_stdout_or_a_file(
    exported: Queue, tmp_path: Path
) -> None:
    out = io.StringIO()
    call_command("export_queue", str(exported.pk), "--format", "icl", stdout=out)
    assert out.getvalue().splitlines(keepends=True) == _export(exported, "icl")

    target = tmp_path / "tickets.csv"
    call_command(
        "export_queue",
        "Tickets",
        "--format",
        "csv",
        "--scope",
        "reviewed",
        "-o",
        str(target),
        stderr=io.StringIO(),
    )
    with target.open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert [row[1] for row in rows] == ["custom_id", "ticket-0", "ticket-1", "ticket-2"]


def test_the_export_queue_command_says_which_queue_it_cannot_find(db: None) -> None:
    with pytest.raises(CommandError, match="No queue with id or name 'nope'"):
        call_command("export_queue", "nope", "--format", "csv")
