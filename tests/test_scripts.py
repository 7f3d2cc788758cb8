"""scripts/_venv.sh: the environment of scripts/test, scripts/demo and .ci/run is installed from the lock,
once, and again only when the lock, pyproject.toml or the Python changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path) -> Path:
    """A copy of the files _venv.sh reads, with a .venv whose python records pip calls instead of
    installing (the real interpreter answers everything else)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "requirements").mkdir()
    shutil.copy(ROOT / "scripts" / "_venv.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "requirements" / "dev.lock", tmp_path / "requirements")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        '  echo "$*" >> "$(dirname "$0")/../pip-calls"; exit 0\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return tmp_path


def _ensure(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", ". scripts/_venv.sh && keyswap_venv"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def _pip_calls(project: Path) -> list[str]:
    path = project / ".venv" / "pip-calls"
    return path.read_text().splitlines() if path.exists() else []


def test_installs_from_the_lock_with_hashes_then_keyswap_without_build_isolation(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path)
    done = _ensure(project)
    assert done.returncode == 0, done.stderr
    calls = _pip_calls(project)
    assert calls[0] == "-m pip install -q --require-hashes --no-deps -r requirements/dev.lock"
    assert calls[1] == "-m pip install -q --no-deps --no-build-isolation -e ."
    assert calls[2].startswith("-m pip check")


def test_a_second_run_installs_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert _ensure(project).returncode == 0
    count = len(_pip_calls(project))
    again = _ensure(project)
    assert again.returncode == 0
    assert len(_pip_calls(project)) == count
    assert "Installing" not in again.stderr


@pytest.mark.parametrize("changed", ["pyproject.toml", "requirements/dev.lock"])
def test_a_changed_lock_or_pyproject_reinstalls(tmp_path: Path, changed: str) -> None:
    project = _project(tmp_path)
    assert _ensure(project).returncode == 0
    count = len(_pip_calls(project))
    with (project / changed).open("a") as file:
        file.write("\n# changed\n")
    assert _ensure(project).returncode == 0
    assert len(_pip_calls(project)) > count


def test_latest_mode_uses_its_own_venv_and_ignores_the_lock(tmp_path: Path) -> None:
    project = _project(tmp_path)
    latest = project / ".venv-latest" / "bin"
    latest.mkdir(parents=True)
    shutil.copy(project / ".venv" / "bin" / "python", latest / "python")
    done = _ensure(project, KEYSWAP_DEPS="latest")
    assert done.returncode == 0, done.stderr
    calls = (project / ".venv-latest" / "pip-calls").read_text()
    assert "--upgrade --upgrade-strategy eager -e .[all,dev]" in calls
    assert "dev.lock" not in calls
    assert _pip_calls(project) == []


def test_an_unknown_mode_is_a_usage_error(tmp_path: Path) -> None:
    done = _ensure(_project(tmp_path), KEYSWAP_DEPS="newest")
    assert done.returncode == 2
    assert "KEYSWAP_DEPS must be 'locked' or 'latest'" in done.stderr
