# syntax=docker/dockerfile:1
# ward-proxy, the node proxy (DaemonSet). Build from the repository root:
#   docker build -f deploy/docker/ward-proxy.Dockerfile -t ward-proxy .
# It programs nftables (the `nft` binary) and a policy route (`ip`) in the node's network
# namespace, so the runtime image carries nftables and iproute2 and runs as root with only the capabilities the chart grants
# (NET_ADMIN: deploy/helm/ward); its root filesystem can be read-only.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ward-proxy --bin ward-proxy

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ward-proxy /usr/local/bin/ward-proxy
USER 0
ENTRYPOINT ["/usr/local/bin/ward-proxy"]
