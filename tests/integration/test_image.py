"""The crm-kpi image runs as a non-root user (README: "built from the Dockerfile (non-root)").

Read from the Dockerfile and docker-compose.yml (CI has no Docker daemon to build with): the
runtime stage ends as a fixed, non-zero uid that the stage itself creates, and no service of the
image overrides the user.
"""

from __future__ import annotations

import re

import yaml

from tests.support.harness import ROOT


def _runtime_stage() -> list[str]:
    lines, current = [], []
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            current = []
            lines = current
        if line and not line.startswith("#"):
            current.append(line)
    return lines


def test_the_image_runs_as_a_non_root_user_it_creates() -> None:
    stage = _runtime_stage()
    users = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")]
    assert users, "the runtime stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)), users[-1]
    text = "\n".join(stage)
    assert re.search(rf"useradd\b[^\n]*--uid {uid}\b", text.replace("\\\n", " ")), "the uid is created in the stage"


def test_no_service_of_the_image_runs_as_root() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = [name for name, svc in compose["services"].items() if str(svc.get("image", "")).startswith("crm-kpi-stream")]
    assert ours, "the compose file runs the crm-kpi image"
    for name in ours:
        user = str(compose["services"][name].get("user", ""))
        assert user.split(":")[0] not in ("root", "0"), (name, user)
