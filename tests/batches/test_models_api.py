"""GET /v1/models from the registry, and manage.py register_model that fills it."""

from __future__ import annotations

import openai.types
import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from inference.models import RegisteredModel

pytestmark = pytest.mark.django_db


def test_it_lists_the_enabled_models_in_the_sdks_shape(
    api: APIClient, registered_model: RegisteredModel
) -> None:
    RegisteredModel.objects.create(name="org/big-chat", source="/models/big")
    RegisteredModel.objects.create(name="retired", source="/models/old", enabled=False)

    body = api.get("/v1/models").json()

    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["org/big-chat", "tiny-chat"]
    model = openai.types.Model.model_validate(body["data"][1])
    assert model.object == "model"
    assert model.created == int(registered_model.created_at.timestamp())
    assert model.owned_by == "batch-server"


def test_it_retrieves_a_model_whose_name_has_a_slash(api: APIClient) -> None:
    RegisteredModel.objects.create(name="org/big-chat", source="/models/big")

    response = api.get("/v1/models/org/big-chat")

    assert response.status_code == 200
    assert response.json()["id"] == "org/big-chat"


@pytest.mark.parametrize("name", ["gpt-9", "retired"])
def test_it_answers_404_for_an_unknown_or_disabled_model(api: APIClient, name: str) -> None:
    RegisteredModel.objects.create(name="retired", source="/models/old", enabled=False)

    response = api.get(f"/v1/models/{name}")

    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": f"The model '{name}' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_register_model_creates_a_model_with_engine_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command(
        "register_model",
        "tiny-chat",
        "/models/tiny",
        "--max-model-len",
        "512",
        "--dtype",
        "float32",
        "--engine-arg",
        "enforce_eager=true",
        "--engine-arg",
        "quantization=awq",
        "--default-sampling",
        '{"max_tokens": 16}',
    )

    model = RegisteredModel.objects.get()
    assert (model.name, model.source, model.enabled) == ("tiny-chat", "/models/tiny", True)
    assert model.engine_args == {
        "max_model_len": 512,
        "dtype": "float32",
        "enforce_eager": True,
        "quantization": "awq",
    }
    assert model.max_model_len == 512
    assert model.default_sampling == {"max_tokens": 16}
    assert "Registered model 'tiny-chat'" in capsys.readouterr().out


def test_register_model_updates_and_merges_engine_arguments(
    registered_model: RegisteredModel, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("register_model", "tiny-chat", "/models/v2", "--dtype", "bfloat16", "--disabled")

    registered_model.refresh_from_db()
    assert registered_model.source == "/models/v2"
    assert registered_model.engine_args == {"max_model_len": 512, "dtype": "bfloat16"}
    assert registered_model.enabled is False
    assert "Updated model 'tiny-chat'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--engine-arg", "no-equals-sign"],
        ["--default-sampling", "{not json"],
        ["--default-sampling", "[1, 2]"],
    ],
)
def test_register_model_refuses_malformed_options(args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("register_model", "tiny-chat", "/models/tiny", *args)

    assert not RegisteredModel.objects.exists()
