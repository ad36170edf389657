"""django-q2 entry point of the retention schedule (inference migration 0003), CPU cluster."""

from __future__ import annotations

from batches import retention


def delete_expired_files() -> dict[str, int]:
    return retention.files_delete_expired().as_dict()
