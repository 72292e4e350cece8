# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on a slim Debian as a
# non-root user. Configure with EXAMWATCH__SECTION__KEY environment variables.
#
# Runs on a read-only root filesystem (docker run --read-only, compose
# read_only: true): the server writes only in /var/lib/examwatch (the data
# volume: the generated jwt_secret when auth.jwt_secret is unset, and the
# SQLite file with its -wal and -shm when database.url is SQLite). SQLite
# keeps its temporary tables in memory (the bundled build's
# SQLITE_TEMP_STORE=2) and nothing else writes to /tmp, so no tmpfs is
# needed. TLS in-process: mount the PEM files read-only (readable by uid
# 10001) and set EXAMWATCH__SERVER__TLS__CERT / __KEY (docs/DEPLOY.md).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The root manifest is also a workspace whose members include the load
# generator (bench/loadgen): cargo loads every member's manifest and
# targets, even to build one binary of another member, so the member is
# copied (a few small files); only the server is built.
COPY bench/loadgen ./bench/loadgen
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
# The dashboard, client library and demo page are compiled into the binary.
COPY web ./web
RUN cargo build --release --locked --bin examwatch \
 && strip target/release/examwatch

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/examwatch examwatch \
 && mkdir -p /var/lib/examwatch /etc/examwatch \
 && chown examwatch /var/lib/examwatch
COPY --from=build /src/target/release/examwatch /usr/local/bin/examwatch
COPY config/default.toml /etc/examwatch/default.toml
USER examwatch
WORKDIR /var/lib/examwatch
ENV EXAMWATCH__SERVER__BIND=0.0.0.0:8080 \
    EXAMWATCH__SERVER__DATA_DIR=/var/lib/examwatch \
    EXAMWATCH__DATABASE__URL=sqlite:///var/lib/examwatch/examwatch.db \
    EXAMWATCH__LOG__FORMAT=json
# The data folder is a volume: writable even when the root is read-only
# and nothing is mounted there (an anonymous volume), kept across upgrades
# when a named one is.
VOLUME ["/var/lib/examwatch"]
EXPOSE 8080
# Readiness, not mere liveness: /readyz is 503 while draining, while the
# database backlog is over database.queue_limit, or while the WebSocket
# loopback check fails (compose's nginx waits for "healthy"). Asked on the
# operators' listener (server.admin_bind, port 9090: always plain HTTP, so
# with TLS in-process the check costs no failed handshake and the answer
# says why); change the port with admin_bind.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/readyz || exit 1
# SIGTERM drains: /readyz turns 503, sockets close, writes are flushed,
# then exit 0 (give it the stop grace period of docs/DEPLOY.md).
STOPSIGNAL SIGTERM
ENTRYPOINT ["examwatch", "--config", "/etc/examwatch/default.toml"]
CMD ["serve"]
