"""A storage backend whose writes fail as on a full disk, for the fault tests.

Selected in a worker subprocess with BATCH_STORAGE_BACKEND; FAULT_STORAGE_FAIL is a regular
expression over storage names: writes to matching names raise ENOSPC, all reads still work.
"""

from __future__ import annotations

import errno
import os
import re
from typing import IO, Any

from django.core.files.storage import FileSystemStorage


class FailingStorage(FileSystemStorage):
    def save(self, name: str | None, content: IO[Any], max_length: int | None = None) -> str:
        pattern = os.environ.get("FAULT_STORAGE_FAIL", "")
        if pattern and name and re.search(pattern, name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return super().save(name, content, max_length=max_length)
