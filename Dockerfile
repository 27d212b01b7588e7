# Aether's two images for a registry, from one multi-stage build:
#   docker build --target operator -t REGISTRY/aether-operator:TAG .
#   docker build --target runtime  -t REGISTRY/aether-runtime:TAG .
# Both targets start from the same `build` stage, which compiles both binaries: the
# second command reuses its cached result and only assembles its image.
# The images are for linux/amd64 (the runtime's static target is x86_64): on an arm64
# machine add --platform linux/amd64.
# The base images are build arguments so that a registry mirror, or a locally made
# image of the same layout, can stand in (--build-arg RUST_IMAGE=... and so on);
# hack/dockerfile-images.sh builds this file that way, with no registry at all.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG CC_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG STATIC_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# musl-gcc compiles the C in ring and zstd for the static runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The operator links glibc (its image has it). The runtime is static musl: `install`
# copies it into the pod's shared volume and the app container runs it there, on
# whatever Node image the app uses (Debian or Alpine). The cache mounts keep crates
# and compiled dependencies between builds; the binaries are copied out of them.
# Cargo rebuilds a crate when a source file is newer than its last compile, but COPY
# keeps the context's mtimes: a file edited while the last build ran can be older
# than that compile and still differ from what it compiled. So the files whose
# content the last build did not see (all, the first time) get the current time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    find . -path ./target -prune -o -type f -print0 | sort -z | xargs -0 sha256sum > /tmp/sources \
 && if [ -f target/sources.sha256 ]; then grep -vxFf target/sources.sha256 /tmp/sources; else cat /tmp/sources; fi \
    | cut -c67- | xargs -r -d '\n' touch -- \
 && cargo build --release --locked -p aether-operator \
 && cargo build --release --locked --target x86_64-unknown-linux-musl -p aether-runtime \
 && mkdir -p /out \
 && strip -o /out/aether-operator target/release/aether-operator \
 && strip -o /out/aether-runtime target/x86_64-unknown-linux-musl/release/aether-runtime \
 && mv /tmp/sources target/sources.sha256

FROM ${CC_IMAGE} AS operator
COPY --from=build /out/aether-operator /usr/local/bin/aether-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aether-operator"]

# The operator runs /usr/local/bin/aether-runtime from this image.
FROM ${STATIC_IMAGE} AS runtime
COPY --from=build /out/aether-runtime /usr/local/bin/aether-runtime
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/aether-runtime"]
