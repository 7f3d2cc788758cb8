"""Several real ``keyswap gateway`` processes on one PostgreSQL and one Redis, acting as one gateway."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from keyswap.cli import main
from keyswap.gateway.apikeys import ApiKeys
from keyswap.gateway.keyring import Keyring
from keyswap.store import Store
from keyswap.verifier import IssuerConfig, Verifier
from keyswap.verifier.jws import parse_compact
from tests.support.cluster import GatewayProcess, gateways, postgres_schema, redis_prefix
from tests.support.gateway_state import SECRET_TEXT, secret
from tests.support.running_gateway import eventually, token_seen_by
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.slow

PUBLIC_URL = (
    "http://gateway.keyswap.test"  # every node publishes the same issuer (one load balancer)
)
ISSUER = PUBLIC_URL + "/__keyswap/issuer"


@dataclass
class Cluster:
    db_url: str
    redis_url: str
    prefix: str
    nodes: list[GatewayProcess]
    upstream: RecordingUpstream
    store: Store
    keys: ApiKeys

    def cli(self, *args: str) -> str:
        env = {"KEYSWAP_SECRET": SECRET_TEXT, "KEYSWAP_REDIS_URL": None}
        result = CliRunner().invoke(main, [*args, "--db", self.db_url], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    def new_key(self, consumer: str = "acme") -> tuple[str, str]:
        record, key = self.keys.create(consumer)
        return record.id, key

    def jwks(self, node: GatewayProcess) -> dict[str, object]:
        response = httpx.get(node.url + "/__keyswap/issuer/.well-known/jwks.json", timeout=5)
        assert response.status_code == 200
        data: dict[str, object] = response.json()
        return data


def get(node: GatewayProcess, key: str, path: str = "/x") -> httpx.Response:
    return httpx.get(node.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def answers(node: GatewayProcess, key: str, status: int) -> Callable[[], bool]:
    """The condition "``node`` answers a request with ``key`` with ``status``", for eventually()."""
    return lambda: get(node, key).status_code == status


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("cluster-logs")
    with postgres_schema() as db_url, redis_prefix() as (redis_url, prefix):
        store = Store(db_url, schema="upgrade")
        store.create_consumer("acme", {"plan": "gold"})
        upstream = RecordingUpstream().start()
        extra = ("--redis", redis_url, "--redis-prefix", prefix, "--public-url", PUBLIC_URL)
        try:
            with gateways(db_url, upstream.url, logs, 2, extra) as nodes:
                keys = ApiKeys(store, secret(), cache_size=0)
                yield Cluster(db_url, redis_url, prefix, nodes, upstream, store, keys)
        finally:
            upstream.stop()
            store.close()


def test_a_key_revoked_through_one_node_is_refused_by_every_node_within_a_second(
    cluster: Cluster,
) -> None:
    key_id, key = cluster.new_key()
    for node in cluster.nodes:
        assert get(node, key).status_code == 200  # cached on every node now
    cluster.cli("keys", "revoke", key_id)
    revoked_at = time.monotonic()
    for node in cluster.nodes:
        eventually(answers(node, key, 401), timeout=1.0)
    assert time.monotonic() - revoked_at < 1.0


def test_a_metadata_change_reaches_every_node_at_once(cluster: Cluster) -> None:
    cluster.store.create_consumer("meta")
    _, key = cluster.new_key("meta")
    for node in cluster.nodes:
        get(node, key)
    cluster.store.set_consumer_metadata("meta", {"tier": "platinum"})
    changed_at = time.monotonic()
    for node in cluster.nodes:

        def upgraded(node: GatewayProcess = node) -> bool:
            get(node, key)
            token = parse_compact(token_seen_by(cluster.upstream), algorithms=frozenset({"ES256"}))
            return bool(token.claims["metadata"] == {"tier": "platinum"})

        eventually(upgraded, timeout=1.0)
    assert time.monotonic() - changed_at < 1.0


def test_every_node_serves_the_same_jwks_and_tokens_from_each_verify_after_a_rotation(
    cluster: Cluster,
) -> None:
    _, key = cluster.new_key()
    before = cluster.jwks(cluster.nodes[0])
    assert cluster.jwks(cluster.nodes[1]) == before
    cluster.cli("signing-keys", "rotate", "--force")
    active = Keyring(cluster.store, secret())
    active.reload()
    new_kid = active.active().kid
    for node in cluster.nodes:

        def rotated(node: GatewayProcess = node) -> bool:
            return cluster.jwks(node) != before

        eventually(rotated, timeout=1.0)
    assert cluster.jwks(cluster.nodes[0]) == cluster.jwks(cluster.nodes[1])
    verifier = Verifier(
        IssuerConfig(
            issuer=ISSUER,
            jwks_url=cluster.nodes[0].url + "/__keyswap/issuer/.well-known/jwks.json",
            audience=cluster.upstream.url,
            algorithms=("ES256",),
        )
    )
    try:
        for node in cluster.nodes:
            assert get(node, key).status_code == 200
            token = token_seen_by(cluster.upstream)
            assert parse_compact(token, algorithms=frozenset({"ES256"})).kid == new_kid
            assert verifier.verify_sync(token)["iss"] == ISSUER
    finally:
        verifier.close()


def test_a_rate_limit_is_shared_by_every_node(cluster: Cluster) -> None:
    cluster.store.create_consumer("metered")
    cluster.cli("consumers", "set-limit", "metered", "--rate", "6/1d")
    _, key = cluster.new_key("metered")
    seen_before = len(cluster.upstream.received)
    statuses = [get(cluster.nodes[i % 2], key).status_code for i in range(12)]
    assert Counter(statuses) == {200: 6, 429: 6}
    assert len(cluster.upstream.received) - seen_before == 6


def test_continuous_traffic_through_both_nodes_loses_nothing_during_a_rotation(
    cluster: Cluster,
) -> None:
    _, key = cluster.new_key()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic(node: GatewayProcess) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(node.url + "/x", headers={"Authorization": f"Bearer {key}"})
                statuses.append(response.status_code)

    threads = [threading.Thread(target=traffic, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(statuses) >= 40)
        Keyring(cluster.store, secret()).rotate()
        done = len(statuses)
        eventually(lambda: len(statuses) >= done + 80)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert Counter(statuses) == {200: len(statuses)}


def _postgres(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=60,
        capture_output=True,
    )


def _postgres_is_back(db_url: str) -> bool:
    try:
        Store(db_url).close()
    except Exception:
        return False
    return True


def test_known_keys_keep_working_while_postgresql_restarts_and_service_recovers(
    cluster: Cluster,
) -> None:
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local PostgreSQL cluster to restart (needs pg_ctlcluster)")
    _, known = cluster.new_key()
    _, unseen = cluster.new_key()
    for node in cluster.nodes:
        assert get(node, known).status_code == 200
    statuses: list[int] = []
    stop = threading.Event()

    def traffic(node: GatewayProcess) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(node.url + "/x", headers={"Authorization": f"Bearer {known}"})
                statuses.append(response.status_code)

    threads = [threading.Thread(target=traffic, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    try:
        try:
            _postgres("stop")
            before = len(statuses)
            outage = [get(node, unseen) for node in cluster.nodes]
            eventually(lambda: len(statuses) >= before + 20)  # known-key traffic, PostgreSQL down
        finally:
            _postgres("start")
        eventually(lambda: _postgres_is_back(cluster.db_url), timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert Counter(statuses) == {200: len(statuses)}  # the known key never failed
    assert [r.status_code for r in outage] == [503, 503]  # unknown to the node: 503, never 401
    assert all(r.headers["retry-after"] == "5" for r in outage)
    # Recovered by itself: new keys work and revocations propagate again, no restart needed.
    for node in cluster.nodes:
        eventually(answers(node, unseen, 200), timeout=10)
    key_id, fresh = cluster.new_key()
    for node in cluster.nodes:
        assert get(node, fresh).status_code == 200
    cluster.store.revoke_api_key(key_id, now=time.time())
    for node in cluster.nodes:
        eventually(answers(node, fresh, 401), timeout=2)
