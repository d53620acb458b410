#!/usr/bin/env bash
# Build the release binary exactly as the Dockerfile's build stage does (tests/packaging.rs keeps
# the two in step). Usage: deploy/build-release.sh  -> target/release/flowengine
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin flowengine
