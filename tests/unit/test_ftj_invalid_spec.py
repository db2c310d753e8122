"""What the FineTuneJob controller does with values the schema lets through but nothing can interpret:
a SpecError naming the field and the fix, judged once per generation (issue 12, item 1)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubetune_operator.api import FineTuneJob
from kubetune_operator.api.common import SpecError
from kubetune_operator.builders.checks import check_spec
from kubetune_operator.core.finetunejob.lifecycle import sql_url_problem as _sql_url_problem
from kubetune_operator.core.finetunejob.validity import forget_rejection, rejected_at_this_generation

from tests.unit.test_api_cases import LORA, SCHEDULED, load_example, patched

EXAMPLES = ["finetunejob-lora-instruction.yaml", "finetunejob-classification.yaml",
            "finetunejob-deepspeed-multinode.yaml", "finetunejob-scheduled-distillation.yaml"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_interpretable(example: str) -> None:
    check_spec(FineTuneJob.model_validate(load_example(example)))


@pytest.mark.parametrize(("example", "changes", "field", "fix"), [
    (SCHEDULED, {"spec.schedule.timeZone": "Mars/Olympus_Mons"}, "spec.schedule.timeZone", "Europe/Paris"),
    (SCHEDULED, {"spec.schedule.cron": "0 0 30 2 *"}, "spec.schedule.cron", "February 30"),
    (LORA, {"spec.resources.cpu": "2k"}, "spec.resources.cpu", "millicores"),
], ids=["time-zone", "cron-never-fires", "cpu-quantity"])
def test_an_uninterpretable_value_is_a_spec_error_naming_field_and_fix(example: str, changes: dict[str, Any],
                                                                         field: str, fix: str) -> None:
    ftj = FineTuneJob.model_validate(patched(load_example(example), changes))
    with pytest.raises(SpecError) as info:
        check_spec(ftj)
    assert info.value.field == field and str(info.value).startswith(field) and fix in str(info.value)


@pytest.mark.parametrize(("value", "problem"), [
    (b"postgresql://u:secret@db:5432/rows", None),
    (b"sqlite:////data/rows.db", None),
    (b"\xe9\xff", "is not UTF-8 text"),
    (b"host=db user=u password=secret", "does not hold a URL"),
])
def test_sql_secret_contents(value: bytes, problem: str | None) -> None:
    found = _sql_url_problem(base64.b64encode(value).decode())
    assert (found is None) if problem is None else (problem in (found or ""))
    assert "secret" not in (found or "")  # never quotes the value
    assert _sql_url_problem("not base64!") == "is not UTF-8 text"


def _body(generation: int, observed: int, reason: str = "InvalidSpec") -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {
        "phase": "Failed", "observedGeneration": observed,
        "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": "m"},
                       {"type": "Running", "status": "False", "reason": reason, "message": "m"}]}}


def test_a_rejection_stands_until_the_generation_changes() -> None:
    assert rejected_at_this_generation(_body(3, 3))
    assert not rejected_at_this_generation(_body(4, 3))
    assert not rejected_at_this_generation(_body(3, 3, reason="BackoffLimitExceeded"))
    status = _body(4, 3)["status"]
    forget_rejection(status)
    assert status["conditions"] == [] and "phase" not in status
    kept = _body(4, 3, reason="BackoffLimitExceeded")["status"]
    forget_rejection(kept)
    assert len(kept["conditions"]) == 2 and kept["phase"] == "Failed"
