FROM python:3.11-slim AS deps
# One layer: the virtual env and the job's requirements.  No pip cache mount:
# a cache shared between jobs would let one job plant files for another.
RUN --mount=type=bind,source=bake/requirements.txt,target=/tmp/bake/requirements.txt \
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \
    python3 -m venv /opt/venv

FROM deps AS job
COPY job/ /job/
# The job runs as an unprivileged user with a read-only root; /tmp is its tmpfs.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /job
USER 10001:10001
