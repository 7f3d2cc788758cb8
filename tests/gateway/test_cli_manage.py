from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from keyswap.cli import main
from keyswap.errors import InvalidApiKey
from keyswap.gateway.apikeys import KEY_REGEX, ApiKeys
from keyswap.gateway.secret import load_secret
from keyswap.store import ApiKeyRecord, Store, migrate
from keyswap.store.schema import SCHEMA_VERSION

ENV_NAMES = (
    "KEYSWAP_DB",
    "KEYSWAP_SECRET",
    "KEYSWAP_SECRET_FILE",
    "KEYSWAP_DATA_DIR",
    "XDG_DATA_HOME",
    "KEYSWAP_KEY_PREFIX",
    "KEYSWAP_TOKEN_TTL",
)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "keyswap.db")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    environment: dict[str, str | None] = dict.fromkeys(ENV_NAMES)
    environment.update(env or {})
    return CliRunner().invoke(main, list(args), env=environment)


def ok(*args: str, env: dict[str, str] | None = None) -> Result:
    result = run(*args, env=env)
    assert result.exit_code == 0, result.output
    return result


def fails(*args: str, exit_code: int = 1) -> str:
    result = run(*args)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def stored_keys(db: str) -> list[ApiKeyRecord]:
    store = Store(db)
    try:
        return store.list_api_keys()
    finally:
        store.close()


def authenticate(db: str, key: str) -> str:
    store = Store(db)
    try:
        return ApiKeys(store, load_secret(store.url, env={})).authenticate(key).consumer
    finally:
        store.close()


# -- consumers ------------------------------------------------------------------------------------------


def test_consumers_can_be_created_listed_updated_and_deleted(db: str) -> None:
    created = as_json(
        ok("consumers", "create", "acme", "--metadata", '{"tier":"gold"}', "--json", "--db", db)
    )
    assert created["name"] == "acme"
    assert created["metadata"] == {"tier": "gold"}
    assert "Created consumer 'beta'." in ok("consumers", "create", "beta", "--db", db).stdout

    listed = ok("consumers", "list", "--db", db).stdout
    assert listed.splitlines()[0].split() == [
        "NAME",
        "CREATED",
        "RATE_LIMIT",
        "QUOTA",
        "CREDITS",
        "SCOPES",
        "METADATA",
    ]
    assert '{"tier":"gold"}' in listed
    assert [c["name"] for c in as_json(ok("consumers", "list", "--json", "--db", db))] == [
        "acme",
        "beta",
    ]

    ok("consumers", "set-metadata", "acme", '{"tier":"platinum"}', "--db", db)
    assert as_json(ok("consumers", "list", "--json", "--db", db))[0]["metadata"] == {
        "tier": "platinum"
    }

    ok("keys", "create", "acme", "--db", db)
    assert (
        "Deleted consumer 'acme' and 1 API key(s)."
        in ok("consumers", "delete", "acme", "--yes", "--db", db).stdout
    )
    assert [c["name"] for c in as_json(ok("consumers", "list", "--json", "--db", db))] == ["beta"]


