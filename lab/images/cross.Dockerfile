# The toolchain image `cross` builds dazai in, for both shipped targets: FROM
# the lab's base root filesystem (mmdebstrap, `docker import`; no registry,
# ever), tagged `ningen-cross:<input hash>` and `ningen-cross:local`, the name
# Cross.toml gives. It holds no Rust: `cross` mounts the host's pinned
# toolchain. With a registry the same file builds from
# `--build-arg BASE=debian:bookworm-slim`.
ARG BASE
FROM ${BASE}
# gcc and libc6-dev link the build scripts and proc macros (built for the
# glibc host) and x86_64 musl, whose crt and libc come with the Rust target;
# the aarch64 cross gcc is the linker driver for aarch64 musl.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
 && rm -rf /var/lib/apt/lists/*
# Without the linker rustc calls `cc`, which cannot read aarch64 objects
# ("crt1.o: file in wrong format"); CC is for any `cc`-crate build script.
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
