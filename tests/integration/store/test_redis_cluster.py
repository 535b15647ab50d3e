"""Redis Cluster: the harness itself (a 3-master, 3-replica cluster forms, fails over and reshards),
and the product's key layout on it (partition groups spread over the masters, read back merged).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from stream.devtools.synthetic_crm import SimConfig, generate
from stream.exporter.collector import kpi_samples
from stream.store import Keys, ReadCache, read_at_risk, read_snapshot
from stream.store.connection import async_client, sync_client
from tests.support.cli import crm_kpi
from tests.support.config import clean_settings
from tests.support.redis_cluster import RedisCluster
from tests.support.replay import Replay


def test_a_cluster_fails_over_and_reshards_without_losing_acknowledged_writes() -> None:
    with RedisCluster(masters=3, replicas=1) as cluster:
        client = ClusterClient.from_url(cluster.url)
        try:
            keys = [f"{{slot{i}}}:k" for i in range(200)]  # spread over many slots
            for i, key in enumerate(keys):
                client.set(key, i)
                client.wait(1, 2000)  # the replica has it before the master dies
            masters = cluster.master_ports()
            assert len(masters) == 3
            cluster.kill(masters[0])
            cluster.wait_failover()
            assert masters[0] not in cluster.master_ports()  # a replica was promoted
            client = ClusterClient.from_url(cluster.url)
            assert [int(client.get(k)) for k in keys] == list(range(200))
            cluster.reshard(500)
            cluster.wait_healthy()
            assert [int(client.get(k)) for k in keys] == list(range(200))
        finally:
            client.close()


def test_keys_of_different_slots_in_one_script_are_refused() -> None:
    """What the product's key layout must avoid: a Lua call whose keys span slots."""
    with RedisCluster(masters=3) as cluster:
        script = "return redis.call('MGET', KEYS[1], KEYS[2])"
        client = ClusterClient.from_url(cluster.url)
        try:
            assert client.eval(script, 2, "{a}:x", "{a}:y") == [None, None]
        finally:
            client.close()
        node = cluster.node(cluster.master_ports()[0]).client()
        with pytest.raises(redis.ResponseError, match="same slot"):  # the server's CROSSSLOT error
            node.eval(script, 2, "{a}:x", "{b}:y")


async def test_a_stream_spread_over_partition_groups_reads_the_same_on_a_cluster_and_on_one_redis(
    redis_url: str, prefix: str
) -> None:
    """The product's layout: 12 partition groups, each one slot, spread over 3 masters.

    The same simulated CRM written as one group on a single Redis, as 12 groups on the
    same Redis, and as 12 groups on a cluster gives the same KPI series and at-risk list
    at every step: counters summed, distinct members united, sorted-set stats combined.
    """
    end = time.time()
    start = end - 2 * 86400
    events = list(generate(SimConfig(seed=4, customers=400), datetime.fromtimestamp(start, UTC), duration_s=2 * 86400))
    on_one = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    split = clean_settings(redis_url=redis_url, redis_key_prefix=prefix + "s")
    with RedisCluster(masters=3, replicas=1) as cluster:
        spread = clean_settings(redis_url=cluster.url, redis_key_prefix=prefix, redis_cluster=True)
        replays = [
            Replay(async_client(on_one), sync_client(on_one), on_one),
            Replay(async_client(split), sync_client(split), split, partitions=12),
            Replay(async_client(spread), sync_client(spread), spread, partitions=12),
        ]
        caches = [ReadCache() for _ in replays]
        try:
            steps = 8
            pending = iter(events)
            nxt = next(pending, None)
            for i in range(steps):
                now = start + (end - start) * (i + 1) / steps
                batch = []
                while nxt is not None and datetime.fromisoformat(nxt["occurred_at"]).timestamp() <= now:
                    batch.append(nxt)
                    nxt = next(pending, None)
                for r in replays:
                    await r.apply(batch, now)
                series = [_series(r, now, c) for r, c in zip(replays, caches, strict=True)]
                assert series[0] and series[1] == series[0] and series[2] == series[0], i
                risk = [read_at_risk(r.reader, r.keys, now) for r in replays]
                assert risk[1] == risk[0] and risk[2] == risk[0], i
                # A fresh reader (no cache) of the cluster reads the same.
                assert _series(replays[2], now, None) == series[0]
            assert sum(replays[0].processed.values()) == len(events)
            # The groups really are spread: the masters each hold some of them.
            # The commands read the cluster as the exporter does.
            envs = [
                {"CRM_KPI_REDIS_URL": r.settings.redis_url, "CRM_KPI_REDIS_KEY_PREFIX": r.settings.redis_key_prefix}
                for r in (replays[0], replays[2])
            ]
            envs[1]["CRM_KPI_REDIS_CLUSTER"] = "true"
            runs = [crm_kpi(env, "at-risk", "--json") for env in envs]
            assert all(run.code == 0 for run in runs), [run.stderr for run in runs]
            assert [r["customer_id"] for r in json.loads(runs[1].stdout)] == [
                r["customer_id"] for r in json.loads(runs[0].stdout)
            ]
            kpis = crm_kpi(envs[1], "kpis", "--json")
            assert kpis.code == 0 and json.loads(kpis.stdout), kpis.stderr
            reader = replays[2].reader
            assert isinstance(reader, ClusterClient)
            assert len({reader.get_node_from_key(Keys(prefix).group(g).offsets).port for g in range(12)}) == 3
        finally:
            for r in replays:
                await r.client.aclose()
                r.reader.close()


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _series(replay: Replay, now: float, cache: ReadCache | None) -> Series:
    s = replay.settings
    snap = read_snapshot(replay.reader, replay.keys, replay.windows, s.kpi_config(), now, s.max_future_skew, cache)
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in kpi_samples(snap)}


