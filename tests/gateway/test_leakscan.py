from __future__ import annotations

import json

from keyswap.gateway.apikeys import generate_key
from keyswap.gateway.leakscan import find_keys


def test_plain_text_is_searched_line_by_line() -> None:
    one, two = generate_key(), generate_key()
    text = f"API_KEY={one}\nnothing here\n\n  token: '{two}' and again {one}\n"
    found = find_keys(text, name="settings.env")
    assert [(f.token, f.url) for f in found] == [
        (one, "settings.env:1"),
        (two, "settings.env:4"),
        (one, "settings.env:4"),
    ]


def test_a_gitleaks_report_names_the_link_or_file_line_and_commit() -> None:
    one, two = generate_key(), generate_key()
    report = [
        {
            "RuleID": "keyswap-api-key",
            "Secret": one,
            "Match": f"key = {one}",
            "File": "app/config.py",
            "StartLine": 12,
            "Commit": "abc123",
        },
        {"RuleID": "keyswap-api-key", "Secret": two, "Link": "https://github.com/o/r/blob/x/a#L3"},
    ]
    found = find_keys(json.dumps(report), name="gitleaks.json")
    assert [(f.token, f.url, f.token_type) for f in found] == [
        (one, "app/config.py:12@abc123", "keyswap-api-key"),
        (two, "https://github.com/o/r/blob/x/a#L3", "keyswap-api-key"),
    ]


def test_trufflehog_json_lines_name_the_source_link_or_file() -> None:
    one, two = generate_key(), generate_key()
    lines = [
        {
            "DetectorName": "Keyswap",
            "Raw": one,
            "SourceMetadata": {"Data": {"Github": {"link": "https://github.com/o/r/blob/c/f#L1"}}},
        },
        {
            "DetectorName": "Keyswap",
            "Raw": two,
            "SourceMetadata": {"Data": {"Filesystem": {"file": "/src/app.py", "line": 7}}},
        },
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    found = find_keys(text, name="th.jsonl")
    assert [(f.token, f.url) for f in found] == [
        (one, "https://github.com/o/r/blob/c/f#L1"),
        (two, "/src/app.py:7"),
    ]


def test_other_prefixes_and_look_alikes_are_not_found() -> None:
    key = generate_key()
    text = f"x{key} {key}x ghp_{'a' * 36} {generate_key('acme')}"
    assert find_keys(text) == []
    assert [f.token for f in find_keys(generate_key("acme"), prefix="acme")]
