#!/bin/sh
# Installs the project from uv.lock (never re-resolved) into $UV_PROJECT_ENVIRONMENT
# (default .venv): `deploy/install-locked.sh [--extra NAME ...]`. Used by `make install`
# and by both images, so every install is the set the tests passed with.
#
# TORCH_INDEX=<index URL> (e.g. PyTorch's CPU index, https://download.pytorch.org/whl/cpu):
# torch comes from that index at the version uv.lock pins, and the CUDA packages that
# PyPI's torch build requires (nvidia-*, cuda-*, triton) are left out; everything else
# still comes from the lock.
set -eu
uv="${UV:-uv}"
if [ -z "${TORCH_INDEX:-}" ]; then
  exec "$uv" sync --frozen "$@"
fi
locked=$("$uv" export --frozen "$@" --no-hashes --no-emit-project)
version=$(printf '%s\n' "$locked" | sed -n 's/^torch==\([^ ;]*\).*/\1/p')
if [ -z "$version" ]; then
  echo "install-locked: TORCH_INDEX is set but these extras ($*) install no torch" >&2
  exit 2
fi
skip=$(printf '%s\n' "$locked" |
  sed -n 's/^\(torch\|triton\|nvidia-[a-z0-9-]*\|cuda-[a-z0-9-]*\)==.*/--no-install-package \1/p')
# shellcheck disable=SC2086 # one word per flag
"$uv" sync --frozen "$@" $skip
"$uv" pip install --python "${UV_PROJECT_ENVIRONMENT:-.venv}/bin/python" --no-deps \
  --index-url "$TORCH_INDEX" "torch==$version"
