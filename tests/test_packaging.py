"""The release artefacts: `python -m build` makes an sdist and a wheel that `twine check` accepts, and the
wheel, installed into a fresh virtual environment, gives a working `keyswap` command."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import keyswap

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist + wheel built from a copy of the source tree (the work tree is left untouched)."""
    base = tmp_path_factory.mktemp("build")
    source = base / "src-copy"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".keyswap-data",
        ),
    )
    out = base / "dist"
    # --no-isolation: the build backend (setuptools) comes from the pinned environment, not the network.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    wheel = _one(dist, f"keyswap-{keyswap.__version__}-py3-none-any.whl")
    sdist = _one(dist, f"keyswap-{keyswap.__version__}.tar.gz")
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2


def test_the_wheel_carries_the_migrations_and_the_type_marker(dist: Path) -> None:
    names = zipfile.ZipFile(_one(dist, "*.whl")).namelist()
    assert "keyswap/py.typed" in names
    assert "keyswap/store/migrations/env.py" in names
    assert "keyswap/store/migrations/versions/0001_initial.py" in names
    # the admin API's /docs page: its own script and stylesheet (Swagger UI comes from its package)
    assert "keyswap/admin/static/keyswap-docs.js" in names
    assert "keyswap/admin/static/keyswap-docs.css" in names
    metadata = email.message_from_bytes(
        zipfile.ZipFile(_one(dist, "*.whl")).read(
            f"keyswap-{keyswap.__version__}.dist-info/METADATA"
        )
    )
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("cryptography") for r in requires)
    # Users get ranges, never the development lock's exact pins.
    assert not [r for r in requires if "==" in r.split(";")[0]]


def test_the_wheel_installed_in_a_fresh_venv_runs_keyswap(dist: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    # This test must not depend on the network: pip (from the test environment) installs only the wheel
    # into the fresh venv, and the venv sees the already-installed third-party packages through a .pth
    # line (a plain path: the editable keyswap in the test environment is not picked up from there).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(_one(dist, "*.whl")),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "zz-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    where = subprocess.run(
        [str(python), "-c", "import keyswap; print(keyswap.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    assert where.startswith(purelib), where  # the wheel's copy, not the work tree's
    script = fresh / "bin" / "keyswap"
    version = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"keyswap, version {keyswap.__version__}"
    demo_help = subprocess.run(
        [str(script), "demo", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert demo_help.returncode == 0, demo_help.stderr
    assert "--origin-port" in demo_help.stdout
