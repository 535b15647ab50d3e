#!/usr/bin/env bash
# Credentials for the secured compose stack (docker-compose.secure.yml, docs/security.md),
# written to deploy/secure/generated/ (or the directory given as $1), which git ignores:
#
#   ca.crt, ca.key                     a throwaway CA (keep ca.key offline in real use)
#   kafka/kafka.p12 + kafka-keystore-password, kafka/kafka-jaas.conf
#                                      the broker's TLS keystore (names kafka, localhost) and SASL setup
#   redis/redis.crt, redis/redis.key, redis/users.acl
#                                      Redis's TLS certificate and its ACL users (hashed passwords)
#   metrics/metrics.crt, metrics/metrics.key, metrics/web-config.yml
#                                      the /metrics endpoints (names worker, exporter, lag-exporter), basic auth
#   passwords/<name>                   one password per file: kafka-admin, kafka-worker,
#                                      kafka-producer, redis-worker, redis-exporter, metrics
#
# Existing files are kept (run it again to fill in what is missing). In production put
# your own CA's certificates and your secret store's passwords in the same files.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-generated}"
mkdir -p "$out"/{kafka,redis,metrics,passwords}
umask 077

password() {  # password NAME: a random one, made once
  local file="$out/passwords/$1"
  [ -s "$file" ] || openssl rand -hex 16 | tr -d '\n' >"$file"
  cat "$file"
}

[ -s "$out/ca.key" ] || {
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=crm-kpi compose CA" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
}

issue() {  # issue DIR NAME SANS: a server certificate signed by the CA
  local dir="$1" name="$2" sans="$3"
  [ -s "$dir/$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -days 825 \
    -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# Kafka: a PKCS#12 keystore in the SHA1/3DES scheme every Java reads; the image reads its password from files.
issue "$out/kafka" kafka "DNS:kafka,DNS:localhost,IP:127.0.0.1"
keystore_password="$(password kafka-keystore)"
if [ ! -s "$out/kafka/kafka.p12" ]; then
  openssl pkcs12 -export -in "$out/kafka/kafka.crt" -inkey "$out/kafka/kafka.key" -certfile "$out/ca.crt" \
    -name kafka -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 \
    -passout "pass:$keystore_password" -out "$out/kafka/kafka.p12"
fi
printf '%s' "$keystore_password" >"$out/kafka/kafka-keystore-password"
cat >"$out/kafka/kafka-jaas.conf" <<'JAAS'
KafkaServer {
  org.apache.kafka.common.security.scram.ScramLoginModule required;
};
JAAS
for user in admin worker producer; do password "kafka-$user" >/dev/null; done

# Redis: TLS only, the default user off, the two users of docs/security.md (key prefix crm), a PING-only probe.
issue "$out/redis" redis "DNS:redis,DNS:localhost,IP:127.0.0.1"
sha() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
cat >"$out/redis/users.acl" <<ACL
user default off
user healthcheck on nopass resetkeys resetchannels -@all +ping
user crm-kpi-worker on #$(sha "$(password redis-worker)") resetkeys ~{crm:* resetchannels -@all +evalsha +script|load +hmget +smembers +mget +exists +zcard +get +set +hget +hset +hincrby +hdel +sadd +smismember +expireat +zadd +zrem +zremrangebyscore
user crm-kpi-exporter on #$(sha "$(password redis-exporter)") resetkeys %R~{crm:* resetchannels -@all +evalsha_ro +script|load +smembers +mget +hget +hgetall +exists +zcard +zcount +zrange +zrangebyscore
ACL

# The /metrics endpoints: TLS for the names Prometheus checks (server_name), basic auth with a bcrypt hash.
issue "$out/metrics" metrics "DNS:worker,DNS:exporter,DNS:lag-exporter,DNS:localhost,IP:127.0.0.1"
metrics_password="$(password metrics)"
if command -v htpasswd >/dev/null 2>&1; then
  hash="$(htpasswd -nbBC 12 prometheus "$metrics_password" | cut -d: -f2)"
else
  hash="$(python3 -c 'import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(12)).decode())' \
    "$metrics_password")" || { echo "make-secrets: needs htpasswd (apache2-utils) or python3 with bcrypt" >&2; exit 1; }
fi
cat >"$out/metrics/web-config.yml" <<YAML
tls_server_config:
  cert_file: metrics.crt
  key_file: metrics.key
basic_auth_users:
  prometheus: $hash
YAML

# The services run as other users than the one running this script: the files are readable,
# the directory is not listed in git (.gitignore), and nothing here is meant to leave this host.
chmod -R a+rX "$out"
echo "make-secrets: credentials in $(cd "$out" && pwd)"
