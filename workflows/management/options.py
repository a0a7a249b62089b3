"""What the management commands share in reading their options."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError


def json_object_option(name: str, text: str) -> dict[str, Any]:
    """The JSON object given as option `name` (say "--input"); CommandError if it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{name} must be a JSON object")
    return value
