# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on a slim Debian as a
# non-root user. Configure with EXAMWATCH__SECTION__KEY environment variables.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
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
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM drains: /readyz turns 503, sockets get 1001, then exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["examwatch", "--config", "/etc/examwatch/default.toml"]
CMD ["serve"]
