#!/usr/bin/env bash
# Validates the deploy files with the real parsers, not with YAML alone:
#   docker-compose.yml               -> docker-compose config -q
#   deploy/prometheus/prometheus.yml -> promtool check config (+ check rules)
#   deploy/alertmanager/...yml       -> amtool check-config
# Installs the tools from Debian when missing (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)

# A compose parser: the v2 plugin if Docker has one, else the standalone command.
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  elif [ -x /usr/libexec/docker/cli-plugins/docker-compose ]; then
    # Debian >= trixie packages Compose v2 as a plugin only; it also runs standalone.
    compose=(/usr/libexec/docker/cli-plugins/docker-compose)
  else
    return 1
  fi
}

need=()
compose_cmd || need+=(docker-compose)          # bookworm: 1.29.2 (python, has `config -q`)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)            # ships promtool
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager) # ships amtool
if [ ${#need[@]} -gt 0 ]; then
  "${as_root[@]}" apt-get update -qq
  for pkg in "${need[@]}"; do
    policy="$(apt-cache policy "$pkg")"   # captured: `| grep -q` would SIGPIPE under pipefail
    if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
      echo "validate-deploy: Debian has no candidate for $pkg here; install it by hand" >&2
      exit 1
    fi
  done
  # We want the tools, not the daemons: keep the packages' services from
  # starting (they would hold :9090/:9093) unless a policy already exists.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
  if [ "$added_policy" -eq 1 ]; then "${as_root[@]}" rm -f /usr/sbin/policy-rc.d; fi
  compose_cmd
fi

echo "== ${compose[*]} config -q"
# Placeholders so the check does not depend on the caller's environment.
GRAFANA_ADMIN_PASSWORD=validate "${compose[@]}" -f docker-compose.yml config -q

# The secured variant names generated files (its secrets): make a throwaway set to check it.
secure_out="$(mktemp -d)"
bash deploy/secure/make-secrets.sh "$secure_out" >/dev/null
secure_compose="$secure_out/docker-compose.secure.yml"
sed "s#\./deploy/secure/generated#$secure_out#g" docker-compose.secure.yml >"$secure_compose"
echo "== ${compose[*]} -f docker-compose.yml -f docker-compose.secure.yml config -q"
GRAFANA_ADMIN_PASSWORD=validate "${compose[@]}" --project-directory . -f docker-compose.yml -f "$secure_compose" config -q

# prometheus.yml names rule files by their path inside the container; check a
# copy pointing at the repo's rules folder so the rules are loaded too.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp" "$secure_out"' EXIT
rules_dir="$PWD/deploy/prometheus/rules"
sed "s#/etc/prometheus/rules/#$rules_dir/#g" deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
if ! grep -q "$rules_dir/" "$tmp/prometheus.yml"; then
  echo "validate-deploy: rule_files no longer under /etc/prometheus/rules/; update this script" >&2
  exit 1
fi
echo "== promtool check config deploy/prometheus/prometheus.yml (rules from $rules_dir)"
promtool check config "$tmp/prometheus.yml"
# The secured config reads the CA and the password from compose secrets.
sed -e "s#/etc/prometheus/rules/#$rules_dir/#g" -e "s#/run/secrets/crm-kpi-ca#$secure_out/ca.crt#g" \
    -e "s#/run/secrets/metrics-password#$secure_out/passwords/metrics#g" \
    deploy/prometheus/prometheus-secure.yml >"$tmp/prometheus-secure.yml"
echo "== promtool check config deploy/prometheus/prometheus-secure.yml"
promtool check config "$tmp/prometheus-secure.yml"

shopt -s nullglob
rule_files=(deploy/prometheus/rules/*.yml)
if [ ${#rule_files[@]} -eq 0 ]; then
  echo "validate-deploy: no rule files in deploy/prometheus/rules/" >&2
  exit 1
fi
echo "== promtool check rules ${rule_files[*]}"
promtool check rules "${rule_files[@]}"

echo "== amtool check-config deploy/alertmanager/alertmanager.yml"
amtool check-config deploy/alertmanager/alertmanager.yml

echo "validate-deploy: OK"
