"""The Redis Cluster harness itself: a 3-master, 3-replica cluster forms, fails over and reshards.

The product's cluster mode builds on it; these tests keep the harness honest.
"""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from tests.support.redis_cluster import RedisCluster


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
