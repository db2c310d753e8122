"""Trainer on CPU: kubetune's trainer against a plain transformers Trainer script, in one run.

    .venv/bin/python benchmarks/train_cpu.py [--steps 300] [--batch 8] [--seq 128] [--repeats 5]

Both sides train the same tiny offline Llama (offline_models.build_tiny_causal_lm) on the same
instruction rows, rendered with the same chat template into the same token ids, with the same
steps, batch size, sequence limit, learning rate, seed, logging and checkpoint cadence, each in
its own process with the same environment. kubetune runs its real entrypoint
(`python -m kubetune_trainer train --config …`: quality gate, callbacks for metrics, progress,
preemption and checkpoint completion, publishing); the baseline is the script a person would
write with `transformers.Trainer` and nothing else (it does not import kubetune).

Figures: the training loop only (transformers' own `train_runtime` of `trainer.train()`, which
both report), as optimizer steps/s and input tokens/s (non-padding tokens of every batch), and the
wall-clock of the whole process. Runs alternate (kubetune, baseline, baseline, kubetune, …), so a
noisy neighbour hurts both sides alike; the best of `--repeats` runs (as `timeit` does: the run
least disturbed by other work on the machine) is compared, and the median is printed beside it.
Goal: kubetune ≥ 0.95 × the baseline's steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.95


# --------------------------------------------------------------------------- the plain transformers script


def baseline(config_path: Path, result_path: Path) -> None:
    """A plain transformers Trainer run with the settings of the TrainerConfig at `config_path`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    cfg = json.loads(config_path.read_text())
    hp = cfg["hyperparameters"]
    model_dir = cfg["baseModel"]["uri"]
    set_seed(hp["seed"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = []
    for line in Path(cfg["data"]["train"]["uri"]).read_text().splitlines():
        row = json.loads(line)
        chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        text = tok.apply_chat_template(chat, tokenize=False)
        ids = tok(text, add_special_tokens=False, truncation=True, max_length=hp["maxSeqLength"])["input_ids"]
        examples.append({"input_ids": ids, "labels": list(ids)})

    tokens = {"seen": 0}

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        tokens["seen"] += sum(len(f["input_ids"]) for f in features)
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                            for f in features]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
        }

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=str(result_path.parent / "baseline-out"),
        per_device_train_batch_size=hp["batchSizePerDevice"],
        max_steps=hp["maxSteps"],
        learning_rate=hp["learningRate"],
        lr_scheduler_type="linear",
        seed=hp["seed"],
        data_seed=hp["seed"],
        use_cpu=True,
        logging_steps=hp["loggingSteps"],
        save_strategy="steps",
        save_steps=cfg["output"]["checkpoints"]["everySteps"],
        save_total_limit=cfg["output"]["checkpoints"]["keep"],
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples), data_collator=collate)
    out = trainer.train()
    trainer.save_model(str(result_path.parent / "baseline-model"))
    result_path.write_text(json.dumps({"steps": out.global_step, "trainRuntime": out.metrics["train_runtime"],
                                       "tokens": tokens["seen"], "loss": out.training_loss}))


# --------------------------------------------------------------------------- the driver


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "KUBETUNE_TERMINATION_LOG": "/nonexistent/log"})
    for name in ("KUBETUNE_JOB_NAME", "KUBETUNE_JOB_NAMESPACE", "KUBETUNE_METRICS_PORT"):
        env.pop(name, None)
    return env


def make_data(path: Path, rows: int) -> Path:
    sys.path.insert(0, str(REPO / "trainer"))
    from kubetune_trainer.synthetic_data import CODEWORDS, domain_text, write_jsonl

    texts = domain_text(rows, seed=3)
    return write_jsonl([{"prompt": f"Name the codeword of this note: {t['text']}", "completion": CODEWORDS[i % 12]}
                        for i, t in enumerate(texts)], path)


