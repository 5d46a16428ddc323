# Heartbeater node image.
#
#   docker build -t heartbeater .
#   docker run -d --name hb -p 8181:8181/tcp -p 8181:8181/udp -p 9181:9181 \
#       -v heartbeater-data:/var/lib/heartbeater heartbeater
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# No `# syntax=` line: the builder's own Dockerfile frontend handles
# everything used here, and a build then pulls nothing but the two base images.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# librocksdb-sys generates its bindings with bindgen (loads libclang) and
# compiles RocksDB from C++ source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and the compiled RocksDB between
# builds. They are not part of the image, so the binary is copied out of
# target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p heartbeater-cli --locked \
 && install -m 0755 target/release/heartbeater /usr/local/bin/heartbeater

FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="heartbeater" \
      org.opencontainers.image.description="Heartbeater node: tells each process which of its peers are alive." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/heartbeater" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
# RocksDB is linked in statically, but the C++ runtime it needs (libstdc++,
# libgcc_s) is linked dynamically. The slim image has both today (apt needs
# them); installing only when missing keeps the image right if that changes
# without an apt-get update on every build.
RUN dpkg-query -W -f='${Status}' libstdc++6 2>/dev/null | grep -q 'ok installed' \
 || { apt-get update \
      && apt-get install -y --no-install-recommends libstdc++6 \
      && rm -rf /var/lib/apt/lists/*; }
# A fixed uid, so that a host directory can be chowned to it ahead of time;
# above the ranges hosts usually give their own users.
RUN groupadd --gid 10001 heartbeater \
 && useradd --uid 10001 --gid heartbeater --no-create-home \
        --home-dir /var/lib/heartbeater --shell /usr/sbin/nologin heartbeater \
 && install -d -o heartbeater -g heartbeater -m 0750 /var/lib/heartbeater
COPY --from=builder /usr/local/bin/heartbeater /usr/local/bin/heartbeater

# Declared after the chown: a new named volume starts as a copy of this
# directory, owner included, so the node can write to it.
VOLUME /var/lib/heartbeater
WORKDIR /var/lib/heartbeater
# Numeric, so that runAsNonRoot-style checks can tell it is not root.
USER 10001:10001

# 8181: gRPC (TCP) and heartbeat datagrams (UDP) on the same port; 9181: HTTP.
EXPOSE 8181/tcp 8181/udp 9181/tcp

# One gRPC heartbeat to the node itself: exits 0 when it answers. Uses the
# binary, so the image needs no curl. With TLS or tokens on reads, set
# HEARTBEATER_TLS_CA / HEARTBEATER_TOKEN in the container's environment.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["heartbeater", "heartbeat", "--server", "127.0.0.1:8181", "--deadline", "2s"]

# SIGTERM (what `docker stop` sends) stops the node cleanly within 5 s,
# inside docker's default 10 s grace period.
ENTRYPOINT ["heartbeater"]
CMD ["serve", "--listen", "0.0.0.0:8181", "--http-listen", "0.0.0.0:9181", "--data-dir", "/var/lib/heartbeater"]
