#!/bin/sh
# One-shot bundle job (docker compose `bundle` service, Kubernetes Job): make sure
# $BUNDLE_ROOT/$BUNDLE_NAME holds a bundle. A bundle already there (built earlier, or mounted by the
# user) is used as is; otherwise the offline pipeline builds one and it is moved into place with one
# rename inside the volume, so the API never sees a half-written bundle.
#
# Environment: BUNDLE_ROOT (volume, default /bundles), BUNDLE_NAME (default demo),
# PIPELINE_SOURCE (prepare's FORMAT:PATH, default synthetic), PIPELINE_CONFIG (profile TOML, optional),
# LAUNCHER (default "python"; e.g. "torchrun --standalone --nproc-per-node=4" for several GPUs).
set -eu
root="${BUNDLE_ROOT:-/bundles}"
target="$root/${BUNDLE_NAME:-demo}"
if [ -f "$target/manifest.json" ]; then
  echo "bundle: using the existing bundle at $target"
  exit 0
fi
work="$(mktemp -d "$root/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "bundle: none at $target; building one from '${PIPELINE_SOURCE:-synthetic}' (this takes a few minutes)"
# shellcheck disable=SC2086  # LAUNCHER is a command line on purpose
${LAUNCHER:-python} -m training pipeline --source "${PIPELINE_SOURCE:-synthetic}" --out "$work/run" \
  ${PIPELINE_CONFIG:+--config "$PIPELINE_CONFIG"}
mv "$work/run/bundle" "$target"
echo "bundle: built $target"