def make_config(work: Path, model: Path, train: Path, args: argparse.Namespace, tag: str) -> Path:
    cfg = {
        "jobName": f"bench-{tag}",
        "task": "instruction",
        "baseModel": {"uri": str(model)},
        "method": {"type": "full"},
        "data": {"train": {"uri": str(train)}, "validationSplit": 0.0,
                 "quality": {"minRows": 4, "maxDuplicateFraction": 1.0}},
        "hyperparameters": {"maxSteps": args.steps, "learningRate": 1e-3, "batchSizePerDevice": args.batch,
                            "maxSeqLength": args.seq, "precision": "fp32", "loggingSteps": 10, "seed": 11},
        "evaluation": {"metrics": ["loss"]},
        "output": {"root": str(work / "out"), "checkpoints": {"everySteps": args.save_every, "keep": 1}},
        "progress": {"enabled": True},  # on, as in a pod; with no job name in the env it has no API to call
    }
    path = work / f"{tag}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_kubetune(config: Path) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kubetune_trainer", "train", "--config", str(config)],
                          capture_output=True, text=True, env=child_env(), cwd=REPO)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"kubetune run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    cfg = json.loads(config.read_text())
    version = Path(cfg["output"]["root"]) / cfg["jobName"] / "versions" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    history = json.loads((version / "training_log.json").read_text())
    final = next(e for e in reversed(history) if "train_runtime" in e and "train_loss" in e)
    return {"steps": manifest["training"]["steps"], "trainRuntime": final["train_runtime"],
            "tokens": manifest["training"]["tokensSeen"], "loss": final["train_loss"], "wall": wall}


def run_baseline(config: Path, work: Path) -> dict[str, Any]:
    result = work / "baseline-result.json"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--baseline", str(config), str(result)],
                          capture_output=True, text=True, env=child_env(), cwd=REPO)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"baseline run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return {**json.loads(result.read_text()), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint cadence of both sides")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--baseline", nargs=2, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline:
        baseline(Path(args.baseline[0]), Path(args.baseline[1]))
        return

    sys.path.insert(0, str(REPO / "trainer"))
    from kubetune_trainer.offline_models import build_tiny_causal_lm

    cache = Path(os.environ.get("KUBETUNE_TEST_MODELS", Path.home() / ".cache" / "kubetune" / "test-models"))
    model = build_tiny_causal_lm(cache / "tiny-causal-lm")
    results: dict[str, list[dict[str, Any]]] = {"kubetune": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        train = make_data(Path(tmp) / "train.jsonl", args.rows)
        for i in range(args.repeats):
            order = ["kubetune", "baseline"] if i % 2 == 0 else ["baseline", "kubetune"]
            for side in order:
                work = Path(tmp) / f"{side}-{i}"
                work.mkdir()
                config = make_config(work, model, train, args, f"{side}-{i}")
                r = run_kubetune(config) if side == "kubetune" else run_baseline(config, work)
                results[side].append(r)
                print(f"  run {i + 1} {side:8}: {r['steps'] / r['trainRuntime']:7.2f} steps/s "
                      f"{r['tokens'] / r['trainRuntime']:9.0f} tokens/s  loop {r['trainRuntime']:.2f} s  "
                      f"process {r['wall']:.1f} s  loss {r['loss']:.4f}", flush=True)

    def rate(r: dict[str, Any], key: str) -> float:
        return float(r[key] / r["trainRuntime"])

    def figure(side: str, key: str, how: str) -> float:
        values = [rate(r, key) for r in results[side]]
        return max(values) if how == "best" else statistics.median(values)

    tokens = {side: sorted({r["tokens"] for r in rs}) for side, rs in results.items()}
    print(f"\nTrainer on CPU: tiny Llama, {args.steps} steps, batch {args.batch}, seq <= {args.seq}, "
          f"checkpoint every {args.save_every}, {args.repeats} runs each, {os.cpu_count()} cores")
    print(f"{'':10}{'best steps/s':>14}{'median':>9}{'best tokens/s':>15}{'median':>9}{'process s':>11}"
          f"{'tokens/run':>12}")
    for side in ("kubetune", "baseline"):
        print(f"{side:10}{figure(side, 'steps', 'best'):14.2f}{figure(side, 'steps', 'median'):9.2f}"
              f"{figure(side, 'tokens', 'best'):15.0f}{figure(side, 'tokens', 'median'):9.0f}"
              f"{statistics.median(r['wall'] for r in results[side]):11.1f}"
              f"{'/'.join(str(t) for t in tokens[side]):>12}")
    best = figure("kubetune", "steps", "best") / figure("baseline", "steps", "best")
    med = figure("kubetune", "steps", "median") / figure("baseline", "steps", "median")
    best_tokens = figure("kubetune", "tokens", "best") / figure("baseline", "tokens", "best")
    print(f"ratio kubetune/baseline: steps/s best {best:.3f} (tokens/s {best_tokens:.3f}), median {med:.3f}; "
          f"goal {GOAL} on the best runs: {'met' if best >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
