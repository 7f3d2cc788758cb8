# Sourced by scripts/test, scripts/demo and scripts/lock: make .venv match requirements/dev.lock.
#
# The development and test environment is pinned: requirements/dev.lock lists every package of
# keyswap[all,dev] plus the tools (pip, setuptools, build, twine, uv) at one version each, with their
# hashes, and pip installs exactly that (--require-hashes). keyswap itself is installed editable on top,
# without build isolation (setuptools comes from the lock too), so nothing unpinned is fetched.
#
# Reinstalls only when the lock, pyproject.toml or the Python changed (a stamp in the venv records what
# was installed). KEYSWAP_DEPS=latest uses .venv-latest instead and installs the newest releases that
# pyproject.toml allows, ignoring the lock: the deliberate way to try an upgrade before `scripts/lock
# --upgrade`.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Error: keyswap needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1 || echo missing)); set PYTHON=python3.X" >&2
  exit 1
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

_pip() { "$VENV/bin/python" -m pip "$@"; }

keyswap_venv() {
  local mode=${KEYSWAP_DEPS:-locked}
  case "$mode" in
    locked) VENV=.venv ;;
    latest) VENV=.venv-latest ;;
    *) echo "Error: KEYSWAP_DEPS must be 'locked' or 'latest', not '$mode'" >&2; exit 2 ;;
  esac
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV ..." >&2
    "$PY" -m venv "$VENV"
  fi
  local want
  want=$( { "$VENV/bin/python" -VV; cat pyproject.toml;
            if [ "$mode" = locked ]; then cat requirements/dev.lock; else date -u +%F; fi; } \
          | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ "$(cat "$VENV/.keyswap-installed" 2>/dev/null || true)" = "$want" ]; then
    return 0
  fi
  echo "Installing keyswap's $mode environment into $VENV (once; again only when it changes) ..." >&2
  if [ "$mode" = locked ]; then
    _pip install -q --require-hashes --no-deps -r requirements/dev.lock
    _pip install -q --no-deps --no-build-isolation -e .
    # Anything installed that the lock does not list (e.g. left from an older lock) would make the
    # result depend on the machine's history: report it.
    _pip check >/dev/null || { _pip check >&2; exit 1; }
  else
    _pip install -q --upgrade pip
    _pip install -q --upgrade --upgrade-strategy eager -e '.[all,dev]'
    _pip list --format=freeze >&2
  fi
  echo "$want" > "$VENV/.keyswap-installed"
}
