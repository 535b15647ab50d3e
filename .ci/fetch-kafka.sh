#!/usr/bin/env bash
# Fetch the Apache Kafka broker the integration tests run (tests/support/apache_kafka.py):
# the kafka_2.13 jar and its runtime dependencies from Maven Central, as listed in
# .ci/kafka/pom.xml, into .cache/kafka/libs (or $CRM_KPI_TEST_KAFKA_LIBS).
#
# Idempotent: a marker file records the version the directory holds; nothing is
# fetched when it matches the pom. Needs Java 17+ and Maven (mvn) on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

pom=.ci/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n 1)
if [ -z "$version" ]; then
  echo "fetch-kafka: no <kafka.version> in $pom" >&2
  exit 1
fi
libs=${CRM_KPI_TEST_KAFKA_LIBS:-$PWD/.cache/kafka/libs}
marker=$libs/KAFKA_VERSION

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$version" ] && [ -f "$libs/kafka_2.13-$version.jar" ]; then
  echo "fetch-kafka: Apache Kafka $version already in $libs"
  exit 0
fi

# A machine without Java or Maven gets Debian's (bookworm's default JDK is 17).
need_apt=()
command -v java >/dev/null || need_apt+=(default-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "fetch-kafka: install ${need_apt[*]} (Java 17+ and Maven are needed)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Copy into a fresh directory beside the target, then swap it in: an interrupted
# run never leaves a half-filled directory behind a valid marker.
mkdir -p "$(dirname "$libs")"
staging=$(mktemp -d "$(dirname "$libs")/.libs.XXXXXX")
trap 'rm -rf "$staging"' EXIT
# Maven prints its errors on stdout (and stray colour codes even with -q): show them on failure only.
if ! out=$(mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DoutputDirectory="$staging" -DincludeScope=runtime 2>&1); then
  echo "$out" >&2
  echo "fetch-kafka: mvn could not copy Apache Kafka $version's jars" >&2
  exit 1
fi
chmod 755 "$staging"
if [ ! -f "$staging/kafka_2.13-$version.jar" ]; then
  echo "fetch-kafka: kafka_2.13-$version.jar missing after the copy" >&2
  exit 1
fi
echo "$version" >"$staging/KAFKA_VERSION"
rm -rf "$libs"
mv "$staging" "$libs"
trap - EXIT
echo "fetch-kafka: Apache Kafka $version in $libs ($(ls "$libs" | grep -c '\.jar$') jars)"
