# crm-kpi-stream: one image for `crm-kpi worker`, `crm-kpi exporter` and
# `crm-kpi topics create` (docker-compose.yml picks the command).
#
# Two stages so the runtime image carries only the installed virtualenv: no
# source tree, no pip cache, no build backend. Every dependency ships as a
# manylinux wheel, so no compiler is needed in either stage.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/crm-kpi
WORKDIR /src
# README.md* (a glob): pyproject names README.md as the long description; the
# glob keeps the build working whether or not it is present yet.
COPY pyproject.toml README.md* ./
COPY stream/ stream/
COPY schemas/ schemas/
# Runtime dependencies only: no [demo] (embedded broker and Redis binaries), [test] or
# [dev] extras in the image.
RUN /opt/crm-kpi/bin/pip install .


FROM python:3.11-slim

# Non-root: a fixed uid/gid so volume permissions and securityContext
# (Kubernetes runAsUser) can be set to match.
RUN groupadd --system --gid 10001 crmkpi \
    && useradd --system --uid 10001 --gid crmkpi --home-dir /home/crmkpi --create-home \
       --shell /usr/sbin/nologin crmkpi

COPY --from=build /opt/crm-kpi /opt/crm-kpi

ENV PATH=/opt/crm-kpi/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Faust creates its data directory (<app id>-data) in the working directory,
# so it must be writable by the runtime user.
WORKDIR /home/crmkpi
USER 10001:10001

# 6066: worker operational /metrics; 9464: exporter KPI /metrics.
EXPOSE 6066 9464

# Health checks live in docker-compose.yml: the right probe differs per command.
ENTRYPOINT ["crm-kpi"]
CMD ["--help"]
