# syntax=docker/dockerfile:1
# ward, the command-line tool (policy validate/test/explain, crds, cert inspect), e.g. for CI
# pipelines that check policies. Build from the repository root:
#   docker build -f deploy/docker/ward.Dockerfile -t ward .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ward-cli --bin ward

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ward /usr/local/bin/ward
USER 65532:65532
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/ward"]
