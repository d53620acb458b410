# syntax=docker/dockerfile:1
# FlowEngine: one image for `flowengine serve` (and `run`, `sql`, ...).
#
#   docker build -t flowengine .
#   docker run -p 50051:50051 -p 9090:9090 -v $PWD/deploy/flowengine.toml:/etc/flowengine/flowengine.toml:ro flowengine
#
# The build stage runs the same cargo command as deploy/build-release.sh, which tests/packaging.rs
# checks against this file, so the image is built the way CI builds the release binary.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flowengine \
 && install -D -m 0755 target/release/flowengine /out/flowengine

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to object stores and databases; curl: the health check below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 flowengine \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/flowengine --create-home \
      --shell /usr/sbin/nologin flowengine \
 && mkdir -p /etc/flowengine /var/lib/flowengine/state /var/lib/flowengine/spill \
 && chown -R 10001:10001 /var/lib/flowengine
COPY --from=build /out/flowengine /usr/local/bin/flowengine
COPY deploy/flowengine.toml /etc/flowengine/flowengine.toml
COPY sql-examples /usr/share/flowengine/sql-examples
USER 10001:10001
WORKDIR /var/lib/flowengine
ENV FLOWENGINE_CONFIG=/etc/flowengine/flowengine.toml
# 50051: Arrow Flight SQL; 9090: /health, /ready, /metrics
EXPOSE 50051 9090
VOLUME ["/var/lib/flowengine"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:9090/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["flowengine"]
CMD ["serve", "--catalog", "/usr/share/flowengine/sql-examples/serve_catalog.sql"]
