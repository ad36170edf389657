"""CompiledLookup: the ORM's own query, compiled once, gives the ORM's own objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from batches.api.lookups import CompiledLookup
from batches.models import Batch

pytestmark = pytest.mark.django_db


def test_it_finds_the_row_the_orm_finds_with_every_field_converted(
    make_batch: Callable[..., Batch], owner: User
) -> None:
    errors = {"object": "list", "data": [{"code": "c", "message": "m", "param": None, "line": 1}]}
    batch = make_batch("failed", errors=errors, metadata={"k": "v"}, request_total=3)
    lookup = CompiledLookup(Batch, "id", "owner")

    found = lookup.get(batch.id, owner.pk)
    again = lookup.get(batch.id, owner.pk)  # from the compiled SQL this time

    expected = Batch.objects.get(pk=batch.id)
    for row in (found, again):
        assert row is not None
        assert not row._state.adding
        for field in Batch._meta.concrete_fields:
            assert getattr(row, field.attname) == getattr(expected, field.attname), field.name
    assert found is not None and found.errors == errors and found.failed_at is not None


def test_it_answers_none_for_no_row_or_another_owners_row(
    make_batch: Callable[..., Batch], owner: User, other_owner: User
) -> None:
    batch = make_batch()
    lookup = CompiledLookup(Batch, "id", "owner")
    assert lookup.get(batch.id, owner.pk) is not None

    assert lookup.get(batch.id, other_owner.pk) is None
    assert lookup.get("batch_nope", owner.pk) is None


def test_a_none_value_takes_the_orms_path(make_batch: Callable[..., Batch]) -> None:
    batch = make_batch()
    lookup = CompiledLookup(Batch, "id", "output_file")

    assert lookup.get(batch.id, None) == batch


def test_a_lookup_whose_sql_would_not_fit_other_values_is_refused(db: Any) -> None:
    # An IN list compiles to one parameter per element: later lists need other SQL.
    lookup = CompiledLookup(Batch, "id__in")

    with pytest.raises(ValueError, match="cannot compile a lookup by"):
        lookup.get(["batch_a", "batch_b"])
