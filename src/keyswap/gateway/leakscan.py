"""Find keyswap keys in any scanner's output: plain text, gitleaks or TruffleHog JSON reports.

Pure (no I/O but what the caller hands in). What ``keyswap keys scan`` reads:

- a JSON array (gitleaks' ``--report-format json``) or JSON lines (TruffleHog's ``--json``): every
  string of each record is searched for keys; where it was found comes from the record (gitleaks'
  ``Link``, else ``File:StartLine`` and ``Commit``; TruffleHog's ``SourceMetadata.Data.*.link``, else
  its ``file``/``line``; any record's ``url``/``link``/``html_url``);
- anything else is plain text, searched line by line (found at ``<name>:<line>``).

A candidate is anything :func:`keyswap.gateway.apikeys.key_regex` matches; the checksum and the
lookup are the caller's (:mod:`keyswap.manage.leaks`). The same key at the same place is reported
once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from keyswap.gateway.apikeys import DEFAULT_PREFIX, key_regex
from keyswap.manage.leaks import Finding

__all__ = ["find_keys"]

_LINK_FIELDS = ("Link", "link", "html_url", "url", "URL")
_MAX_DEPTH = 32


def find_keys(text: str, *, name: str = "-", prefix: str = DEFAULT_PREFIX) -> list[Finding]:
    """Every key-shaped token in ``text`` (a report or plain text read from ``name``), with where it
    was found, in order of appearance, each (token, place) once."""
    pattern = re.compile(key_regex(prefix))
    records = _json_records(text)
    found: dict[tuple[str, str], Finding] = {}
    if records is None:
        for number, line in enumerate(text.splitlines(), 1):
            for match in pattern.finditer(line):
                place = f"{name}:{number}"
                found.setdefault((match.group(0), place), Finding(match.group(0), place, "text"))
    else:
        for index, record in enumerate(records, 1):
            place = _place(record) or f"{name}#{index}"
            kind = _kind(record)
            for value in _strings(record, 0):
                for match in pattern.finditer(value):
                    found.setdefault((match.group(0), place), Finding(match.group(0), place, kind))
    return list(found.values())


def _json_records(text: str) -> list[Any] | None:
    """The records of a JSON array or of JSON lines; ``None`` if ``text`` is neither."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        document = json.loads(stripped)
    except (ValueError, RecursionError):
        document = None
    else:
        return document if isinstance(document, list) else [document]
    records = []
    for line in stripped.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            return None
    return records


def _strings(value: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


def _place(record: Any) -> str | None:
    """Where a record says its secret is: a link, else file, line and commit."""
    if not isinstance(record, dict):
        return None
    for field in _LINK_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value:
            return value
    file = record.get("File") or record.get("file")
    if isinstance(file, str) and file:  # gitleaks
        line = record.get("StartLine") or record.get("line")
        commit = record.get("Commit") or record.get("commit")
        place = file + (f":{line}" if isinstance(line, int) else "")
        return place + (f"@{commit}" if isinstance(commit, str) and commit else "")
    metadata = record.get("SourceMetadata")  # TruffleHog
    data = metadata.get("Data") if isinstance(metadata, dict) else None
    if isinstance(data, dict):
        for source in data.values():
            found = _place(source)
            if found:
                return found
    return None


def _kind(record: Any) -> str:
    if isinstance(record, dict):
        for field in ("RuleID", "DetectorName", "secret_type", "type"):
            value = record.get(field)
            if isinstance(value, str) and value:
                return value
    return "report"
