FROM python:3.11-slim AS deps
RUN python3 -m venv --without-pip /opt/venv


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
