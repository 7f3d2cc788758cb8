"""``keyswap usage``: one consumer, every consumer, one key, top consumers, the rollup; bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.store import Store
from keyswap.store.usage import COUNTS, SqlUsageSink, UsageRow
from tests.support.gateway_state import SECRET_TEXT

NOW = int(time.time()) // 60 * 60


def row(consumer: str, key_id: str, requests: int, *, ago: int = 0, s4xx: int = 0) -> UsageRow:
    counts: dict[str, float] = dict.fromkeys(COUNTS, 0)
    counts.update(
        requests=requests,
        status_2xx=requests - s4xx,
        status_4xx=s4xx,
        bytes_in=2048,
        bytes_out=3 * 1024 * 1024,
        latency_sum=0.03 * requests,
        latency_50ms=requests,
    )
    return UsageRow("n1", NOW - ago, consumer, key_id, tuple(counts[n] for n in COUNTS))


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "keyswap.db")
    store = Store(path)
    try:
        store.create_consumer("acme", {})
        store.create_consumer("beta", {})
        SqlUsageSink(store).write(
            [
                row("acme", "key_a", 4),
                row("acme", "key_b", 6, s4xx=3),
                row("acme", "key_a", 1, ago=2 * 86400),
                row("beta", "key_c", 2),
                row("", "", 9, s4xx=9),
            ]
        )
    finally:
        store.close()
    return path


def run(*args: str) -> Result:
    env: dict[str, str | None] = {"KEYSWAP_DB": None, "KEYSWAP_SECRET": SECRET_TEXT}
    return CliRunner().invoke(main, list(args), env=env)


def ok_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_usage_of_a_consumer_by_day(db: str) -> None:
    body = ok_json("usage", "acme", "--db", db)
    assert body["consumer"] == "acme"
    assert body["by"] == "day"
    assert [b["requests"] for b in body["buckets"]] == [1, 10]
    assert body["total"]["requests"] == 11
    assert body["total"]["status_4xx"] == 3


def test_usage_table(db: str) -> None:
    result = run("usage", "acme", "--since", "1h", "--by", "minute", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Usage of consumer 'acme'")
    assert lines[1].split()[:4] == ["START", "REQUESTS", "2XX", "3XX"]
    assert lines[-1].split()[:2] == ["TOTAL", "10"]
    assert "MiB" in lines[-1]
    assert "30.0ms" in lines[-1]


def test_usage_of_one_key_and_of_everyone(db: str) -> None:
    assert ok_json("usage", "acme", "--key", "key_b", "--db", db)["total"]["requests"] == 6
    everyone = ok_json("usage", "--since", "1h", "--db", db)
    assert everyone["consumer"] is None
    assert everyone["total"]["requests"] == 21
    assert ok_json("usage", "show", "beta", "--db", db)["total"]["requests"] == 2


def test_usage_top(db: str) -> None:
    top = ok_json("usage", "top", "--db", db)
    assert [(c["consumer"], c["requests"]) for c in top["consumers"]] == [("acme", 11), ("beta", 2)]
    errors = ok_json("usage", "top", "--by", "errors", "--db", db)
    assert errors["consumers"][0]["consumer"] == "acme"
    assert errors["consumers"][0]["error_rate"] == pytest.approx(3 / 11, abs=1e-6)
    result = run("usage", "top", "--db", db)
    assert result.stdout.splitlines()[0].split()[:2] == ["CONSUMER", "REQUESTS"]


def test_usage_rollup(db: str) -> None:
    assert ok_json("usage", "rollup", "--db", db) == {"minutes": 1, "hours": 0, "expired": 0}
    assert ok_json("usage", "rollup", "--db", db) == {"minutes": 0, "hours": 0, "expired": 0}
    assert ok_json("usage", "acme", "--db", db)["total"]["requests"] == 11


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("usage", "nobody"), 1, "unknown consumer 'nobody'"),
        (("usage", "bad name!"), 1, "consumer name"),
        (("usage", "acme", "--by", "week"), 2, "--by"),
        (("usage", "acme", "--since", "soon"), 2, "--since"),
        (("usage", "--since", "1000d", "--by", "minute"), 1, "more than"),
        (("usage", "acme", "--key", "key;drop"), 1, "key id"),
        (("usage", "top", "--limit", "0"), 2, "--limit"),
        (("usage", "rollup", "--minute-age", "1h"), 2, "--minute-age"),
        (("usage", "rollup", "--retention", "2d"), 1, "retention"),
    ],
)
def test_bad_input_is_one_error_line(
    db: str, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run(*args, "--db", db)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert message in result.stderr


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = run("usage", "--db", str(missing))
    assert result.exit_code == 1
    assert not missing.exists()


def test_the_group_help_says_where_the_show_options_are() -> None:
    """`keyswap usage --help` lists subcommands only; it points to the options of the default `show`."""
    group = run("usage", "--help")
    assert group.exit_code == 0, group.output
    assert "keyswap usage show --help" in " ".join(group.output.split())
    show = run("usage", "show", "--help")
    assert show.exit_code == 0, show.output
    for flag in ("--since", "--by", "--key", "--json"):
        assert flag in show.output
