"""requirements/dev.lock pins the whole development environment, and pyproject.toml stays open for users."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.lock"
TOOLS = ROOT / "requirements" / "tools.in"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _locked() -> dict[str, list[tuple[Version, str | None, int]]]:
    """name -> [(version, marker, number of hashes)] for every pin in the lock."""
    pins: dict[str, list[tuple[Version, str | None, int]]] = {}
    current: list[tuple[Version, str | None, int]] | None = None
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        match = _PIN.match(line)
        if match:
            name, version, marker = match.groups()
            current = pins.setdefault(canonicalize_name(name), [])
            current.append((Version(version), marker, 0))
        elif line.startswith("--hash=sha256:") and current:
            version, marker, count = current[-1]
            current[-1] = (version, marker, count + 1)
    return pins


def _wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for name in extras:
        wanted += [Requirement(text) for text in extras[name]]
    for line in TOOLS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            wanted.append(Requirement(line))
    return [r for r in wanted if canonicalize_name(r.name) != "keyswap"]


def _applies(marker: str | None, python: str) -> bool:
    if marker is None:
        return True
    from packaging.markers import Marker

    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(python_version=python, python_full_version=f"{python}.0")
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix")
    env.update(platform_machine="x86_64", implementation_name="cpython")
    env.update(platform_python_implementation="CPython")
    return Marker(marker).evaluate(env)


def test_every_locked_package_is_pinned_with_hashes() -> None:
    pins = _locked()
    assert len(pins) > 40
    unhashed = [name for name, entries in pins.items() for (_, _, n) in entries if n == 0]
    assert unhashed == []


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_the_lock_satisfies_every_requirement_of_pyproject_and_tools(python: str) -> None:
    """A dependency added to pyproject.toml without `scripts/lock` fails here (and in `pip check`)."""
    pins = _locked()
    problems = []
    for requirement in _wanted():
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": python}
        ):
            continue
        entries = [
            version
            for version, marker, _ in pins.get(canonicalize_name(requirement.name), [])
            if _applies(marker, python)
        ]
        if len(entries) != 1 or not requirement.specifier.contains(entries[0], prereleases=True):
            problems.append(f"{requirement} (locked: {[str(v) for v in entries]})")
    assert problems == []


def test_pyproject_keeps_ranges_open_for_users() -> None:
    """Users install keyswap beside their own packages: no exact pins or upper caps in the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    closed = [
        t
        for t in texts
        if any(s.operator in {"==", "===", "<", "<=", "~="} for s in Requirement(t).specifier)
    ]
    assert closed == []
