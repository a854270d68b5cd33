# syntax=docker/dockerfile:1
# One image for every role: coordinator, replay, actor, learner, evaluator, and dsm (whose
# `dsm health` is the compose healthcheck). deploy/README.md shows how to build and run it.
#
#   docker build -t dsm:latest .
#   docker build -t dsm:cuda --build-arg RUNTIME_BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 .
#
# The learner loads the CUDA driver, NVRTC and NCCL at run time (cudarc's dynamic loading), so
# the same binaries run in both images; the CUDA base only adds those libraries. A runtime base
# must have glibc 2.36 or newer (the builder's, Debian bookworm): Ubuntu 24.04 has 2.39.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# protox compiles the .proto files in Rust: no protoc, no system packages needed.
RUN cargo build --release --locked \
        -p coordinator -p actor -p learner -p dsm \
        --bin coordinator --bin replay --bin actor --bin learner --bin evaluator --bin dsm \
    && mkdir -p /out \
    && cp target/release/coordinator target/release/replay target/release/actor \
          target/release/learner target/release/evaluator target/release/dsm /out/

FROM ${RUNTIME_BASE}
COPY --from=build /out/ /usr/local/bin/
COPY configs/ /etc/dsm/configs/
# Roles run as an unprivileged user and keep their files (checkpoints, shard data, reports)
# under /data, the volume of every role that has state.
RUN useradd --system --uid 10001 --home-dir /data --create-home dsm
USER 10001
WORKDIR /data
# Ports by convention (deploy/): 50051 coordinator, 50052 replay shard, 50053 health of actors
# and evaluators, 50054 the learner's checkpoint store, 9100 /metrics of every role.
EXPOSE 50051 50052 50053 50054 9100
CMD ["dsm", "--help"]
