"""The log probe on a real broker: the record at each asked offset, over many partitions at once.

A worker's resync asks for one record in each of its partitions (108 with 8 event topics and the
repartition topic at 12 partitions). A fetch answer may leave partitions out (cut at its size
limit; Tansu also leaves some out of an answer to many partitions), which must never read as "no
record there": that verdict pauses the partition as a replaced log.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.kafka.logs import Fingerprint, LogProbe

PARTITIONS = 108


async def test_every_partition_asked_at_once_gives_its_record(kafka_bootstrap: str, prefix: str) -> None:
    topic = f"{prefix}.probe"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value=f"{p}:{i}:".encode() + b"x" * 300, key=str(i).encode(), partition=p)
            for i in range(200)
            for p in range(PARTITIONS)
        ]
        for done in sent:
            await done
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    # What a worker recorded: the fingerprint of each partition's record at offset 0 and at 150.
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    truth: dict[tuple[TopicPartition, int], Fingerprint] = {}
    try:
        reader.assign(tps)
        for tp in tps:
            reader.seek(tp, 0)
        while len(truth) < 2 * PARTITIONS:
            for tp, records in (await reader.getmany(timeout_ms=500)).items():
                for r in records:
                    if r.offset in (0, 150):
                        truth[(tp, r.offset)] = Fingerprint.of(r)
    finally:
        await reader.stop()
    probe = LogProbe({"bootstrap_servers": kafka_bootstrap})
    await probe.start()
    try:
        for offset in (0, 150):
            views = await probe.inspect({tp: offset for tp in tps})
            assert {tp: views[tp].record for tp in tps} == {tp: truth[(tp, offset)] for tp in tps}
            assert all(views[tp].end == 200 and views[tp].fetched for tp in tps)
    finally:
        await probe.stop()
