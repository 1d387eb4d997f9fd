FROM python:3.11-slim AS bake-tool
RUN --mount=type=bind,source=bake/tool-requirements.txt,target=/tmp/bake/tool-requirements.txt \
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \
    --mount=type=secret,id=bake_ca,target=/run/secrets/bake_ca,required=true \
    python3 -m venv /opt/bake/tool \
 && PIP_CONFIG_FILE=/run/secrets/bake_pip /opt/bake/tool/bin/pip install \
      --no-input --disable-pip-version-check --no-cache-dir --only-binary=:all: \
      --require-hashes --no-deps -r /tmp/bake/tool-requirements.txt

FROM python:3.11-slim AS deps
# The sdists (only_binary = false), built here, in the job's own step: buyer code, so
# the wheelhouse is not mounted at all.  wheelfetch.py fetches them by their locked URL
# into a tmpfs and checks each sha256; uv builds and installs them (--require-hashes
# --no-deps), asking the proxy's relay of the index (no credentials) for their build
# dependencies.
RUN --mount=type=bind,from=bake-tool,source=/opt/bake/tool,target=/opt/bake/tool \
    --mount=type=bind,source=bake/install/sdists,target=/tmp/bake/install \
    --mount=type=tmpfs,target=/tmp/bake/sdists \
    --mount=type=secret,id=bake_index,target=/run/secrets/bake_index,required=true \
    --mount=type=secret,id=bake_ca,target=/run/secrets/bake_ca,required=true \
    python3 -I -S /tmp/bake/install/wheelfetch.py /tmp/bake/install/files.json \
      /tmp/bake/sdists /tmp/bake/sdists/fetched.txt \
 && python3 -m venv --without-pip /opt/venv \
 && UV_INDEX_URL="$(cat /run/secrets/bake_index)" UV_NO_CACHE=1 UV_NO_CONFIG=1 \
    UV_PYTHON_DOWNLOADS=never SSL_CERT_FILE=/run/secrets/bake_ca \
    /opt/bake/tool/bin/uv pip install --python /opt/venv/bin/python --no-deps \
      --require-hashes --compile-bytecode -r /tmp/bake/install/sdists.txt


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