def test_an_empty_consumer_list_says_so(db: str) -> None:
    ok("db", "upgrade", "--db", db)
    assert ok("consumers", "list", "--db", db).stdout.strip() == "No consumers."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["consumers", "delete", "ghost", "--yes"], "Error: unknown consumer 'ghost'"),
        (["consumers", "set-metadata", "ghost", "{}"], "Error: unknown consumer 'ghost'"),
        (["keys", "create", "ghost"], "Error: unknown consumer 'ghost'"),
        (["keys", "list", "ghost"], "Error: unknown consumer 'ghost'"),
        (["keys", "revoke", "key_nope"], "Error: unknown key id 'key_nope'"),
        (["keys", "roll", "key_nope"], "Error: unknown key id 'key_nope'"),
    ],
)
def test_refused_requests_print_one_error_line_and_exit_1(
    db: str, args: list[str], message: str
) -> None:
    ok("consumers", "create", "acme", "--db", db)
    assert fails(*args, "--db", db).startswith(message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["consumers", "create", "bad name"], "consumer name must be 1-64 characters"),
        (["consumers", "create", "x", "--metadata", "{oops"], "metadata is not valid JSON"),
        (["consumers", "create", "x", "--metadata", "[1]"], "metadata must be a JSON object"),
        (
            ["consumers", "create", "x", "--metadata", json.dumps({"k": "v" * 1100})],
            "metadata is 1108 bytes as JSON; the limit is 1024 bytes",
        ),
        (["consumers", "set-metadata", "acme", "{oops"], "metadata is not valid JSON"),
        (["consumers", "set-limit", "acme", "--rate", "lots"], "invalid rate 'lots'"),
        (["keys", "create", "acme", "--expires-in", "soon"], "'--expires-in': 'soon' is not"),
        (["keys", "create", "acme", "--expires-in", "0"], "'--expires-in': must be a number"),
        (["keys", "roll", "key_x", "--grace", "-1"], "'--grace': must be a number"),
        (["signing-keys", "rotate", "--token-ttl", "5x"], "'--token-ttl': '5x' is not"),
        (["signing-keys", "prune", "--cache-margin", "soon"], "'--cache-margin': 'soon' is not"),
    ],
)
def test_bad_values_on_the_command_line_are_usage_errors(
    db: str, args: list[str], message: str
) -> None:
    ok("consumers", "create", "acme", "--db", db)
    before = ok("consumers", "list", "--json", "--db", db).stdout
    line = fails(*args, "--db", db, exit_code=2)
    assert message in line
    assert ok("consumers", "list", "--json", "--db", db).stdout == before


