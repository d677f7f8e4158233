# One static image for both roles: `mcp-warden controller` (the chart's Deployment) and
# `mcp-warden sidecar` (what the webhook injects). A musl binary on nothing: no shell, no base
# image to pull, non-root. Build the binary first, then the image (buildah or docker):
#   cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin mcp-warden
#   buildah build -t ghcr.io/mcp-warden/mcp-warden:0.1.0 .
FROM scratch
COPY target/x86_64-unknown-linux-musl/image/mcp-warden /mcp-warden
# The numeric user the chart and the injected sidecar run as (PodSecurity restricted).
USER 65532:65532
EXPOSE 9443 8080 9480 9481
ENTRYPOINT ["/mcp-warden"]
CMD ["--help"]
