FROM python:3.11-slim AS deps
RUN python3 -m venv --without-pip /opt/venv


# The Hub client, every file of it and of its dependencies pinned by hash, in a venv of
# its own that never reaches the job's image.  The fetch stages see no buyer input (no
# requirements, no job files), so the Hub token, mounted only there, meets no buyer code,
# and no code but the pinned client's.
FROM python:3.11-slim AS fetcher
RUN --mount=type=bind,source=bake/hub-client.txt,target=/tmp/bake/hub-client.txt \
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \
    --mount=type=secret,id=bake_ca,target=/run/secrets/bake_ca,required=true \
    python3 -m venv /opt/bake/fetch \
 && PIP_CONFIG_FILE=/run/secrets/bake_pip /opt/bake/fetch/bin/pip install \
      --no-input --disable-pip-version-check --no-cache-dir --only-binary=:all: \
      --require-hashes --no-deps -r /tmp/bake/hub-client.txt

# One stage per repo: the Hub cache layout under /out/opt/hf.  Every mtime in
# /out is fixed (hubfetch.py sets 1 from /opt/hf down; touch does the two folders
# above it), so the layer that COPY makes of it is byte-identical in every job
# that bakes this repo at this commit with these patterns.

# model org/gated @ cccccccccccccccccccccccccccccccccccccccc
FROM fetcher AS hub-0
RUN --mount=type=bind,source=bake/hubfetch.py,target=/opt/bake/hubfetch.py \
    --mount=type=bind,source=bake/hub/0.json,target=/opt/bake/hub/0.json \
    --mount=type=secret,id=bake_hf_endpoint,target=/run/secrets/bake_hf_endpoint,required=true \
    --mount=type=secret,id=hf_token,target=/run/secrets/hf_token,required=true \
    --mount=type=secret,id=bake_ca,target=/run/secrets/bake_ca,required=true \
    HF_HOME=/out/opt/hf SSL_CERT_FILE=/run/secrets/bake_ca REQUESTS_CA_BUNDLE=/run/secrets/bake_ca \
      /opt/bake/fetch/bin/python /opt/bake/hubfetch.py fetch /opt/bake/hub/0.json \
 && chmod 0755 /out /out/opt \
 && touch -h -d @1 /out/opt /out

FROM deps AS job
# One layer per model and dataset, after the deps and before the job's files, so
# that a code or requirement change never refetches them.  /out/ is copied onto /
# (rather than /opt/hf onto /opt/hf) so that COPY overwrites /opt, /opt/hf and
# /opt/hf/hub with the fetch stage's fixed metadata: a folder COPY only creates
# or enters would carry this build's mtime into the layer.
COPY --from=hub-0 /out/ /
# For the offline self-check (bake/runner.py): the check script and what each
# fetch was asked for.  A few kilobytes; neither client nor token.
COPY bake/hubfetch.py /opt/bake/hubfetch.py
COPY bake/hub/ /opt/bake/hub/
ENV HF_HOME=/opt/hf \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
COPY job/ /job/
# The job runs as an unprivileged user with a read-only root; /tmp is its tmpfs.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The job's root is read-only and HF_HOME is baked: the caches these libraries
# write next to it (datasets' Arrow files, transformers' remote-code modules) go
# to /tmp instead, and the datasets library gets its own offline switch.
ENV HF_DATASETS_CACHE=/tmp/hf/datasets \
    HF_MODULES_CACHE=/tmp/hf/modules \
    HF_DATASETS_OFFLINE=1
WORKDIR /job
USER 10001:10001
