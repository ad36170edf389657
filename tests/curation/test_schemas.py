from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from curation.models import ConquestSchema, DataSource, Question
from curation.schemas import SchemaError, schema_import, schema_to_dict
from tests.curation.factories import EXAMPLE_SCHEMAS, REFERENCE_SCHEMAS

REFERENCE_FILES = sorted(REFERENCE_SCHEMAS.glob("*.json"))
EXAMPLE_FILES = sorted(EXAMPLE_SCHEMAS.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_the_three_reference_schemas_are_there() -> None:
    assert [path.name for path in REFERENCE_FILES] == [
        "candidate_evaluation.json",
        "cv_parsing.json",
        "email_evaluation.json",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("path", REFERENCE_FILES + EXAMPLE_FILES, ids=lambda p: p.name)
def test_a_schema_file_imports_unchanged_and_exports_back_to_an_equal_document(path: Path) -> None:
    original = _load(path)

    schema, created = schema_import(data=original)

    assert created
    schema = ConquestSchema.objects.get(pk=schema.pk)
    assert schema_to_dict(schema) == original


@pytest.mark.django_db
def test_it_keeps_every_part_of_the_candidate_schema_in_its_own_field() -> None:
    schema, _ = schema_import(data=_load(REFERENCE_SCHEMAS / "candidate_evaluation.json"))

    assert (schema.key, schema.version, schema.name) == (
        "candidate_evaluation",
        "1.0.0",
        "Candidate Evaluation",
    )
    sources = list(schema.data_sources.values_list("key", "type", "display_format"))
    assert sources[0] == ("name", "text", "header")
    assert sources[3] == ("education", "structured", "list")
    recommendation = schema.questions.get(key="recommendation")
    assert recommendation.type == Question.Type.CHOICE
    assert recommendation.options == ["Strong Yes", "Yes", "Maybe", "No", "Strong No"]
    assert recommendation.required
    assert schema.questions.get(key="trajectory").help_text.startswith("• Speed")
    assert schema.rendering.layout == "two-column"
    assert schema.rendering.show_rubrics
    assert schema.rendering.custom_css.startswith(".candidate-header")
    assert schema.rendering.extra == {}
    assert schema.export.icl_system_prompt.startswith("You are an expert technical recruiter")
    assert "{work_history}" in schema.export.icl_user_template
    assert schema.export.finetuning_input_fields == ["name", "role", "education", "work_history"]


@pytest.mark.django_db
def test_importing_the_same_version_again_returns_the_stored_one() -> None:
    data = _load(REFERENCE_SCHEMAS / "cv_parsing.json")
    first, _ = schema_import(data=data)

    again, created = schema_import(data=data)

    assert not created
    assert again.pk == first.pk
    assert ConquestSchema.objects.count() == 1


@pytest.mark.django_db
def test_it_refuses_changed_content_under_an_existing_version() -> None:
    data = _load(REFERENCE_SCHEMAS / "cv_parsing.json")
    schema_import(data=data)
    data["questions"][0]["text"] = "Full name"

    with pytest.raises(SchemaError, match="new version"):
        schema_import(data=data)


@pytest.mark.django_db
def test_a_new_version_becomes_the_latest() -> None:
    data = _load(REFERENCE_SCHEMAS / "cv_parsing.json")
    schema_import(data=data)
    data["version"] = "1.1.0"
    newer, _ = schema_import(data=data)

    assert ConquestSchema.objects.latest_version("cv_parsing") == newer


@pytest.mark.django_db
def test_unknown_keys_survive_the_round_trip() -> None:
    data = {
        "id": "tiny",
        "name": "Tiny",
        "version": "2",
        "owner": "data team",
        "dataSources": [
            {
                "id": "prompt",
                "name": "Prompt",
                "type": "chat",
                "required": False,
                "displayFormat": "default",
                "source": "request",
                "path": "messages",
                "note": "kept",
            }
        ],
        "questions": [
            {
                "id": "ok",
                "text": "OK?",
                "type": "boolean",
                "required": True,
                "modelAnswerPath": "verdict.ok",
                "weight": 2,
            }
        ],
        "rendering": {
            "layout": "grid",
            "showLLMPrediction": False,
            "showDataSources": True,
            "showRubrics": False,
            "density": "compact",
        },
        "export": {"iclFormat": {"systemPrompt": "Be brief.", "style": "x"}, "gold": True},
    }

    schema, _ = schema_import(data=data)

    assert schema_to_dict(ConquestSchema.objects.get(pk=schema.pk)) == data
    assert schema.data_sources.get().source == DataSource.Source.REQUEST
    assert schema.questions.get().answer_path == "verdict.ok"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("id"), "id must be a non-empty string"),
        (lambda d: d.update(id="bad id"), "id may contain only"),
        (lambda d: d.update(questions=[]), "questions must be a non-empty list"),
        (lambda d: d["questions"][0].update(type="slider"), r"questions\[0\].type must be one of"),
        (lambda d: d["questions"][0].update(options=[]), "needs options"),
        (lambda d: d["dataSources"][0].update(displayFormat="table"), "displayFormat must be"),
        (lambda d: d["dataSources"].append(dict(d["dataSources"][0])), "more than once"),
        (lambda d: d["rendering"].update(layout="three-column"), "rendering.layout"),
        (lambda d: d["rendering"].update(showRubrics="yes"), "must be true or false"),
        (
            lambda d: d["export"]["finetuningFormat"]["inputFields"].append("nope"),
            "names nope",
        ),
    ],
)
def test_it_refuses_a_broken_schema_with_a_message_that_says_where(
    change: Any, message: str
) -> None:
    data = _load(REFERENCE_SCHEMAS / "email_evaluation.json")
    change(data)

    with pytest.raises(SchemaError, match=message):
        schema_import(data=data)
    assert ConquestSchema.objects.count() == 0


