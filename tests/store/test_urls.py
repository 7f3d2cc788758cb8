from __future__ import annotations

from pathlib import Path

import pytest

from keyswap.errors import ConfigError
from keyswap.store.urls import (
    data_dir,
    default_database_url,
    display_url,
    normalize_database_url,
    sqlite_file,
)


def test_the_data_dir_prefers_keyswap_data_dir_then_xdg_then_home() -> None:
    env = {"HOME": "/home/u", "XDG_DATA_HOME": "/xdg", "KEYSWAP_DATA_DIR": "/data"}
    assert data_dir(env) == Path("/data")
    del env["KEYSWAP_DATA_DIR"]
    assert data_dir(env) == Path("/xdg/keyswap")
    del env["XDG_DATA_HOME"]
    assert data_dir(env) == Path("/home/u/.local/share/keyswap")


def test_the_default_database_is_keyswap_db_in_the_data_dir_unless_keyswap_db_is_set() -> None:
    assert default_database_url({"KEYSWAP_DATA_DIR": "/data"}) == "sqlite:////data/keyswap.db"
    env = {"KEYSWAP_DATA_DIR": "/data", "KEYSWAP_DB": "postgresql+psycopg://u:p@db/keyswap"}
    assert default_database_url(env) == "postgresql+psycopg://u:p@db/keyswap"


def test_a_plain_path_becomes_an_absolute_sqlite_url(tmp_path: Path) -> None:
    assert normalize_database_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalize_database_url("sqlite:///rel.db") == "sqlite:///rel.db"


@pytest.mark.parametrize("value", ["", "   ", "://no-scheme", "not a url://x"])
def test_an_empty_or_invalid_url_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError):
        normalize_database_url(value)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/keyswap.db", Path("/var/lib/keyswap.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u:p@db/keyswap", None),
    ],
)
def test_only_file_backed_sqlite_urls_have_a_file(url: str, path: Path | None) -> None:
    assert sqlite_file(url) == path


def test_displayed_urls_hide_the_password() -> None:
    shown = display_url("postgresql+psycopg://user:hunter2@db/keyswap")
    assert "hunter2" not in shown
    assert "user" in shown
