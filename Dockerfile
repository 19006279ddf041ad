# syntax=docker/dockerfile:1
#
# herald: build with `docker build -t herald .`, run with authentication on
#   docker run -p 8080:8080 -e HERALD_AUTH__MODE=jwt \
#     -e HERALD_AUTH__HMAC_SECRET="$(herald keys new | sed -n 's/^key: *//p')" \
#     -e HERALD_AUTH__ALLOW_ANONYMOUS=true herald      # (open HTTP ingest)
# or, to try it on your machine only, without authentication:
#   docker run -p 127.0.0.1:8080:8080 -e HERALD_AUTH__ALLOW_ANONYMOUS=true herald
# (herald refuses to serve unauthenticated on 0.0.0.0 otherwise), or use
# docker-compose.yml (Kafka, RabbitMQ, Redis included).

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka builds the bundled librdkafka with its own configure script, make
# and a C compiler (no cmake needed); zlib for compressed topics; OpenSSL
# (the rdkafka `ssl` feature) for Kafka SSL and SASL_SSL with PLAIN or SCRAM,
# as scripts/build-deps.sh installs. GSSAPI (Kerberos) is not built in.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the registry and the target directory between builds
# (BuildKit, the default builder); the binary is copied out of the cached
# target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to brokers (kafka SSL, amqps://, rediss://);
# libssl3 for librdkafka's TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --home-dir /var/lib/herald \
      --no-create-home --shell /usr/sbin/nologin herald \
 && install -d -o herald -g herald -m 0750 /var/lib/herald

COPY --from=builder /out/herald /usr/local/bin/herald
# A default configuration so `docker run herald` works; mount your own over it.
COPY examples/herald.toml /etc/herald/herald.toml

# Inside a container herald must listen on all interfaces (its default is
# 127.0.0.1:8080).
ENV HERALD_SERVER__LISTEN=0.0.0.0:8080

USER herald:herald
WORKDIR /var/lib/herald
EXPOSE 8080

# SIGTERM starts graceful shutdown (stop consuming, finish appends, commit,
# close sessions with 1001).
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
CMD ["serve", "--config", "/etc/herald/herald.toml"]
