"""The demo's data set and manifests: real package metadata, a stable split, objects the API accepts."""

from __future__ import annotations

import importlib.metadata
import json

from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.modeldeployment import ModelDeployment
from kubetune_operator.dev.demo import dataset, manifests


def test_rows_come_from_installed_package_summaries() -> None:
    facts = {f.name.lower(): f for f in dataset.installed_packages()}
    summary = importlib.metadata.metadata("croniter")["Summary"]
    assert facts["croniter"].summary == " ".join(summary.split())
    rows = facts["croniter"].rows()
    assert rows[0] == {"question": "What is the Python package croniter for?",
                       "answer": rows[0]["answer"]} and rows[0]["answer"].startswith(summary.strip()[:20])


def test_selection_is_stable_and_starts_with_the_featured_packages() -> None:
    facts = dataset.installed_packages()
    chosen = dataset.select(facts)
    assert chosen == dataset.select(list(reversed(facts))) and len(chosen) == 32
    assert {f.name.lower() for f in chosen[:3]} == {"kubetune", "croniter", "kopf"}
    train = dataset.train_jsonl(chosen).splitlines()
    validation = [json.loads(line) for line in dataset.validation_jsonl(chosen).splitlines()]
    assert len(train) == 2 * len(chosen) and set(json.loads(train[0])) == {"question", "answer"}
    # Validation asks about the same packages in a wording that training never uses.
    assert len(validation) == len(chosen)
    assert not {row["question"] for row in validation} & {json.loads(line)["question"] for line in train}


def test_demo_objects_validate_against_the_api_models() -> None:
    spec = manifests.DemoSpec(namespace="demo", placement={"nodeSelector": {"a": "b"}})
    ftj = FineTuneJob.model_validate(manifests.fine_tune_job(spec))
    assert ftj.spec.resources.nodes == 2 and ftj.spec.output.access_mode == "ReadWriteMany"
    assert ftj.spec.pod.node_selector == {"a": "b"}
    for body in (manifests.fine_tuned_deployment(spec), manifests.base_deployment(spec)):
        md = ModelDeployment.model_validate(body)
        assert md.spec.runtime.type == "transformers" and md.spec.auth is not None
