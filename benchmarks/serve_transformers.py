"""kubetune-serve (the transformers runtime) against a plain transformers `pipeline` loop, in one run.

    .venv/bin/python benchmarks/serve_transformers.py [--model smollm2|tiny] [--requests 24] [--max-tokens 24]

Both sides answer the same chat prompts with the same model (SmolLM2-135M-Instruct exported from
the offline package, or the tiny offline Llama), greedy, exactly `--max-tokens` new tokens each
(`ignore_eos` on the server, `min_new_tokens` in the pipeline), each in its own process with the
same environment and torch thread count, one after the other so they never share the CPU:

- baseline: `transformers.pipeline("text-generation")` called in a loop on the chat messages, the
  script a person would write with nothing else (it does not import kubetune). It gets the same
  flush-to-zero setting the runtime applies on CPU (docs/serving.md), so the comparison measures
  what the server adds, not the denormal fix;
- kubetune: the real `kubetune-serve` process on a loopback port, called over HTTP with
  `/v1/chat/completions`, one request at a time (concurrency 1, the pipeline's situation), then
  with `--concurrency` clients at once against `--max-concurrency` worker slots.

Figures: requests/s (requests over the wall time of the measured phase) and p50/p99 latency per
request (p99 of a few dozen samples is close to the maximum), after two warm-up requests per side;
the ratios compare kubetune with the baseline in this run.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear emails.",
    "Explain what a Kubernetes operator is in one paragraph.",
    "Write a haiku about autumn leaves.",
    "How do I reverse a list in Python?",
    "What are the health benefits of walking?",
    "Summarise the plot of Romeo and Juliet.",
    "Why is the sky blue?",
]
WARMUP = 2


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": statistics.median(latencies),
            "p99": percentile(latencies, 99), "wall": wall}


# --------------------------------------------------------------------------- the plain pipeline loop


def baseline(model_dir: str, requests: int, max_tokens: int, out: Path) -> None:
    """The plain script: a text-generation pipeline called in a loop (runs in its own process)."""
    import torch
    from transformers import pipeline

    torch.set_flush_denormal(True)  # what kubetune-serve does on CPU; see the module docstring
    generate = pipeline("text-generation", model=model_dir, dtype=torch.float32, device="cpu")
    kwargs = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False,
              "temperature": None, "top_p": None, "top_k": None, "return_full_text": False}
    tokens = []
    for i in range(WARMUP):
        generate([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], **kwargs)
    latencies = []
    began = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        result = generate([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], **kwargs)
        latencies.append(time.perf_counter() - t)
        answer = result[0]["generated_text"]
        text = answer[-1]["content"] if isinstance(answer, list) else answer
        tokens.append(len(generate.tokenizer(text, add_special_tokens=False)["input_ids"]))
    wall = time.perf_counter() - began
    out.write_text(json.dumps({**summary(latencies, wall), "tokens": tokens, "threads": torch.get_num_threads()}))


def run_baseline(model_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "baseline.json"
    proc = subprocess.run([sys.executable, __file__, "--baseline", str(model_dir), str(args.requests),
                           str(args.max_tokens), str(out)], capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --------------------------------------------------------------------------- kubetune-serve


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(model_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx

    port = free_port()
    script = Path(sys.executable).with_name("kubetune-serve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kubetune_trainer.serve"]
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([*command, "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--max-concurrency", str(args.concurrency), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=child_env())
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"kubetune-serve exited {proc.returncode}:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        ready_after = time.perf_counter() - started
        client = httpx.Client(base_url=base, timeout=600, limits=httpx.Limits(max_connections=args.concurrency + 1))

        def ask(i: int) -> tuple[float, int]:
            body = {"model": model_dir.name, "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
            t = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            latency = time.perf_counter() - t
            r.raise_for_status()
            return latency, int(r.json()["usage"]["completion_tokens"])

        for i in range(WARMUP):
            ask(i)
        phases: dict[str, Any] = {"ready_seconds": ready_after}
        for name, workers in (("serial", 1), ("concurrent", args.concurrency)):
            began = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(ask, range(args.requests)))
            wall = time.perf_counter() - began
            phases[name] = {**summary([lat for lat, _ in results], wall), "tokens": [n for _, n in results]}
            if workers == 1 and args.concurrency == 1:
                break
        client.close()
        return phases
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


# --------------------------------------------------------------------------- main


def model_path(name: str) -> Path:
    cache = Path(os.environ.get("KUBETUNE_TEST_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "test-models"))
    if name == "tiny":
        from kubetune_trainer.offline_models import build_tiny_causal_lm

        return build_tiny_causal_lm(cache / "tiny-causal-lm")
    from kubetune_trainer.offline_models import export_smollm2

    return export_smollm2(cache / "smollm2-135m-instruct")


def row(name: str, r: dict[str, Any]) -> str:
    return f"| {name} | {r['requests']} | {r['rps']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} |"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline":
        baseline(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=2, help="clients and server slots of the concurrent phase")
    args = p.parse_args()
    model_dir = model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="kubetune-serve-bench-") as tmp:
        work = Path(tmp)
        base = run_baseline(model_dir, args, work)
        server = run_server(model_dir, args, work)
    expected = [args.max_tokens] * args.requests
    assert server["serial"]["tokens"] == expected, f"server generated {server['serial']['tokens']}"
    serial = server["serial"]
    print(f"model {args.model} ({model_dir}), {args.requests} requests of {args.max_tokens} new tokens, greedy; "
          f"torch threads {base['threads']}; baseline tokens re-encoded: {sorted(set(base['tokens']))}; "
          f"server ready after {server['ready_seconds']:.1f}s")
    print("| side | requests | requests/s | p50 s | p99 s |\n| --- | --- | --- | --- | --- |")
    print(row("transformers pipeline loop", base))
    print(row("kubetune-serve, 1 client", serial))
    if "concurrent" in server:
        print(row(f"kubetune-serve, {args.concurrency} clients / {args.concurrency} slots", server["concurrent"]))
    print(f"ratio kubetune/baseline, 1 client: requests/s {serial['rps'] / base['rps']:.3f}, "
          f"p50 {serial['p50'] / base['p50']:.3f}, p99 {serial['p99'] / base['p99']:.3f}")
    if "concurrent" in server:
        c = server["concurrent"]
        print(f"ratio kubetune/baseline, {args.concurrency} clients: requests/s {c['rps'] / base['rps']:.3f}, "
              f"p50 {c['p50'] / base['p50']:.3f}, p99 {c['p99'] / base['p99']:.3f}")


if __name__ == "__main__":
    main()
