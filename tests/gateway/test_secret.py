from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from keyswap.errors import ConfigError
from keyswap.gateway.secret import ServerSecret, check_secret, default_secret_file, load_secret
from keyswap.store import Store
from tests.support.gateway_state import SECRET_TEXT, db_url


def test_a_sqlite_database_gets_a_generated_secret_file_beside_it_with_mode_0600(
    tmp_path: Path,
) -> None:
    url = db_url(tmp_path)
    first = load_secret(url, env={})
    path = tmp_path / "keyswap.db.secret"
    assert default_secret_file(url) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) >= 43
    assert load_secret(url, env={}).fingerprint == first.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["keyswap.db.secret"]  # no temporary left


def test_a_plain_database_path_gets_its_secret_file_beside_it_too(tmp_path: Path) -> None:
    load_secret(str(tmp_path / "plain.db"), env={})
    assert (tmp_path / "plain.db.secret").exists()


def test_the_secret_file_is_created_with_its_directory(tmp_path: Path) -> None:
    load_secret(db_url(tmp_path / "new" / "dir"), env={})
    assert (tmp_path / "new" / "dir" / "keyswap.db.secret").exists()
    assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700


def test_keyswap_secret_wins_over_the_file_beside_the_database(tmp_path: Path) -> None:
    loaded = load_secret(db_url(tmp_path), env={"KEYSWAP_SECRET": SECRET_TEXT})
    assert loaded.fingerprint == ServerSecret(SECRET_TEXT).fingerprint
    assert not (tmp_path / "keyswap.db.secret").exists()


def test_an_explicit_secret_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "custom.secret"
    path.write_text(SECRET_TEXT + "\n")
    path.chmod(0o600)
    env = {"KEYSWAP_SECRET": "another-secret-" + "y" * 40}
    loaded = load_secret("postgresql+psycopg://db/keyswap", secret_file=path, env=env)
    assert loaded.fingerprint == ServerSecret(SECRET_TEXT).fingerprint


def test_keyswap_secret_file_is_used_and_created_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "from-env.secret"
    loaded = load_secret("sqlite://", env={"KEYSWAP_SECRET_FILE": str(path)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert loaded.fingerprint == ServerSecret(path.read_text().strip()).fingerprint


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg://u:hunter2@db/keyswap"])
def test_a_database_that_is_not_a_sqlite_file_needs_an_explicit_secret(url: str) -> None:
    with pytest.raises(ConfigError, match="set KEYSWAP_SECRET or pass --secret-file") as caught:
        load_secret(url, env={})
    assert "hunter2" not in str(caught.value)


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_secret(db_url(tmp_path), env={"KEYSWAP_SECRET": "too-short"})


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyswap.db.secret"
    path.write_text(SECRET_TEXT)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret(db_url(tmp_path), env={})
    path.chmod(0o640)
    assert (
        load_secret(db_url(tmp_path), env={}).fingerprint == ServerSecret(SECRET_TEXT).fingerprint
    )


def test_a_secret_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.secret").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_secret("sqlite://", secret_file=tmp_path / "dir.secret", env={})


def test_processes_creating_the_secret_at_once_all_end_up_with_the_same_one(
    tmp_path: Path,
) -> None:
    url, results = db_url(tmp_path), []
    barrier = threading.Barrier(6)

    def load() -> None:
        barrier.wait()
        results.append(load_secret(url, env={}).fingerprint)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert len(set(results)) == 1


def test_subkeys_are_independent_and_the_secret_is_never_shown() -> None:
    loaded = ServerSecret(SECRET_TEXT)
    keys = {
        loaded.api_key_mac_key,
        loaded.signing_key_encryption_key,
        bytes.fromhex(loaded.fingerprint),
    }
    assert len(keys) == 3
    assert all(len(key) == 32 for key in keys)
    assert SECRET_TEXT.encode() not in keys
    assert SECRET_TEXT not in repr(loaded)
    assert not hasattr(loaded, "__dict__")


def test_a_database_refuses_a_different_secret_than_the_one_it_was_set_up_with(
    tmp_path: Path,
) -> None:
    store = Store(db_url(tmp_path))
    try:
        check_secret(store, ServerSecret(SECRET_TEXT))
        check_secret(store, ServerSecret(SECRET_TEXT))
        with pytest.raises(ConfigError, match="different server secret"):
            check_secret(store, ServerSecret.generate())
    finally:
        store.close()


def test_the_umask_cannot_widen_the_secret_file_mode(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_secret(db_url(tmp_path), env={})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keyswap.db.secret").stat().st_mode) == 0o600
