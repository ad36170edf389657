"""Lookups compiled to SQL once per database, for the routes clients poll.

Django compiles a queryset to SQL on every evaluation. For a lookup of one row by an indexed
key that costs more than running it: compiling and resolving the converters of Batch's 31
columns was a third of GET /v1/batches/{id}. A ``CompiledLookup`` keeps the SQL and the column
converters the ORM produced the first time and only binds new values after that.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from django.db import connections, models, router
from django.db.models.sql.compiler import SQLCompiler

M = TypeVar("M", bound=models.Model)


class CompiledLookup(Generic[M]):
    """``model.objects.filter(field=value, ...).first()`` without compiling it each time.

    For fields whose values go to the database as they are (text, integers, foreign keys by
    primary key): later values are bound to the SQL the first ones compiled to. None (which
    compiles to IS NULL) takes the ORM's own path.
    """

    def __init__(self, model: type[M], *fields: str) -> None:
        self.model = model
        self.fields = fields
        # Per database alias: (sql, column names, {column index: (converters, expression)}).
        self._compiled: dict[str, tuple[str, list[str], dict[int, Any]]] = {}

    def _queryset(self, values: tuple[Any, ...]) -> models.QuerySet[M]:
        lookup = dict(zip(self.fields, values, strict=True))
        return self.model._default_manager.filter(**lookup).order_by()[:1]

    def _compile(
        self, alias: str, values: tuple[Any, ...]
    ) -> tuple[str, list[str], dict[int, Any]]:
        compiler: SQLCompiler = self._queryset(values).query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        if len(params) != len(values):
            raise ValueError(f"{self.model.__name__}: cannot compile a lookup by {self.fields}")
        columns = [column.target.attname for column, _, _ in compiler.select]
        converters = compiler.get_converters([column for column, _, _ in compiler.select])
        compiled = (sql, columns, converters)
        self._compiled[alias] = compiled
        return compiled

    def get(self, *values: Any) -> M | None:
        """The row whose fields equal ``values`` (in the order the fields were given), or None."""
        if None in values:
            return next(iter(self._queryset(values)), None)
        alias = router.db_for_read(self.model)
        sql, columns, converters = self._compiled.get(alias) or self._compile(alias, values)
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            row = cursor.fetchone()
        if row is None:
            return None
        row = list(row)
        for index, (functions, expression) in converters.items():
            for convert in functions:
                row[index] = convert(row[index], expression, connection)
        return self.model.from_db(alias, columns, row)
