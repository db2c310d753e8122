"""The model card (README.md of a version): what a person reads before deploying it, rendered from
the version's manifest (contract.results.VersionManifest)."""

from __future__ import annotations

import json
from typing import Any

from kubetune_trainer.contract.gates import gate_from_manifest, gate_verdict
from kubetune_trainer.contract.results import VersionManifest

# The run's trigger (FineTuneJob status.currentRun.trigger) in words.
_TRIGGERS = {"Create": "the job's creation", "Schedule": "its schedule (spec.schedule)",
             "SpecChange": "a spec change", "Manual": "an on-demand request (kubetune.io/retrain)",
             "DataChange": "a change of its training data (spec.retrain.onDataChange)"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(manifest: VersionManifest, objective: str) -> str:
    """README.md of the version: front matter for the Hub, the gate in words, metrics, loading code,
    and the manifest itself but its `files` (the card is one of them)."""
    m = manifest
    gate = gate_from_manifest(m.gate)
    gate_line = gate_verdict(gate, m.metrics, m.gate.passed if gate is not None and m.gate is not None else True)
    gate_line = gate_line[0].upper() + gate_line[1:] + "."
    metrics = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(m.metrics.items())) or "| (none) | |"
    hyper = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in m.hyperparameters.items())
    libs = ", ".join(f"{k} {v}" for k, v in m.libraries.items())
    labels = f"\n**Labels:** {', '.join(m.labels)}\n" if m.labels else ""
    distill = ""
    if m.teacher:
        distill = f"\n**Distilled from:** `{m.teacher}`\n"
    embedded = {k: v for k, v in m.to_dict().items() if k != "files"}
    return f"""---
library_name: {"peft" if m.adapter else "transformers"}
base_model: {m.base_model}
tags: [kubetune, {m.task}, {m.method}]
---

# {m.version_name}

{objective.strip() or "_No objective was given._"}

| | |
| --- | --- |
| job | `{m.job_name}` (run {m.run}, version {m.version}{f"; started by {_TRIGGERS.get(m.trigger, m.trigger)}" if m.trigger else ""}) |
| task | {m.task} |
| method | {m.method} ({m.format}) |
| base model | `{m.base_model}` |
| training data | sha256 `{m.data_digest}` ({m.data["trainExamples"]} training examples, {m.data["validationExamples"]} validation) |
| strategy | {m.strategy["chosen"]}: {m.strategy["reason"]} |
| created | {m.created_at} |
{labels}{distill}
## Evaluation gate

{gate_line}

## Metrics (validation set)

| metric | value |
| --- | --- |
{metrics}

## Loss

![training and evaluation loss](loss.png)

## Hyperparameters

| name | value |
| --- | --- |
{hyper}

## Libraries

{libs}

## Loading

```python
{_loading_snippet(m)}
```

<details><summary>manifest.json</summary>

```json
{json.dumps(embedded, indent=2)}
```
</details>
"""


def _loading_snippet(m: VersionManifest) -> str:
    if m.format == "adapter":
        cls = "AutoPeftModelForSequenceClassification" if m.task == "classification" else "AutoPeftModelForCausalLM"
        return f'from peft import {cls}\nmodel = {cls}.from_pretrained("<this directory>")'
    cls = "AutoModelForSequenceClassification" if m.task == "classification" else "AutoModelForCausalLM"
    return f'from transformers import {cls}\nmodel = {cls}.from_pretrained("<this directory>")'
