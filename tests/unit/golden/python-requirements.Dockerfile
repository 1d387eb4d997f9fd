FROM python:3.11-slim AS bake-tool
RUN --mount=type=bind,source=bake/tool-requirements.txt,target=/tmp/bake/tool-requirements.txt \
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \
    python3 -m venv /opt/bake/tool \
 && PIP_CONFIG_FILE=/run/secrets/bake_pip /opt/bake/tool/bin/pip install \
      --no-input --disable-pip-version-check --no-cache-dir --only-binary=:all: \
      --require-hashes --no-deps -r /tmp/bake/tool-requirements.txt

FROM python:3.11-slim AS deps
# One layer: the virtual env and exactly the locked files (bake.lock).  wheelfetch.py
# fetches each locked file by its URL through the proxy, checks its sha256 and logs
# it (the build's log reconciles with the lock); bake's uv installs them from that
# folder with --require-hashes --no-deps: no resolution, no other bytes.  The tool
# venv is mounted read-only, never copied in; the fetched files stay in a tmpfs.
RUN --mount=type=bind,from=bake-tool,source=/opt/bake/tool,target=/opt/bake/tool \
    --mount=type=bind,source=bake/install,target=/tmp/bake/install \
    --mount=type=tmpfs,target=/tmp/bake/wheels \
    python3 /tmp/bake/install/wheelfetch.py \
      /tmp/bake/install/files.json /tmp/bake/wheels \
 && python3 -m venv /opt/venv \
 && UV_NO_CACHE=1 UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never \
    /opt/bake/tool/bin/uv pip install --python /opt/venv/bin/python --no-deps \
      --require-hashes --offline --no-index --find-links /tmp/bake/wheels \
      --only-binary :all: --compile-bytecode -r /tmp/bake/install/requirements.txt

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
