"""Fine-tuning speed and memory: kubetune's trainer against plain transformers + peft and TRL, in one run.

    .venv/bin/python benchmarks/train_cpu.py                      # SmolLM2-135M-Instruct, ~10 min on 2 cores
    .venv/bin/python benchmarks/train_cpu.py --quick              # the tiny offline Llama: a smoke run
    .venv/bin/python benchmarks/train_cpu.py --steps 20 --repeats 3 --methods lora
    python benchmarks/train_cpu.py --device cuda --precision bf16 --random-llama 0.5b --methods full \
        --contenders kubetune,plain,trl --steps 20 --batch 8 --seq 1024 --repeats 2   # the GPU goal (issue 18)
    .venv/bin/python benchmarks/train_cpu.py --random-llama tiny --precision bf16 --steps 3 --repeats 1  # its CPU smoke

Every contender is its own process with the same environment, on the same instruction rows
(prompt → completion chats rendered by the model's chat template, completion-only loss), the same
model, method (full fine-tuning, or LoRA r 16 / alpha 32 on all linear layers), optimizer (AdamW),
learning rate, schedule, seed, steps, batch size and sequence limit, fp32, no gradient
checkpointing, no checkpoint saved inside the loop:

- `kubetune`: the real entrypoint (`python -m kubetune_trainer train --config job.json`), with
  packing (`kubetune`) and without (`kubetune-pad`);
- `plain`: the script a person would write with `transformers.Trainer` + peft (padded batches,
  prompt tokens masked with -100); it does not import kubetune;
- `trl`: TRL's `SFTTrainer` (conversational prompt-completion rows, `completion_only_loss`,
  `packing=True`, its defaults otherwise except those listed above), when TRL is installed.

Runs alternate (contender order is rotated every repeat), so a busy neighbour hurts every side
alike; every figure is the median of the repeats, and ratios are computed per repeat (kubetune's
run against the other side's run of the same repeat) and printed as median [min–max].

Figures per run, measured the same way for every contender by a callback and a wrapper of
`Trainer.training_step` installed in the child (so kubetune is timed through its own
entrypoint): step time (optimizer step, p50, the first step left out as warm-up), tokens/s
(non-padding input tokens of steps 2…N over their time), peak RSS of the process, the training
loss of the last step, and MFU = achieved FLOP/s ÷ the peak FLOP/s of a square fp32 matmul measured
in this run, on the same threads (best of several measurements interleaved with the runs).
FLOPs per token: full fine-tuning 6·N (forward 2·N, backward 4·N); LoRA 4·N (forward 2·N and the
activation gradients 2·N; the frozen weights get no gradient, the adapters' own FLOPs, ~1 %, are
left out). N counts every weight that takes part in a matmul, the tied LM head included once;
attention score FLOPs are left out (small at these lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = Path.home() / ".cache" / "kubetune" / "models" / "smollm2-135m-instruct"
LR = {"full": 2e-5, "lora": 2e-4}
LORA: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.0}  # kubetune's, peft's and TRL's default
SEED = 11


# Random-init Llamas for the GPU goal (issue 18: ≥ 40 % bf16 MFU on a ~0.5–1B Llama): SmolLM2's
# tokenizer (vocab 49,152, tied head), GQA with 4 KV heads of 128; (hidden, layers, heads, MLP).
RANDOM_LLAMAS = {"0.5b": (1536, 16, 12, 4096), "1b": (2048, 20, 16, 5632), "tiny": (128, 2, 2, 256)}


def build_random_llama(size: str, tokenizer_from: Path) -> Path:
    """Save a random-init LlamaForCausalLM of `size` (seed 0) with `tokenizer_from`'s tokenizer under
    ~/.cache/kubetune/models/random-llama-<size>; built once. `tiny` is a CPU smoke test of this path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path.home() / ".cache" / "kubetune" / "models" / f"random-llama-{size}"
    if (out / "config.json").exists():
        return out
    hidden, layers, heads, mlp = RANDOM_LLAMAS[size]
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=min(4, heads),
                         head_dim=hidden // heads, intermediate_size=mlp, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


