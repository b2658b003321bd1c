# syntax=docker/dockerfile:1
# ward-control, the control component (Deployment). Build from the repository root:
#   docker build -f deploy/docker/ward-control.Dockerfile -t ward-control .
# Needs no capability and no shell: distroless, non-root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ward-control --bin ward-control

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ward-control /usr/local/bin/ward-control
USER 65532:65532
EXPOSE 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/ward-control"]
