"""The CPU cluster's periodic tasks, kept in django-q2's schedule table.

Migrations create them; a starting CPU cluster also puts back any that are missing (a database
restored from an older dump, a test run's flush, an operator's stray delete), because without
the sweep nothing expires and an orphaned batch waits forever. Existing rows are left as they
are, so an operator's change of interval in the admin stays.
"""

from __future__ import annotations

from typing import Any

SCHEDULES: dict[str, dict[str, Any]] = {
    # Expiry, orphaned batches (a dead worker's), stuck finalizations.
    "inference.sweep": {"func": "inference.tasks.sweep", "minutes": 1},
    # Files past their expires_after, and batch outputs past output_expires_after.
    "batches.retention": {"func": "batches.retention_tasks.delete_expired_files", "minutes": 5},
}


def schedules_ensure() -> list[str]:
    """Create the schedules that are missing and drop duplicates; returns the names created.

    A CPU cluster's workers all spawn at once, and django-q2's schedule name is not unique:
    two of them can each create the same schedule. Every caller then keeps the oldest row, so
    they agree whatever the order (a duplicate sweep would run twice, and ``get`` by name fail).
    """
    from django_q.models import Schedule

    present = set(Schedule.objects.filter(name__in=SCHEDULES).values_list("name", flat=True))
    created = []
    for name, fields in SCHEDULES.items():
        if name not in present:
            Schedule.objects.create(
                name=name,
                **fields,
                schedule_type=Schedule.MINUTES,
                repeats=-1,
                cluster="cpu",
            )
            created.append(name)
        same_name = Schedule.objects.filter(name=name)
        oldest = same_name.order_by("pk").values_list("pk", flat=True).first()
        same_name.exclude(pk=oldest).delete()
    return created