# --------------------------------------------------------------------------- data


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Instruction rows of varied length (~30 to ~250 tokens): a question about notes of a small
    invented domain, answered with several of its sentences."""
    sys.path.insert(0, str(REPO / "trainer"))
    from kubetune_trainer.data.synthetic import DOMAIN

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        notes = " ".join(rng.sample(DOMAIN, rng.randint(1, 3)))
        answer = " ".join(rng.choice(DOMAIN) for _ in range(rng.randint(1, 9)))
        rows.append({"prompt": f"Explain what these runbook notes mean for an operator: {notes}",
                     "completion": answer})
    return rows


# --------------------------------------------------------------------------- measurement inside a child


class StepMeter:
    """Times every optimizer step and counts the non-padding input tokens fed to it (all contenders alike)."""

    def __init__(self, pad_token_id: int | None) -> None:
        self.pad = pad_token_id
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []
        self._pending = 0
        self._t0 = 0.0

    def count(self, inputs: dict[str, Any]) -> None:
        if "attention_mask" in inputs:
            self._pending += int(inputs["attention_mask"].sum())
            return
        ids = inputs["input_ids"]
        pos = inputs.get("position_ids")
        for r in range(ids.shape[0]):  # packed rows: strip the right padding (pad id at position 0)
            n = ids.shape[1]
            while n > 0 and int(ids[r, n - 1]) == self.pad and (pos is None or int(pos[r, n - 1]) == 0):
                n -= 1
            self._pending += n

    def install(self) -> None:
        import transformers
        from transformers import TrainerCallback

        meter = self
        original = transformers.Trainer.training_step

        def training_step(trainer: Any, model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            meter.count(inputs)
            return original(trainer, model, inputs, *a, **k)

        transformers.Trainer.training_step = training_step  # type: ignore[method-assign,assignment]

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                meter._t0 = time.perf_counter()

            def on_step_end(self, *a: Any, **k: Any) -> None:
                meter.times.append(time.perf_counter() - meter._t0)
                meter.tokens.append(meter._pending)
                meter._pending = 0

            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                       **k: Any) -> None:
                if logs and "loss" in logs:
                    meter.losses.append(float(logs["loss"]))

        original_init = transformers.Trainer.__init__

        def init(trainer: Any, *a: Any, **k: Any) -> None:
            original_init(trainer, *a, **k)
            trainer.add_callback(Callback())

        transformers.Trainer.__init__ = init  # type: ignore[method-assign,assignment]

    def result(self, model_params: int) -> dict[str, Any]:
        import torch

        gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return {"times": self.times, "tokens": self.tokens, "losses": self.losses, "params": model_params,
                "maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "gpu_peak_gib": gpu, "threads": torch.get_num_threads()}


def matmul_peak(device: str = "cpu", precision: str = "fp32", seconds: float = 2.0) -> float:
    """FLOP/s of a square matmul (1024² fp32 on CPU, 8192² on a GPU) in `precision` on `device`, on
    this process's threads (best of a few timed batches; a GPU is synchronised around each batch)."""
    import torch

    size = 1024 if device == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = max(best, 5 * 2 * size**3 / (time.perf_counter() - t))
    return best


# --------------------------------------------------------------------------- the contenders (children)


def matmul_params(model: Any) -> int:
    """Weights that take part in a matmul: every parameter except the input embedding, plus the LM head
    (counted once; with tied embeddings it is the embedding matrix)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: set[int] = set()
    total = 0
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    for name, p in base.named_parameters():
        if id(p) in seen or "lora_" in name:
            continue
        seen.add(id(p))
        total += p.numel()
    if head is not None and head.weight is emb:
        return total  # tied: the embedding matrix is the head's matmul, counted once
    return total - emb.numel()


def child_kubetune(spec: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "trainer"))
    import transformers
    from kubetune_trainer.__main__ import main as kubetune_main

    captured: dict[str, Any] = {}
    original_init = transformers.Trainer.__init__

    def init(trainer: Any, *a: Any, **k: Any) -> None:
        original_init(trainer, *a, **k)
        captured["params"] = matmul_params(trainer.model)
        meter.pad = trainer.processing_class.pad_token_id

    transformers.Trainer.__init__ = init  # type: ignore[method-assign,assignment]
    sys.argv = ["kubetune-train", "train", "--config", spec["config"]]
    try:
        kubetune_main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return meter.result(captured["params"])


def _chats(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows]


def _load_dtype(spec: dict[str, Any]) -> Any:
    """As kubetune loads: fp32 weights for full fine-tuning (bf16 autocast keeps fp32 masters), a bf16
    frozen base under LoRA when training in bf16."""
    import torch

    return torch.bfloat16 if spec["precision"] == "bf16" and spec["method"] == "lora" else torch.float32


def _lora_model(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def _common_args(spec: dict[str, Any], out: str) -> dict[str, Any]:
    return {"output_dir": out, "per_device_train_batch_size": spec["batch"], "max_steps": spec["steps"],
            "learning_rate": LR[spec["method"]], "lr_scheduler_type": "linear", "warmup_steps": 0,
            "weight_decay": 0.0, "seed": SEED, "data_seed": SEED, "use_cpu": spec["device"] == "cpu",
            "bf16": spec["precision"] == "bf16", "fp16": False,
            "gradient_checkpointing": False, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "disable_tqdm": True, "dataloader_num_workers": 0}


def child_plain(spec: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """The plain script: chat template, prompt masked, right padding, transformers Trainer (+ peft)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    set_seed(SEED)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    meter.pad = tok.pad_token_id
    examples = []
    for chat in _chats(spec["rows"]):
        prompt = tok.apply_chat_template(chat["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(chat["prompt"] + chat["completion"], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][: spec["seq"]]
        labels = [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids):]
        examples.append({"input_ids": ids, "labels": labels})

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)

        def pad(key: str, fill: int) -> Any:
            return torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])

        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        return {"input_ids": pad("input_ids", tok.pad_token_id), "attention_mask": mask, "labels": pad("labels", -100)}

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=_load_dtype(spec))
    if spec["method"] == "lora":
        model = _lora_model(model)
    args = TrainingArguments(**_common_args(spec, spec["out"]))
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples), data_collator=collate)
    trainer.train()
    return meter.result(matmul_params(model))


