"""The watch event of the FineTuneJob controller's own status write starts no pass, but only when nobody
else wrote between the pass's read and its patch: kopf hands over only the newest event of a burst, so
a spec change, an annotation or the trainer's progress in between must still start a pass."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_operator.api.finetunejob import FineTuneJobStatus
from kubetune_operator.controllers import finetunejob as ftj_controller
from kubetune_operator.controllers.finetunejob import FineTuneJobController
from kubetune_operator.core.finetunejob.lifecycle import RunPlan
from kubetune_operator.runtime.settings import OperatorSettings

READ: dict[str, Any] = {
    "metadata": {"name": "job", "namespace": "ns", "generation": 3, "resourceVersion": "100",
                 "labels": {"team": "a"}, "annotations": None},
    "status": {"phase": "Validating", "progress": {"step": 5}},
}


def written(**changes: Any) -> dict[str, Any]:
    meta = {**READ["metadata"], "resourceVersion": "102", **changes.pop("metadata", {})}
    return {"metadata": meta, "status": {**READ["status"], "phase": "Queued", **changes.pop("status", {})}}


@pytest.mark.parametrize(("response", "own"), [
    (written(), True),
    (written(metadata={"generation": 4}), False),  # the spec changed in between
    (written(metadata={"annotations": {"kubetune.io/retrain": "x"}}), False),  # an on-demand run was asked for
    (written(metadata={"labels": {"team": "b"}}), False),
    (written(metadata={"deletionTimestamp": "2026-12-01T12:00:00Z"}), False),
    (written(status={"progress": {"step": 6}}), False),  # the trainer reported in between
])
def test_only_an_unmixed_own_write_is_skipped(monkeypatch: pytest.MonkeyPatch, response: dict[str, Any],
                                              own: bool) -> None:
    monkeypatch.setattr(ftj_controller.kube, "patch_status", lambda *a, **k: response)
    controller = FineTuneJobController(OperatorSettings())
    controller.write(READ, {"phase": "Validating", "progress": {"step": 5}},
                     RunPlan(status=FineTuneJobStatus(phase="Queued")))
    assert controller.is_own_write("ns", "job", "102") is own
    assert not controller.is_own_write("ns", "job", "101") and not controller.is_own_write("ns", "job", None)
    controller.forget("ns", "job")
    assert not controller.is_own_write("ns", "job", "102")
