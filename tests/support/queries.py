"""Captured SQL, read as a short list a test can assert on statement by statement."""

from __future__ import annotations

import re

from django.test.utils import CaptureQueriesContext

_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?')


def statements(ctx: CaptureQueriesContext) -> list[str]:
    """Each statement as `VERB table` (or the bare verb: BEGIN, COMMIT), savepoints left out
    (they cost no planning)."""
    out = []
    for q in ctx.captured_queries:
        sql = q["sql"]
        if "SAVEPOINT" in sql:
            continue
        table = _TABLE.search(sql)
        out.append(f"{sql.split()[0]} {table[1]}" if table else sql.split()[0])
    return out