@pytest.mark.django_db
def test_the_import_schema_command_imports_several_files() -> None:
    out = io.StringIO()

    call_command("import_schema", *[str(p) for p in REFERENCE_FILES], stdout=out)

    assert set(ConquestSchema.objects.values_list("key", flat=True)) == {
        "candidate_evaluation",
        "cv_parsing",
        "email_evaluation",
    }
    assert "Imported: cv_parsing version 1.0.0" in out.getvalue()


@pytest.mark.django_db
def test_the_import_schema_command_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    with pytest.raises(CommandError, match=r"broken\.json"):
        call_command("import_schema", str(broken))


@pytest.mark.django_db
def test_staff_import_a_schema_in_the_admin_and_download_it_as_json(
    staff: User, staff_client: Client
) -> None:
    staff.is_superuser = True
    staff.save()
    path = REFERENCE_SCHEMAS / "email_evaluation.json"
    with path.open("rb") as upload:
        response = staff_client.post(
            reverse("admin:curation_conquestschema_import"), {"file": upload}
        )
    schema = ConquestSchema.objects.get(key="email_evaluation")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:curation_conquestschema_change", args=[schema.pk])

    download = staff_client.post(
        reverse("admin:curation_conquestschema_changelist"),
        {"action": "download_json", "_selected_action": [schema.pk]},
    )

    assert download["Content-Disposition"] == 'attachment; filename="email_evaluation.json"'
    assert json.loads(download.content) == _load(path)


@pytest.mark.django_db
def test_the_admin_import_shows_why_a_file_was_refused(staff: User, staff_client: Client) -> None:
    staff.is_superuser = True
    staff.save()
    upload = io.BytesIO(b'{"id": "x", "questions": []}')
    upload.name = "x.json"

    response = staff_client.post(reverse("admin:curation_conquestschema_import"), {"file": upload})

    assert response.status_code == 200
    assert "questions must be a non-empty list" in response.content.decode()
