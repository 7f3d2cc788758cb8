"""`keyswap demo` as a real subprocess on free ports: the printed curl works, twice, and Ctrl-C stops it."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keyswap.store import Store
from tests.support.asgi_server import free_port

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))
_CURL = re.compile(r"curl -H 'Authorization: Bearer (\S+)' (http://127\.0\.0\.1:\d+/hello)")
_ADMIN_CURL = re.compile(
    r"curl -H 'Authorization: Bearer (ksadm_\S+)' (http://127\.0\.0\.1:\d+)/v1/consumers"
)
_PORTAL_LINK = re.compile(r"(http://127\.0\.0\.1:\d+)(/portal/signin/link\?token=kspl_\S+)")


@dataclass
class Demo:
    process: subprocess.Popen[str]
    key: str
    url: str
    output: list[str]
    admin_token: str = ""
    admin_url: str = ""
    portal_link: tuple[str, str] = ("", "")


@contextmanager
def running_demo(
    data_dir: Path, port: int, origin_port: int, admin_port: int | None = None
) -> Iterator[Demo]:
    process = subprocess.Popen(
        [
            KEYSWAP,
            "demo",
            "--port",
            str(port),
            "--origin-port",
            str(origin_port),
            "--admin-port",
            str(admin_port or free_port()),
            "--portal-port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            "--alg",
            "ES256",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(data_dir.parent)},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        match = admin = portal = None
        while match is None or admin is None or portal is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no curl line:\n" + "".join(output)) from None
            output.append(line)
            match = match or _CURL.search(line)
            admin = admin or _ADMIN_CURL.search(line)
            portal = portal or _PORTAL_LINK.search(line)
        yield Demo(
            process,
            match.group(1),
            match.group(2),
            output,
            admin.group(1),
            admin.group(2),
            (portal.group(1), portal.group(2)),
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        while not lines.empty():
            output.append(lines.get())


def _try(demo: Demo, key: str | None = None) -> httpx.Response:
    return httpx.get(demo.url, headers={"Authorization": f"Bearer {key or demo.key}"}, timeout=10)


def test_the_printed_curl_works_and_a_second_run_prints_a_fresh_key_leaving_the_first_working(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ".keyswap-data"
    port, origin_port = free_port(), free_port()

    with running_demo(data_dir, port, origin_port) as first:
        response = _try(first)
        assert response.status_code == 200, response.text
        claims = response.json()
        assert claims["sub"] == "demo"
        assert claims["metadata"] == {"plan": "free"}
        assert claims["aud"] == f"http://127.0.0.1:{origin_port}"
        assert httpx.get(first.url).status_code == 401
    assert first.process.returncode == 0, "".join(first.output)
    assert "Traceback" not in "".join(first.output)

    with running_demo(data_dir, port, origin_port) as second:
        assert second.key != first.key
        assert _try(second).status_code == 200
        assert _try(second, key=first.key).status_code == 200  # never revoked by a demo
        assert "1 older demo key(s) still work" in "".join(second.output)
    assert second.process.returncode == 0, "".join(second.output)
    assert (data_dir / "keyswap.db").exists()
    assert first.key.encode() not in (data_dir / "keyswap.db").read_bytes()


def test_the_same_port_twice_is_one_error_line(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [
            KEYSWAP,
            "demo",
            "--port",
            str(port),
            "--origin-port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: --port and --origin-port must differ"
    assert not any(tmp_path.iterdir())


def _demo_keys(data_dir: Path) -> list[tuple[str, float | None]]:
    store = Store(str(data_dir / "keyswap.db"), create="none")
    try:
        return [(r.id, r.revoked_at) for r in store.list_api_keys()]
    finally:
        store.close()


def _demo(
    data_dir: Path, port: int, origin_port: int, admin_port: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            KEYSWAP,
            "demo",
            "--port",
            str(port),
            "--origin-port",
            str(origin_port),
            "--admin-port",
            str(admin_port or free_port()),
            "--portal-port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            "--alg",
            "ES256",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(data_dir.parent)},
    )


def test_a_second_demo_on_the_same_ports_fails_and_leaves_the_running_one_alone(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ".keyswap-data"
    port, origin_port = free_port(), free_port()
    with running_demo(data_dir, port, origin_port) as first:
        keys = _demo_keys(data_dir)
        done = _demo(data_dir, port, origin_port)
        assert done.returncode == 1, done.stderr
        assert done.stdout == ""
        assert done.stderr == (
            f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"
        )
        assert _demo_keys(data_dir) == keys  # none revoked, none created
        assert _try(first).status_code == 200


@pytest.mark.parametrize("busy", ["gateway", "origin", "admin"])
def test_a_port_in_use_is_one_error_line_and_changes_no_data(tmp_path: Path, busy: str) -> None:
    data_dir = tmp_path / ".keyswap-data"
    data_dir.mkdir()
    db = str(data_dir / "keyswap.db")
    for args in (["consumers", "create", "demo"], ["keys", "create", "demo"]):
        made = subprocess.run([KEYSWAP, *args, "--db", db], capture_output=True, timeout=60)
        assert made.returncode == 0, made.stderr
    keys = _demo_keys(data_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = {
            "gateway": free_port(),
            "origin": free_port(),
            "admin": free_port(),
            busy: taken_port,
        }
        done = _demo(data_dir, ports["gateway"], ports["origin"], ports["admin"])
    assert done.returncode == 1
    assert (
        done.stderr == f"Error: cannot listen on 127.0.0.1:{taken_port}: address already in use\n"
    )
    assert _demo_keys(data_dir) == keys


def test_a_port_in_use_creates_no_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _demo(tmp_path / "fresh", taken.getsockname()[1], free_port())
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot listen on 127.0.0.1:")
    assert not (tmp_path / "fresh").exists()


def test_the_banner_names_keyswap_as_the_user_can_run_it(tmp_path: Path) -> None:
    """Under scripts/demo, `keyswap` is not on PATH: the banner says .venv/bin/keyswap instead."""
    from keyswap.gateway.demo import _program

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "keyswap"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert _program(".venv/bin/keyswap", path=str(tmp_path / "elsewhere")) == ".venv/bin/keyswap"
    assert _program(str(script), path=str(venv_bin)) == "keyswap"  # the same file is on PATH
    assert _program("keyswap", path="") == "keyswap"
    assert _program("/usr/bin/pytest", path="") == "keyswap"


def test_the_demo_serves_the_admin_api_with_a_fresh_admin_token(tmp_path: Path) -> None:
    data_dir = tmp_path / ".keyswap-data"
    with running_demo(data_dir, free_port(), free_port()) as demo:
        headers = {"Authorization": f"Bearer {demo.admin_token}"}
        listed = httpx.get(demo.admin_url + "/v1/consumers", headers=headers, timeout=10)
        assert listed.status_code == 200, listed.text
        assert [c["name"] for c in listed.json()["items"]] == ["demo"]
        created = httpx.post(
            demo.admin_url + "/v1/consumers/demo/keys", headers=headers, timeout=10
        )
        assert created.status_code == 201
        new_key = created.json()["key"]
        deadline = time.monotonic() + 5
        while _try(demo, key=new_key).status_code != 200:
            assert time.monotonic() < deadline, "the key made through the admin API never worked"
            time.sleep(0.05)
    assert demo.process.returncode == 0, "".join(demo.output)
    assert "Traceback" not in "".join(demo.output)


@pytest.mark.parametrize("admin", ["same-as-gateway", "same-as-origin"])
def test_an_admin_port_equal_to_another_is_a_usage_error(tmp_path: Path, admin: str) -> None:
    port, origin_port = free_port(), free_port()
    admin_port = port if admin == "same-as-gateway" else origin_port
    done = _demo(tmp_path / "d", port, origin_port, admin_port)
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: --admin-port must differ from --port and --origin-port"
    assert not (tmp_path / "d").exists()


_USAGE = re.compile(r"usage demo --since 1h --by minute --db (\S+)")


def test_the_demo_shows_the_demo_consumers_usage(tmp_path: Path) -> None:
    data_dir = tmp_path / ".keyswap-data"
    with running_demo(data_dir, free_port(), free_port()) as demo:
        printed = _USAGE.search("".join(demo.output))
        assert printed is not None, "".join(demo.output)
        for _ in range(3):
            assert _try(demo).status_code == 200
        headers = {"Authorization": f"Bearer {demo.admin_token}"}
        deadline = time.monotonic() + 15
        while True:  # written every 2 s while the demo runs
            body = httpx.get(
                demo.admin_url + "/v1/usage?consumer=demo&by=minute", headers=headers, timeout=10
            ).json()
            if body["total"]["requests"] == 3:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert body["total"]["status_2xx"] == 3
    assert demo.process.returncode == 0, "".join(demo.output)
    result = subprocess.run(
        [KEYSWAP, "usage", "demo", "--since", "1h", "--by", "minute", "--db", printed.group(1)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split()[:3] == ["TOTAL", "3", "3"]


def test_the_demo_serves_the_portal_with_a_sign_in_link(tmp_path: Path) -> None:
    data_dir = tmp_path / ".keyswap-data"
    with running_demo(data_dir, free_port(), free_port()) as demo:
        portal, path = demo.portal_link
        with httpx.Client(base_url=portal, timeout=10) as browser:
            page = browser.get(path)
            assert page.status_code == 200
            fields = dict(
                re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
            )
            assert browser.post("/portal/signin/link", data=fields).status_code == 303
            home = browser.get("/portal/c/demo/")
            assert home.status_code == 200
            assert demo.url.removesuffix("/hello") in home.text
    assert demo.process.returncode == 0, "".join(demo.output)
