#!/usr/bin/env bash
# One-shot, in the Kafka container's network namespace (docker-compose.secure.yml): creates the
# SCRAM-SHA-512 users and exactly the ACLs of docs/security.md, through the broker's loopback-only
# listener (127.0.0.1:9091, whose anonymous principal is the only super user). Idempotent.
set -euo pipefail
bin=/opt/kafka/bin
bootstrap=127.0.0.1:9091
secrets=/run/secrets

until "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$bootstrap" >/dev/null 2>&1; do sleep 2; done

for user in admin worker producer; do
  "$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" --alter --entity-type users --entity-name "crm-kpi-$user" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$(cat "$secrets/kafka-$user")]" >/dev/null
done

acl() { "$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" --add "$@" >/dev/null; }
# The worker: read the event topics and commit in its group, write the dead-letter and repartition topics.
acl --allow-principal User:crm-kpi-worker --operation Read --operation Describe --topic crm. --resource-pattern-type prefixed
acl --allow-principal User:crm-kpi-worker --operation Read --group crm-kpi-worker
acl --allow-principal User:crm-kpi-worker --operation Write --operation Describe --topic crm.dead-letter
acl --allow-principal User:crm-kpi-worker --operation Write --operation Describe --topic crm.repartition
# `crm-kpi topics create`.
acl --allow-principal User:crm-kpi-admin --operation Create --operation Describe --topic crm. --resource-pattern-type prefixed
# Producers, `crm-kpi publish` and `crm-kpi simulate`.
acl --allow-principal User:crm-kpi-producer --operation Write --operation Describe --topic crm. --resource-pattern-type prefixed
echo "kafka-init: SCRAM users and ACLs in place"
