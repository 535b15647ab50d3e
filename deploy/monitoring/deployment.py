"""Where the product runs: how Prometheus labels its targets, where runbooks and Grafana live.

The committed files use the defaults, which match docker-compose.yml and
deploy/prometheus/prometheus.yml. Under Kubernetes or any other scrape config,
generate the files with the target labels Prometheus gives there:

    python -m deploy.monitoring --out DIR --worker-selector 'namespace="crm", app="crm-kpi-worker"' ...
"""

from __future__ import annotations

import re
from dataclasses import Field, dataclass, field, fields

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "EXPORTER_JOB",
    "LAG_EXPORTER_JOB",
    "WORKER_JOB",
    "Deployment",
    "option_name",
    "parse_selector",
]

# Prometheus job names of the compose stack (deploy/prometheus/prometheus.yml).
WORKER_JOB = "crm-kpi-worker"
EXPORTER_JOB = "crm-kpi-exporter"
LAG_EXPORTER_JOB = "crm-kpi-lag-exporter"

_STRING = r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`"
_MATCHER = rf"\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*(?:{_STRING})\s*"
_MATCHERS = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*,?\s*")


def parse_selector(text: str) -> str:
    """PromQL label matchers, as written inside `up{...}`: `job="crm-kpi-worker"`.

    Surrounding braces are dropped; anything but a list of matchers is a ValueError.
    """
    selector = text.strip()
    if selector.startswith("{") and selector.endswith("}"):
        selector = selector[1:-1].strip()
    if not _MATCHERS.fullmatch(selector):
        raise ValueError(f'not a list of PromQL label matchers such as job="crm-kpi-worker": {text!r}')
    if "{{" in selector or "}}" in selector:
        raise ValueError(f"a selector must not contain '{{{{' or '}}}}' (alert templates): {text!r}")
    return selector


@dataclass(frozen=True)
class Deployment:
    """The options of `python -m deploy.monitoring`; the defaults are the compose stack's."""

    worker_selector: str = field(
        default=f'job="{WORKER_JOB}"',
        metadata={"help": "label matchers of the workers' scrape targets, as inside `up{...}`"},
    )
    exporter_selector: str = field(
        default=f'job="{EXPORTER_JOB}"',
        metadata={"help": "label matchers of the exporter's scrape targets"},
    )
    lag_exporter_selector: str = field(
        default=f'job="{LAG_EXPORTER_JOB}"',
        metadata={"help": "label matchers of the lag exporter's scrape targets (`crm-kpi lag-exporter`)"},
    )
    runbook_url: str = field(
        default="docs/runbooks.md",
        metadata={"help": "the runbooks page; each alert's `runbook_url` is `<this>#<alert name in lower case>`"},
    )
    grafana_url: str = field(
        default="",
        metadata={"help": "Grafana's base URL; each alert's `dashboard_url` is `<this>/d/<board uid>`"},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker_selector", parse_selector(self.worker_selector))
        object.__setattr__(self, "exporter_selector", parse_selector(self.exporter_selector))
        object.__setattr__(self, "lag_exporter_selector", parse_selector(self.lag_exporter_selector))
        object.__setattr__(self, "grafana_url", self.grafana_url.rstrip("/"))

    @property
    def workers_up(self) -> str:
        """PromQL: the `up` series of every worker target."""
        return f"up{{{self.worker_selector}}}"

    @property
    def exporters_up(self) -> str:
        """PromQL: the `up` series of every exporter target."""
        return f"up{{{self.exporter_selector}}}"

    def lag_exporter(self, metric: str) -> str:
        """PromQL: a metric of the lag exporter's targets."""
        return f"{metric}{{{self.lag_exporter_selector}}}"

    def runbook(self, alert_name: str) -> str:
        return f"{self.runbook_url}#{alert_name.lower()}"

    def dashboard(self, uid: str) -> str:
        return f"{self.grafana_url}/d/{uid}"

    @staticmethod
    def option_fields() -> tuple[Field[str], ...]:
        """The fields, each a command-line option `--<name with dashes>` with a `help` text."""
        return fields(Deployment)

    def options(self) -> list[str]:
        """The command-line options that differ from the defaults, to regenerate these files."""
        out: list[str] = []
        for f in self.option_fields():
            value = getattr(self, f.name)
            if value != getattr(DEFAULT_DEPLOYMENT, f.name):
                out += [option_name(f), value]
        return out


def option_name(option: Field[str]) -> str:
    """The command-line option of a Deployment field: `--worker-selector`."""
    return "--" + option.name.replace("_", "-")


DEFAULT_DEPLOYMENT = Deployment()
