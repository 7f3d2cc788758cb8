"""``ETag`` on reads, ``If-Match`` on updates and deletes (412 when the resource changed since).

An ETag is a strong validator over the resource's JSON representation. ``If-Match`` is optional: a
write without it is unconditional; ``If-Match: *`` only requires the resource to exist.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from keyswap.admin.problems import ApiProblem

__all__ = ["check_if_match", "etag_of"]


def etag_of(model: BaseModel) -> str:
    """The strong ETag of a representation."""
    data: Any = model.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def check_if_match(header: str | None, current: str) -> None:
    """Refuse unless ``If-Match`` is absent, ``*``, or lists ``current``.

    Raises:
        ApiProblem: 412 when the resource changed since the caller read it.
    """
    if header is None:
        return
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    if "*" in tags or current in tags:
        return
    raise ApiProblem(
        412,
        "the resource changed since you read it (If-Match does not match its ETag); "
        "read it again and retry",
    )