def test_a_duplicate_consumer_is_one_error_line(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    assert (
        fails("consumers", "create", "acme", "--db", db) == "Error: consumer 'acme' already exists"
    )


def test_usage_errors_are_one_line_too(db: str) -> None:
    assert (
        fails("consumers", "create", "--db", db, exit_code=2) == "Error: Missing argument 'NAME'."
    )
    assert "No such option" in fails("keys", "create", "acme", "--nope", exit_code=2)
    assert "'HS256' is not one of" in fails("signing-keys", "rotate", "--alg", "HS256", exit_code=2)


# -- keys -----------------------------------------------------------------------------------------------


def test_keys_create_json_prints_the_id_and_the_key_once(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    created = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    assert created["id"].startswith("key_")
    assert re.fullmatch(KEY_REGEX, created["key"])
    assert created["expires_at"] is None
    assert authenticate(db, created["key"]) == "acme"
    listing = (
        ok("keys", "list", "--db", db).stdout + ok("keys", "list", "--json", "--db", db).stdout
    )
    assert created["key"] not in listing
    assert created["id"] in listing


def test_keys_create_human_output_warns_the_key_is_shown_only_once(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    output = ok("keys", "create", "acme", "--expires-in", "90d", "--db", db).stdout
    assert "shown only once" in output
    assert "Expires: " in output
    key = next(
        word for line in output.splitlines() for word in line.split() if word.startswith("ks_")
    )
    assert authenticate(db, key) == "acme"


def test_an_expiry_duration_sets_the_expiry_time(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    ok("keys", "create", "acme", "--expires-in", "12h", "--db", db)
    record = stored_keys(db)[0]
    assert record.expires_at is not None
    assert abs(record.expires_at - (time.time() + 12 * 3600)) < 60


def test_keys_list_shows_ids_hints_and_status_without_secrets(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    ok("consumers", "create", "beta", "--db", db)
    first = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    as_json(ok("keys", "create", "beta", "--json", "--db", db))
    ok("keys", "revoke", first["id"], "--db", db)
    table = ok("keys", "list", "acme", "--db", db).stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "CONSUMER",
        "HINT",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "REVOKED",
        "LAST",
        "USED",
        "SCOPES",
    ]
    assert len(table) == 2
    assert first["id"] in table[1]
    assert "revoked" in table[1]
    assert f"ks_...{first['key'][-4:]}" in table[1]
    rows = as_json(ok("keys", "list", "--json", "--db", db))
    assert [r["consumer"] for r in rows] == ["acme", "beta"]
    assert set(rows[0]) == {
        "id",
        "consumer",
        "hint",
        "status",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "replaced_by",
        "scopes",
        "effective_scopes",
    }


def test_a_revoked_key_is_refused(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    created = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    assert "Revoked key" in ok("keys", "revoke", created["id"], "--db", db).stdout
    with pytest.raises(InvalidApiKey):
        authenticate(db, created["key"])


def test_keys_roll_prints_a_new_key_and_gives_the_old_one_a_grace_period(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    old = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    new = as_json(ok("keys", "roll", old["id"], "--grace", "1h", "--json", "--db", db))
    assert new["id"] != old["id"]
    assert authenticate(db, new["key"]) == "acme"
    assert authenticate(db, old["key"]) == "acme"
    stored = {r.id: r for r in stored_keys(db)}
    old_expiry = stored[old["id"]].expires_at
    assert old_expiry is not None
    assert abs(old_expiry - (time.time() + 3600)) < 60
    assert stored[old["id"]].replaced_by == new["id"]
    again = fails("keys", "roll", old["id"], "--db", db)
    assert (
        again
        == f"Error: key '{old['id']}' is rolled and cannot be rolled; roll '{new['id']}' instead"
    )


def test_the_key_prefix_can_be_configured(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    created = as_json(
        ok("keys", "create", "acme", "--json", "--db", db, env={"KEYSWAP_KEY_PREFIX": "acme"})
    )
    assert created["key"].startswith("acme_")


# -- signing keys ---------------------------------------------------------------------------------------


def test_signing_keys_rotate_creates_then_rotates_and_list_shows_no_private_material(
    db: str,
) -> None:
    ok("db", "upgrade", "--db", db)
    assert "No signing keys yet" in ok("signing-keys", "list", "--db", db).stdout
    created = ok("signing-keys", "rotate", "--alg", "ES256", "--db", db).stdout
    assert created.startswith("Created the first signing keys: ")
    first = as_json(ok("signing-keys", "list", "--json", "--db", db))
    assert sorted(k["state"] for k in first) == ["active", "next"]
    # The next key was published a moment ago: verifiers may not have it, so a plain rotate refuses.
    refused = fails("signing-keys", "rotate", "--db", db)
    assert "has been published for only" in refused
    assert "--force" in refused
    assert as_json(ok("signing-keys", "list", "--json", "--db", db)) == first
    output = ok("signing-keys", "rotate", "--alg", "EdDSA", "--force", "--db", db).stdout
    next_kid = next(k["kid"] for k in first if k["state"] == "next")
    assert f"Rotated: {next_kid} (ES256) signs now." in output
    keys = as_json(ok("signing-keys", "list", "--json", "--db", db))
    assert {k["state"]: k["alg"] for k in keys} == {
        "active": "ES256",
        "next": "EdDSA",
        "retired": "ES256",
    }
    retired = next(k for k in keys if k["state"] == "retired")
    assert retired["published_until"] is not None
    for key in keys:
        assert set(key) == {
            "kid",
            "alg",
            "state",
            "created_at",
            "activated_at",
            "retired_at",
            "published_until",
        }
    table = ok("signing-keys", "list", "--db", db).stdout.splitlines()
    assert table[0].split() == [
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "ACTIVATED",
        "RETIRED",
        "PUBLISHED",
        "UNTIL",
    ]


def test_signing_keys_prune_removes_only_expired_retired_keys(db: str) -> None:
    ok("signing-keys", "rotate", "--alg", "ES256", "--db", db)
    ok("signing-keys", "rotate", "--force", "--db", db)
    ok(
        "signing-keys", "rotate", "--force", "--db", db
    )  # rotating never prunes: the gateway knows its TTL
    assert len(as_json(ok("signing-keys", "list", "--json", "--db", db))) == 4
    assert "Pruned 0 retired key(s)." in ok("signing-keys", "prune", "--db", db).stdout
    output = ok(
        "signing-keys", "prune", "--token-ttl", "0", "--cache-margin", "0", "--db", db
    ).stdout
    assert output.startswith("Pruned 2 retired key(s).")
    assert len(as_json(ok("signing-keys", "list", "--json", "--db", db))) == 2


# -- database location ----------------------------------------------------------------------------------


def test_the_token_ttl_for_pruning_can_come_from_the_gateways_variable(db: str) -> None:
    ok("signing-keys", "rotate", "--alg", "ES256", "--db", db)
    ok("signing-keys", "rotate", "--force", "--db", db)
    env = {"KEYSWAP_TOKEN_TTL": "0"}
    assert "Pruned 0" in ok("signing-keys", "prune", "--db", db, env=env).stdout  # margin 300 s
    pruned = ok("signing-keys", "prune", "--cache-margin", "0", "--db", db, env=env).stdout
    assert pruned.startswith("Pruned 1 retired key(s).")


def test_db_upgrade_creates_the_schema(db: str) -> None:
    head = migrate.head_revision()
    assert f"from an empty database to revision {head}" in ok("db", "upgrade", "--db", db).stdout
    assert Path(db).exists()
    assert f"up to date (revision {head}" in ok("db", "upgrade", "--db", db).stdout


def test_the_default_database_lives_in_keyswap_data_dir_with_its_secret(tmp_path: Path) -> None:
    env = {"KEYSWAP_DATA_DIR": str(tmp_path / "data")}
    ok("consumers", "create", "acme", env=env)
    ok("keys", "create", "acme", env=env)
    assert sorted(
        p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(("-wal", "-shm"))
    ) == [
        "keyswap.db",
        "keyswap.db.secret",
    ]


def test_xdg_data_home_is_honoured_and_keyswap_db_overrides_it(tmp_path: Path) -> None:
    ok("consumers", "create", "acme", env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert (tmp_path / "xdg" / "keyswap" / "keyswap.db").exists()
    other = tmp_path / "other.db"
    ok("db", "upgrade", env={"XDG_DATA_HOME": str(tmp_path / "xdg"), "KEYSWAP_DB": str(other)})
    assert other.exists()


def test_help_says_where_the_database_is(db: str) -> None:
    help_text = " ".join(ok("keys", "create", "--help").stdout.split())
    assert "$KEYSWAP_DB" in help_text
    assert "~/.local/share/keyswap" in help_text
    assert "$XDG_DATA_HOME/keyswap" in help_text
    assert ".secret beside" in help_text


def test_a_postgres_url_without_a_secret_is_a_clear_error(tmp_path: Path) -> None:
    result = run("keys", "create", "acme", "--db", "sqlite://")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: the database sqlite:// is not a SQLite file, so there is no secret file beside it: "
        "set KEYSWAP_SECRET or pass --secret-file"
    )


# -- a database that is not there ------------------------------------------------------------------------

# Commands that only read, or act on consumers and keys that must already exist.
NEEDS_A_DATABASE = [
    ["consumers", "list"],
    ["consumers", "set-metadata", "acme", "{}"],
    ["consumers", "set-limit", "acme", "--rate", "10/s"],
    ["consumers", "delete", "acme", "--yes"],
    ["keys", "list"],
    ["keys", "create", "acme"],
    ["keys", "revoke", "key_x"],
    ["keys", "roll", "key_x"],
    ["signing-keys", "list"],
    ["signing-keys", "prune"],
    ["db", "status"],
]
# Commands that may create the database file (in a directory that exists).
CREATE_A_DATABASE = [
    ["consumers", "create", "acme"],
    ["signing-keys", "rotate"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("args", NEEDS_A_DATABASE, ids=" ".join)
def test_commands_on_existing_data_never_create_a_database(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "keyswap.db"
    assert fails(*args, "--db", str(missing)) == f"Error: no database at {missing}"
    assert list(tmp_path.iterdir()) == []
    in_no_dir = tmp_path / "typo" / "x.db"
    assert fails(*args, "--db", str(in_no_dir)) == f"Error: no database at {in_no_dir}"
    assert list(tmp_path.iterdir()) == []


def test_the_default_database_is_not_created_by_a_listing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("consumers", "list", env={"KEYSWAP_DATA_DIR": str(data)})
    assert result.exit_code == 1
    assert result.stderr == f"Error: no database at {data / 'keyswap.db'}\n"
    assert not data.exists()


@pytest.mark.parametrize("args", CREATE_A_DATABASE, ids=" ".join)
def test_a_named_database_in_a_missing_directory_is_an_error(
    tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "typo" / "x.db"
    expected = (
        f"Error: cannot create the database {path}: the directory {path.parent} does not exist"
    )
    assert fails(*args, "--db", str(path)) == expected
    result = run(*args, env={"KEYSWAP_DB": str(path)})
    assert result.exit_code == 1
    assert result.stderr == expected + "\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", CREATE_A_DATABASE, ids=" ".join)
def test_writing_commands_create_a_named_file_in_an_existing_directory(
    tmp_path: Path, args: list[str]
) -> None:
    ok(*args, "--db", str(tmp_path / "new.db"))
    assert (tmp_path / "new.db").is_file()


# -- JSON output ----------------------------------------------------------------------------------------


def test_every_result_can_be_printed_as_json(db: str) -> None:
    consumer = as_json(ok("consumers", "create", "acme", "--json", "--db", db))
    assert set(consumer) == {
        "id",
        "name",
        "metadata",
        "created_at",
        "rate_limit",
        "scopes",
        "max_connections",
        "leak_policy",
        "quota",
        "credits",
        "credits_refill",
        "credits_set_at",
    }
    limited = as_json(ok("consumers", "set-limit", "acme", "--rate", "10/s", "--json", "--db", db))
    assert limited["rate_limit"] == "10/1s"
    unlimited = as_json(
        ok("consumers", "set-limit", "acme", "--rate", "unlimited", "--json", "--db", db)
    )
    assert unlimited["rate_limit"] == "unlimited"
    default = as_json(
        ok("consumers", "set-limit", "acme", "--rate", "default", "--json", "--db", db)
    )
    assert default["rate_limit"] is None
    updated = as_json(ok("consumers", "set-metadata", "acme", '{"a":1}', "--json", "--db", db))
    assert updated["metadata"] == {"a": 1}

    key = as_json(ok("keys", "create", "acme", "--json", "--db", db))
    revoked = as_json(ok("keys", "revoke", key["id"], "--json", "--db", db))
    assert revoked["id"] == key["id"]
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    assert set(revoked) == set(as_json(ok("keys", "list", "--json", "--db", db))[0])
    assert key["key"] not in json.dumps(revoked)

    ok("keys", "create", "acme", "--db", db)
    deleted = as_json(ok("consumers", "delete", "acme", "--yes", "--json", "--db", db))
    assert deleted == {"deleted": "acme", "api_keys_deleted": 2}


def test_db_upgrade_and_signing_keys_prune_print_json(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    first = as_json(ok("db", "upgrade", "--json", "--db", db))
    assert first == {
        "database": f"sqlite:///{db}",
        "upgraded": True,
        "from_revision": None,
        "revision": migrate.head_revision(),
        "schema_version": SCHEMA_VERSION,
    }
    again = as_json(ok("db", "upgrade", "--json", "--db", db))
    assert again["upgraded"] is False
    assert again["revision"] == migrate.head_revision()

    assert as_json(ok("signing-keys", "prune", "--json", "--db", db)) == {"pruned": []}
    ok("signing-keys", "rotate", "--alg", "ES256", "--db", db)
    ok("signing-keys", "rotate", "--force", "--db", db)
    retired = [
        k["kid"]
        for k in as_json(ok("signing-keys", "list", "--json", "--db", db))
        if k["state"] == "retired"
    ]
    pruned = ok(
        "signing-keys", "prune", "--token-ttl", "0", "--cache-margin", "0", "--json", "--db", db
    )
    assert as_json(pruned) == {"pruned": retired}


# -- consumers delete asks first ------------------------------------------------------------------------


def test_delete_without_a_terminal_needs_yes(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    line = fails("consumers", "delete", "acme", "--db", db)
    assert line == (
        "Error: not deleting consumer 'acme' without confirmation: pass --yes (no terminal to ask on)"
    )
    assert [c["name"] for c in as_json(ok("consumers", "list", "--json", "--db", db))] == ["acme"]
    assert "Deleted consumer 'acme'" in ok("consumers", "delete", "acme", "-y", "--db", db).stdout


def _delete_on_a_terminal(db: str, answer: bytes) -> tuple[int, str]:
    """Run `keyswap consumers delete acme` with a real pseudo-terminal as stdin and answer it."""
    import pty

    executable = Path(sys.executable).parent / "keyswap"
    main_fd, terminal_fd = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    try:
        process = subprocess.Popen(
            [str(executable), "consumers", "delete", "acme", "--db", db],
            stdin=terminal_fd,
            stdout=subprocess.PIPE,
            stderr=terminal_fd,
            env=env,
        )
        os.close(terminal_fd)
        shown = b""
        deadline = time.monotonic() + 30
        while b"[y/N]" not in shown:
            ready, _, _ = select.select([main_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                process.kill()
                raise AssertionError(f"no confirmation prompt: {shown!r}")
            chunk = os.read(main_fd, 1024)
            assert chunk, shown
            shown += chunk
        os.write(main_fd, answer + b"\n")
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(main_fd)
    return process.returncode, shown.decode() + stdout.decode()


@pytest.mark.parametrize("answer", [b"n", b""])
def test_delete_on_a_terminal_keeps_the_consumer_unless_confirmed(db: str, answer: bytes) -> None:
    ok("consumers", "create", "acme", "--db", db)
    ok("keys", "create", "acme", "--db", db)
    code, output = _delete_on_a_terminal(db, answer)
    assert code == 1
    assert "Delete consumer 'acme' and its 1 API key(s)? They stop working at once." in output
    assert [c["name"] for c in as_json(ok("consumers", "list", "--json", "--db", db))] == ["acme"]


def test_delete_on_a_terminal_deletes_when_confirmed(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    code, output = _delete_on_a_terminal(db, b"y")
    assert code == 0, output
    assert "Deleted consumer 'acme' and 0 API key(s)." in output
    assert as_json(ok("consumers", "list", "--json", "--db", db)) == []


# -- the real entry point -------------------------------------------------------------------------------


def test_the_installed_keyswap_command_manages_consumers_and_keys(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "keyswap"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["KEYSWAP_DATA_DIR"] = str(tmp_path)

    def keyswap(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(executable), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    created = keyswap("consumers", "create", "acme", "--metadata", '{"tier":"gold"}')
    assert created.returncode == 0, created.stderr
    key = keyswap("keys", "create", "acme", "--json")
    assert key.returncode == 0, key.stderr
    issued = json.loads(key.stdout)
    assert set(issued) >= {"id", "key"}
    assert authenticate(str(tmp_path / "keyswap.db"), issued["key"]) == "acme"
    duplicate = keyswap("consumers", "create", "acme")
    assert duplicate.returncode == 1
    assert duplicate.stderr == "Error: consumer 'acme' already exists\n"
    assert duplicate.stdout == ""


def test_set_limit_connections_stores_the_consumer_cap(db: str) -> None:
    ok("consumers", "create", "acme", "--db", db)
    capped = as_json(
        ok("consumers", "set-limit", "acme", "--connections", "3", "--json", "--db", db)
    )
    assert capped["max_connections"] == 3
    assert capped["rate_limit"] is None
    both = as_json(
        ok(
            "consumers",
            "set-limit",
            "acme",
            "--rate",
            "10/s",
            "--connections",
            "default",
            "--json",
            "--db",
            db,
        )
    )
    assert both["max_connections"] is None
    assert both["rate_limit"] == "10/1s"
    text = ok("consumers", "set-limit", "acme", "--connections", "7", "--db", db).stdout
    assert "7 requests in flight" in text
    for bad in (["--connections", "0"], ["--connections", "many"], []):
        result = run("consumers", "set-limit", "acme", *bad, "--db", db)
        assert result.exit_code == 2, result.output
