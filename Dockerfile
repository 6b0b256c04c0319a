# syntax=docker/dockerfile:1
#
# The dynamics-operator image: one static binary (Rust, musl) on distroless/static, run as a
# non-root user. The same image serves the simulator (`dynamics-operator sim`, used by
# deploy/overlays/simulator).
#
#   docker build -t ghcr.io/bithuman/dynamics-operator:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .   (each platform builds natively)
#
# tests/kind/run.sh builds it and loads it into a kind cluster.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The musl target of the platform being built (the builder runs on that platform).
RUN set -eu; \
    arch="$(uname -m)"; \
    case "$arch" in x86_64|aarch64) ;; *) echo "unsupported architecture: $arch" >&2; exit 1 ;; esac; \
    echo "$arch-unknown-linux-musl" > /rust-target; \
    rustup target add "$(cat /rust-target)"
WORKDIR /src
# `--version` shows this commit (build.rs; .git is not in the build context):
#   docker build --build-arg DYNAMICS_GIT_COMMIT="$(git rev-parse --short HEAD)" ...
ARG DYNAMICS_GIT_COMMIT=unknown
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eu; \
    target="$(cat /rust-target)"; \
    cc_var="CC_$(echo "$target" | tr - _)"; \
    env "$cc_var=musl-gcc" cargo build --release --locked --bin dynamics-operator --target "$target"; \
    install -D -m 0755 "target/$target/release/dynamics-operator" /out/dynamics-operator
# distroless/static has no libc: refuse a binary that needs one, and make sure it runs.
RUN set -eu; \
    if readelf -d /out/dynamics-operator | grep -q NEEDED; then \
      echo "dynamics-operator is dynamically linked:" >&2; readelf -d /out/dynamics-operator >&2; exit 1; \
    fi; \
    /out/dynamics-operator --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="dynamics-operator" \
      org.opencontainers.image.description="Kubernetes operator for bitHuman agents' dynamics (AgentDynamics)" \
      org.opencontainers.image.source="https://github.com/bithuman/dynamics-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/dynamics-operator /dynamics-operator
# distroless's "nonroot" user, numerically, so that runAsNonRoot can be verified by the kubelet.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/dynamics-operator"]
CMD ["run"]
