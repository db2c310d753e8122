"""Where a training step's time goes: kubetune's model, method and loss under torch.profiler.

    .venv/bin/python benchmarks/profile_train.py --method lora [--lora-dropout 0.05] [--no-packing] [--steps 4]

Builds the model exactly as `kubetune-train train` does (TrainerConfig → prepare_data → load_model →
apply_method, the CausalCollator and KubetuneTrainer's loss, `task_loss_sum`) on SmolLM2-135M-Instruct
(`--model` for another local directory), runs one warm-up step, then profiles `--steps - 1` optimizer
steps (forward, loss, backward, AdamW) and prints the operators by self CPU time, tokens/s and peak
RSS. The Trainer's loop around it (callbacks, logging) is left out: benchmarks/train_cpu.py measures
the whole entrypoint.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))
MODEL = Path.home() / ".cache" / "kubetune" / "models" / "smollm2-135m-instruct"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["full", "lora"], default="lora")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--no-packing", action="store_true")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()

    import torch
    from kubetune_trainer.contract.config import TrainerConfig
    from kubetune_trainer.data.preparation import CausalCollator
    from kubetune_trainer.data.synthetic import write_jsonl
    from kubetune_trainer.train.hf_trainer import model_inputs, task_loss_sum
    from kubetune_trainer.train.model_loading import apply_method, load_model, load_tokenizer
    from kubetune_trainer.train.training import prepare_data

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_cpu import make_rows

    tmp = Path(tempfile.mkdtemp(prefix="kubetune-profile-"))
    write_jsonl(make_rows(args.rows, seed=5), tmp / "train.jsonl")
    method: dict[str, Any] = {"type": args.method}
    if args.method == "lora":
        method["lora"] = {"r": 16, "alpha": 32, "dropout": args.lora_dropout, "targetModules": ["all-linear"]}
    cfg = TrainerConfig.model_validate({
        "jobName": "profile", "task": "instruction", "baseModel": {"uri": str(args.model)}, "method": method,
        "data": {"train": {"uri": str(tmp / "train.jsonl")}, "validationSplit": 0.0,
                 "quality": {"minRows": 4, "maxDuplicateFraction": 1.0, "maxTokenLengthFraction": 1.0}},
        "hyperparameters": {"maxSteps": args.steps, "learningRate": 1e-4, "batchSizePerDevice": args.batch,
                            "maxSeqLength": args.seq, "precision": "fp32", "packing": not args.no_packing,
                            "seed": 11},
        "output": {"root": str(tmp / "out")},
    })
    tok = load_tokenizer(cfg.base_model)
    data = prepare_data(cfg, tok)
    torch.manual_seed(0)
    model = apply_method(load_model(cfg), cfg)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    collate = CausalCollator(tok.pad_token_id)
    batches = [collate(data.train[i * args.batch:(i + 1) * args.batch]) for i in range(args.steps)]

    def step(batch: dict[str, Any]) -> None:
        out = model(**model_inputs(batch))
        total, count = task_loss_sum(out.logits, batch["labels"], True)
        (total / count.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    times, tokens = [], 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches[1:]:
            started = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - started)
            tokens += int((batch["input_ids"] != tok.pad_token_id).sum()) if "position_ids" in batch \
                else int(batch["attention_mask"].sum())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    print(f"{args.method} dropout={args.lora_dropout if args.method == 'lora' else '-'} "
          f"packing={not args.no_packing}: {tokens / sum(times):.0f} tokens/s (under the profiler), "
          f"step p50 {sorted(times)[len(times) // 2]:.2f} s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB, "
          f"shapes {[tuple(b['input_ids'].shape) for b in batches]}")


if __name__ == "__main__":
    main()
