# syntax=docker/dockerfile:1
# Build stage: pingora-core builds zlib-ng, which needs cmake.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY conf ./conf
# Cargo.toml names the criterion bench target: without its file the manifest is refused.
COPY benches ./benches
# HTTPS listeners are a cargo feature; build with --build-arg FEATURES= for a plain-HTTP
# binary with smaller connections (docs/benchmarks.md).
ARG FEATURES=tls
RUN cargo build --release --locked --bin streamgate --features "$FEATURES"

# Runtime stage: just the binary, its config, and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home streamgate
COPY --from=build /src/target/release/streamgate /usr/local/bin/streamgate
COPY conf /etc/streamgate
USER 10001:10001
# 3001: the proxy. 3443: HTTPS when [tls] is set up (mount the certificate and key).
# 9091: Prometheus metrics (conf sets metrics.listen to loopback; use
# --metrics 0.0.0.0:9091 to scrape from outside the container).
EXPOSE 3001 3443 9091
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:3001/health"]
ENTRYPOINT ["/usr/local/bin/streamgate"]
CMD ["--config", "/etc/streamgate/streamgate.toml"]
