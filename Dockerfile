# One static image for both roles: `mcp-warden controller` (the chart's Deployment) and
# `mcp-warden sidecar` (what the webhook injects). musl, no shell, non-root.
#   docker build -t ghcr.io/mcp-warden/mcp-warden:0.1.0 .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin mcp-warden \
 && cp target/release/mcp-warden /mcp-warden

FROM scratch
COPY --from=build /mcp-warden /mcp-warden
# The numeric user the chart and the injected sidecar run as (PodSecurity restricted).
USER 65532:65532
EXPOSE 9443 8080 9480 9481
ENTRYPOINT ["/mcp-warden"]
CMD ["--help"]
