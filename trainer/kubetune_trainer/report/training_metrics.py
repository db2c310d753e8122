"""Prometheus metrics of a training run: loss, eval loss, tokens/s, step time, step.

Rank 0 keeps them in its own registry and (a) serves them on KUBETUNE_METRICS_PORT when that is
set (a PodMonitor scrapes the pod), and (b) rewrites `<run>/metrics.prom` in the text format on
every log, for the node-exporter textfile collector or a person with `cat`.
Tokens are the non-padding input tokens of the batches, summed over all ranks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)


class TrainingMetricsCallback(TrainerCallback):
    def __init__(self, textfile: Path | None, job: str, run: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["job_name", "run"]
        self.label_values = (job, str(run))
        self.loss = Gauge("kubetune_train_loss", "Training loss at the last log step.", labels, registry=self.registry)
        self.eval_loss = Gauge("kubetune_eval_loss", "Loss on the validation split.", labels, registry=self.registry)
        self.tokens_per_second = Gauge("kubetune_train_tokens_per_second",
                                       "Input tokens (no padding, all ranks) per second since the last log.",
                                       labels, registry=self.registry)
        self.step_seconds = Gauge("kubetune_train_step_seconds", "Mean seconds per optimizer step since the last log.",
                                  labels, registry=self.registry)
        self.step = Gauge("kubetune_train_step", "Optimizer steps done.", labels, registry=self.registry)
        self.total_steps = Gauge("kubetune_train_total_steps", "Optimizer steps planned.", labels,
                                 registry=self.registry)
        self.tokens = Counter("kubetune_train_tokens", "Input tokens trained on by this process's run.", labels,
                              registry=self.registry)
        self.textfile = textfile
        self._last_time: float | None = None
        self._last_step = 0
        self._last_tokens = 0
        self._served = False
        self.history: list[dict[str, float]] = []

    def _serve(self) -> None:
        port = os.environ.get("KUBETUNE_METRICS_PORT")
        if port and not self._served:
            from prometheus_client import start_http_server

            start_http_server(int(port), registry=self.registry)
            self._served = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_time = time.monotonic()
        self._last_step = state.global_step
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if state.is_world_process_zero:
            self._serve()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if logs is None or not state.is_world_process_zero:
            return
        lv = self.label_values
        now = time.monotonic()
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        steps = state.global_step - self._last_step
        if "loss" in logs and self._last_time is not None and steps > 0:
            elapsed = now - self._last_time
            step_time = elapsed / steps
            tps = (tokens - self._last_tokens) / elapsed if elapsed > 0 else 0.0
            logs["tokens_per_second"] = round(tps, 1)
            logs["step_seconds"] = round(step_time, 4)
            self.tokens_per_second.labels(*lv).set(tps)
            self.step_seconds.labels(*lv).set(step_time)
            self.tokens.labels(*lv).inc(max(tokens - self._last_tokens, 0))
            self._last_time, self._last_step, self._last_tokens = now, state.global_step, tokens
            self.history.append({"step": state.global_step, "tokensPerSecond": tps, "stepSeconds": step_time})
        if "loss" in logs:
            self.loss.labels(*lv).set(logs["loss"])
        if "eval_loss" in logs:
            self.eval_loss.labels(*lv).set(logs["eval_loss"])
        self.step.labels(*lv).set(state.global_step)
        self.total_steps.labels(*lv).set(state.max_steps)
        log.info("train log", extra={"step": state.global_step, "total_steps": state.max_steps,
                                     **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})
        self.write_textfile()

    def write_textfile(self) -> None:
        if self.textfile is None:
            return
        from prometheus_client import write_to_textfile

        self.textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.textfile), self.registry)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if metrics and "eval_loss" in metrics and state.is_world_process_zero:
            self.eval_loss.labels(*self.label_values).set(metrics["eval_loss"])