def test_cluster_mode_against_a_redis_without_it_fails_in_one_line(redis_url: str, prefix: str) -> None:
    run = crm_kpi(
        {"CRM_KPI_REDIS_URL": redis_url, "CRM_KPI_REDIS_KEY_PREFIX": prefix, "CRM_KPI_REDIS_CLUSTER": "true"}, "kpis"
    )
    assert run.code != 0
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Cluster" in run.stderr or "cluster" in run.stderr, run.stderr


def test_cluster_mode_refuses_a_unix_socket_url_in_one_line() -> None:
    run = crm_kpi({"CRM_KPI_REDIS_URL": "unix:///tmp/redis.sock", "CRM_KPI_REDIS_CLUSTER": "true"}, "kpis")
    assert run.code != 0
    assert run.stderr.strip().splitlines() == [
        "crm-kpi: invalid settings: CRM_KPI_REDIS_CLUSTER=true needs a redis:// or rediss:// URL of one cluster node"
    ], run.stderr


def test_more_startup_nodes_let_a_client_start_while_the_urls_node_is_down(prefix: str) -> None:
    """CRM_KPI_REDIS_URL's node down (here: a port nothing listens on): with
    CRM_KPI_REDIS_CLUSTER_NODES naming another node the command loads the slot map from it;
    without, it fails in one line naming the URL's node."""
    from stream.devtools.servers import free_port

    with RedisCluster(masters=3) as cluster:
        down = f"127.0.0.1:{free_port()}"
        live = cluster.node(cluster.master_ports()[1]).address
        env = {"CRM_KPI_REDIS_URL": f"redis://{down}/0", "CRM_KPI_REDIS_KEY_PREFIX": prefix}
        env["CRM_KPI_REDIS_CLUSTER"] = "true"
        alone = crm_kpi(env, "kpis")
        assert alone.code != 0
        assert len(alone.stderr.strip().splitlines()) == 1, alone.stderr
        assert down in alone.stderr, alone.stderr
        seeded = crm_kpi({**env, "CRM_KPI_REDIS_CLUSTER_NODES": f"127.0.0.1:{free_port()}, {live}"}, "kpis")
        assert seeded.code == 0, seeded.stderr
        assert seeded.stdout.splitlines()[:2] == ["metric\tlabels\twindow\tvalue", "crm_deals_won\t-\t1h\t0.0"]


@pytest.mark.parametrize(
    ("nodes", "cluster", "message"),
    [
        ("redis-2:6379", "false", "CRM_KPI_REDIS_CLUSTER_NODES is set but CRM_KPI_REDIS_CLUSTER is not true"),
        ("redis-2", "true", "CRM_KPI_REDIS_CLUSTER_NODES: 'redis-2' is not host:port (e.g. redis-2:6379)"),
        ("redis-2:99999", "true", "CRM_KPI_REDIS_CLUSTER_NODES: 'redis-2:99999' is not host:port (e.g. redis-2:6379)"),
    ],
)
def test_bad_startup_nodes_are_refused_in_one_line(nodes: str, cluster: str, message: str) -> None:
    env = {"CRM_KPI_REDIS_CLUSTER_NODES": nodes, "CRM_KPI_REDIS_CLUSTER": cluster}
    run = crm_kpi({"CRM_KPI_REDIS_URL": "redis://127.0.0.1:1/0", **env}, "kpis")
    assert run.code == 2, run.stderr
    assert run.stderr.strip().splitlines() == [f"crm-kpi: invalid settings: {message}"], run.stderr