def child_trl(spec: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """TRL's SFTTrainer with the same settings: completion-only loss, packing (its default strategy)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(spec["model"])
    meter.pad = tok.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=_load_dtype(spec))
    if spec["method"] == "lora":
        model = _lora_model(model)
    args = SFTConfig(**_common_args(spec, spec["out"]), max_length=spec["seq"], packing=True,
                     completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_chats(spec["rows"])),
                         processing_class=tok)
    trainer.train()
    return meter.result(matmul_params(model))


def child(spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    meter = StepMeter(None)
    meter.install()
    run = {"kubetune": child_kubetune, "plain": child_plain, "trl": child_trl}[spec["kind"]]
    result = run(spec, meter)
    result_path.write_text(json.dumps(result))


# --------------------------------------------------------------------------- the driver


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "KUBETUNE_TERMINATION_LOG": "/nonexistent/log", "PYTHONWARNINGS": "ignore"})
    for name in ("KUBETUNE_JOB_NAME", "KUBETUNE_JOB_NAMESPACE", "KUBETUNE_METRICS_PORT"):
        env.pop(name, None)
    return env


def kubetune_config(work: Path, model: Path, train: Path, args: argparse.Namespace, method: str,
                    packing: bool) -> Path:
    method_spec: dict[str, Any] = {"type": method}
    if method == "lora":
        method_spec["lora"] = {**LORA, "targetModules": ["all-linear"]}
    cfg = {
        "jobName": "bench", "task": "instruction", "baseModel": {"uri": str(model)}, "method": method_spec,
        "data": {"train": {"uri": str(train)}, "validationSplit": 0.0,
                 "quality": {"minRows": 4, "maxDuplicateFraction": 1.0, "maxTokenLengthFraction": 1.0}},
        "hyperparameters": {"maxSteps": args.steps, "learningRate": LR[method], "batchSizePerDevice": args.batch,
                            "maxSeqLength": args.seq, "precision": args.precision, "loggingSteps": 1, "seed": SEED,
                            "packing": packing, "warmupRatio": 0.0, "weightDecay": 0.0,
                            "gradientCheckpointing": False, "lrScheduler": "linear"},
        "evaluation": {"metrics": ["loss"]},
        "output": {"root": str(work / "out"), "checkpoints": {"everySteps": 100_000, "keep": 1}},
        "progress": {"enabled": True},  # as in a pod; with no job name in the env it has no API to call
    }
    path = work / "job.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_child(kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps({"kind": kind, **spec}))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(result_path)],
                          capture_output=True, text=True, env=child_env(), cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return {**json.loads(result_path.read_text()), "wall": time.monotonic() - started}


def summarise(r: dict[str, Any], method: str, peak: float) -> dict[str, float]:
    times, tokens = r["times"][1:], r["tokens"][1:]  # the first step warms up oneDNN and the allocator
    tps = sum(tokens) / sum(times)
    best = max(n / t for n, t in zip(tokens, times, strict=True))  # the least disturbed step
    per_token = (6 if method == "full" else 4) * r["params"]
    return {"tps": tps, "best": best, "step": statistics.median(times), "rss": r["maxrss_gib"],
            "mfu": per_token * tps / peak, "best_mfu": per_token * best / peak, "gflops": per_token * tps / 1e9,
            "loss": r["losses"][-1] if r["losses"] else float("nan"), "tokens_per_step": statistics.mean(tokens),
            "wall": r["wall"], **({"gpu": r["gpu_peak_gib"]} if r.get("gpu_peak_gib") is not None else {})}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--contenders", default="kubetune,kubetune-pad,plain,trl")
    p.add_argument("--quick", action="store_true", help="the tiny offline Llama instead of SmolLM2-135M")
    p.add_argument("--model", type=Path, default=None, help="a local model directory (default SmolLM2-135M)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every contender trains")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: mixed precision (autocast, fp32 master weights) on every side; the matmul peak in bf16")
    p.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS), default=None,
                   help="train a random-init Llama of this size with SmolLM2's tokenizer (the GPU goal's model)")
    p.add_argument("--save", type=Path, default=None, help="also write every run's raw figures to this JSON file")
    p.add_argument("--load", type=Path, default=None, help="print the summary of a --save file instead of running")
    p.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    if args.load:
        saved = json.loads(args.load.read_text())
        loaded = {tuple(key.split("|")): rs for key, rs in saved["results"].items()}
        kept = saved["args"]
        args.steps, args.batch, args.seq, args.repeats = (int(kept[k]) for k in ("steps", "batch", "seq", "repeats"))
        report(loaded, saved["peaks"], list(dict.fromkeys(m for m, _ in loaded)),  # type: ignore[arg-type]
               list(dict.fromkeys(k for _, k in loaded)), args, saved["model"])
        return


    if args.device == "cpu" and args.precision == "bf16":
        print("note: on a CPU kubetune trains in fp32 whatever the precision (its rule for CPU runs), while the "
              "plain and TRL scripts use bf16 autocast: a smoke test of the GPU path, not a comparison")
    sys.path.insert(0, str(REPO / "trainer"))
    if args.quick:
        from kubetune_trainer.offline_models import build_tiny_causal_lm

        cache = Path(os.environ.get("KUBETUNE_TEST_MODELS", Path.home() / ".cache" / "kubetune" / "test-models"))
        model = build_tiny_causal_lm(cache / "tiny-causal-lm")
    elif args.random_llama:
        model = build_random_llama(args.random_llama, args.model or MODEL)
    else:
        model = args.model or MODEL
        if not (model / "config.json").exists():
            raise SystemExit(f"{model} is missing: run `kubetune models pull smollm2` first (or pass --quick)")
    contenders = [c for c in args.contenders.split(",") if c]
    try:
        import trl  # noqa: F401
    except ImportError:
        print("TRL is not installed: its column is left out (pip install trl)")
        contenders = [c for c in contenders if c != "trl"]
    methods = [m for m in args.methods.split(",") if m]
    rows = make_rows(args.rows, seed=5)
    peaks = [matmul_peak(args.device, args.precision)]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        train = Path(tmp) / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for i in range(args.repeats):
            for method in methods:
                order = contenders[i % len(contenders):] + contenders[: i % len(contenders)]
                if i % 2:
                    order = order[::-1]
                for kind in order:
                    work = Path(tmp) / f"{kind}-{method}-{i}"
                    work.mkdir()
                    spec: dict[str, Any] = {"model": str(model), "method": method, "steps": args.steps,
                                            "batch": args.batch, "seq": args.seq, "out": str(work / "out"),
                                            "device": args.device, "precision": args.precision}
                    if kind.startswith("kubetune"):
                        cfg = kubetune_config(work, model, train, args, method, packing=kind == "kubetune")
                        r = run_child("kubetune", {**spec, "config": str(cfg)}, work)
                    else:
                        r = run_child(kind, {**spec, "rows": rows}, work)
                    results.setdefault((method, kind), []).append(r)
                    s = summarise(r, method, max(peaks))
                    print(f"  repeat {i + 1} {method:4} {kind:12} {s['tps']:8.0f} tokens/s  step p50 {s['step']:6.2f} s"
                          f"  {s['tokens_per_step']:6.0f} tokens/step  RSS {s['rss']:5.2f} GiB  "
                          f"loss {s['loss']:.4f}  process {s['wall']:5.1f} s", flush=True)
                    peaks.append(matmul_peak(args.device, args.precision))
                    if args.save:  # after every run: a run stopped half-way (a busy machine) keeps its figures
                        save(args.save, args, peaks, "tiny" if args.quick else model.name, results)
    report(results, peaks, methods, contenders, args, "tiny Llama (--quick)" if args.quick else model.name)


def save(path: Path, args: argparse.Namespace, peaks: list[float], model_name: str,
         results: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """Write the raw figures so far (`--load` prints their summary; a partial repeat is left out)."""
    done = min(len(rs) for rs in results.values()) if results else 0
    kept = {k: str(v) for k, v in vars(args).items()}
    kept["repeats"] = str(done)
    path.write_text(json.dumps({"args": kept, "peaks": peaks, "model": model_name,
                                "results": {f"{m}|{k}": rs[:done] for (m, k), rs in results.items()}}))


def report(results: dict[tuple[str, str], list[dict[str, Any]]], peaks: list[float], methods: list[str],
           contenders: list[str], args: argparse.Namespace, model_name: str) -> None:
    import torch

    peak = max(peaks)
    device = getattr(args, "device", "cpu")
    print(f"\nFine-tuning on {device.upper()}: {model_name}, {getattr(args, 'precision', 'fp32')}, {args.steps} steps, "
          f"batch {args.batch}, seq <= {args.seq}, {args.repeats} repeats, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    square = "1024²" if device == "cpu" else "8192²"
    print(f"matmul peak ({square} {getattr(args, 'precision', 'fp32')}, best of {len(peaks)} measurements): {peak / 1e9:.0f} GFLOP/s "
          f"(all: {', '.join(f'{x / 1e9:.0f}' for x in peaks)})")
    print("FLOPs/token: full 6·N, LoRA 4·N; N = weights in matmuls (tied head once); medians over repeats;")
    print("tokens/s = non-padding tokens of steps 2..N / their time; best step = the fastest of those steps'")
    print("tokens/s (the step least disturbed by other work on the machine)\n")
    header = (f"{'method':6} {'contender':13}{'tokens/s':>9}{'best step':>10}{'step p50 s':>11}{'tok/step':>9}"
              f"{'peak RSS GiB':>13}{'GFLOP/s':>9}{'MFU':>7}{'best MFU':>9}{'loss@N':>8}")
    print(header)
    summaries = {key: [summarise(r, key[0], peak) for r in rs] for key, rs in results.items()}
    for (method, kind), ss in summaries.items():
        med = {k: statistics.median(s[k] for s in ss) for k in ss[0]}
        print(f"{method:6} {kind:13}{med['tps']:9.0f}{med['best']:10.0f}{med['step']:11.2f}{med['tokens_per_step']:9.0f}"
              f"{med['rss']:13.2f}{med['gflops']:9.1f}{med['mfu']:7.1%}{med['best_mfu']:9.1%}{med['loss']:8.4f}"
              + (f"   GPU peak {med['gpu']:.2f} GiB" if med.get("gpu") is not None else ""))
    print("\nratios of tokens/s, median [min–max] over repeats (each repeat's runs against each other)")
    for method in methods:
        for other in ("kubetune-pad", "plain", "trl"):
            if (method, "kubetune") in summaries and (method, other) in summaries:
                a_b = list(zip(summaries[(method, "kubetune")], summaries[(method, other)], strict=True))
                print(f"  {method:4} kubetune(packed)/{other:12} {spread([a['tps'] / b['tps'] for a, b in a_b])}"
                      f"   best steps {spread([a['best'] / b['best'] for a, b in a_b])}")
        if (method, "kubetune-pad") in summaries and (method, "plain") in summaries:
            a_b = list(zip(summaries[(method, "kubetune-pad")], summaries[(method, "plain")], strict=True))
            print(f"  {method:4} kubetune-pad/plain{'':12} {spread([a['tps'] / b['tps'] for a, b in a_b])}"
                  f"   best steps {spread([a['best'] / b['best'] for a, b in a_b])}   (the same padded batches)")
    for kind in contenders:
        if ("lora", kind) in summaries and ("full", kind) in summaries:
            a_b = list(zip(summaries[("lora", kind)], summaries[("full", kind)], strict=True))
            pairs = [a["tps"] / b["tps"] for a, b in a_b]
            best = [a["best"] / b["best"] for a, b in a_b]
            rss = [a["rss"] / b["rss"] for a, b in zip(summaries[("lora", kind)], summaries[("full", kind)],
                                                       strict=True)]
            print(f"  LoRA/full {kind:12} tokens/s {spread(pairs)}   best steps {spread(best)}   peak RSS {spread(rss)}")


if __name__ == "__main__":
    main()
