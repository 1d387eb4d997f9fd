FROM python:3.11-slim AS bake-tool
RUN --mount=type=bind,source=bake/tool-requirements.txt,target=/tmp/bake/tool-requirements.txt \
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \
    python3 -m venv /opt/bake/tool \
 && PIP_CONFIG_FILE=/run/secrets/bake_pip /opt/bake/tool/bin/pip install \
      --no-input --disable-pip-version-check --no-cache-dir --only-binary=:all: \
      --require-hashes --no-deps -r /tmp/bake/tool-requirements.txt

FROM python:3.11-slim AS bake-wheels
ARG BAKE_WHEELHOUSE_NONCE
RUN --mount=type=bind,source=bake/wheelhouse,target=/tmp/bake/wheelhouse \
    --mount=type=cache,id=bake-wheelhouse-1,target=/opt/bake/wheelhouse,sharing=shared \
    --mount=type=secret,id=bake_index,target=/run/secrets/bake_index,required=true \
    python3 -I -S /tmp/bake/wheelhouse/wheelfetch.py /tmp/bake/wheelhouse/files.json \
      /opt/bake/wheelhouse /bake/wheelhouse.txt /tmp/bake/wheelhouse/wheels.txt 1

FROM python:3.11-slim AS deps
# Exactly the locked wheels the deps lack, from the wheelhouse, mounted read-only (the
# venv has no pip: it holds the lock and nothing else), in one layer.
# bake's uv (its tool venv, mounted read-only, never copied in) installs them with no
# index, no network and no secret in reach: --no-index --require-hashes --no-deps, each
# file from its own sha256 folder.  Installing starts the venv's interpreter (a wheel's
# .pth runs): it finds nothing to read and nothing to write but its own layer.
RUN --mount=type=bind,from=bake-tool,source=/opt/bake/tool,target=/opt/bake/tool \
    --mount=type=bind,from=bake-wheels,source=/bake/install-0.txt,target=/tmp/bake/wheels.txt \
    --mount=type=cache,id=bake-wheelhouse-1,target=/opt/bake/wheelhouse,readonly \
    python3 -m venv --without-pip /opt/venv && \
    UV_NO_CACHE=1 UV_NO_CONFIG=1 UV_OFFLINE=1 UV_PYTHON_DOWNLOADS=never \
    /opt/bake/tool/bin/uv pip install --python /opt/venv/bin/python --no-deps \
      --require-hashes --no-index --only-binary :all: --compile-bytecode \
      -r /tmp/bake/wheels.txt


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
