#!/usr/bin/env bash
# Fill ./wheels (git-ignored) with the wheels scripts/device_bench.sh needs on a
# GPU machine that has no package registry. Run on a machine that has one:
#     scripts/device_wheels.sh && ls wheels
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
grep -v '^#' scripts/device_wheels.txt | awk 'NF {print $2}' | xargs \
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d wheels
echo "wheels: $(ls wheels | wc -l) files, $(du -sh wheels | cut -f1)"
