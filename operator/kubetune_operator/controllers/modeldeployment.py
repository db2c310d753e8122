"""ModelDeployment controller: kopf wiring. Every trigger calls one converging reconcile
(controllers.modeldeployment_reconcile), from
- create and spec updates (a `kopf.PermanentError` for a spec that can never work),
- wakeups (runtime.wakeups): at the time the last reconcile asked for (a canary due for promotion,
  a stuck server pod due to turn Degraded), and every object once per `settings.resync_seconds`
  (a lost watch event, a referenced Secret created since: nothing watches those),
- FineTuneJob events that change its versions (auto-promotion within moments), and
- events of the server Deployments (readiness reaches status at once).
No finalizer: children go with their owner reference (STYLE.md pitfall 6), and wakeups are not kopf
timers, which would put one on every object.

Importing the module registers nothing and reads no settings: `setup(cfg)`, which `kubetune run`
calls before kopf starts, creates the controller and registers its handlers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import kopf

from kubetune_operator.api import FINETUNEJOB_PLURAL, GROUP, MODELDEPLOYMENT_PLURAL, VERSION
from kubetune_operator.api.wellknown import LABEL_MANAGED_BY, LABEL_MODELDEPLOYMENT, MANAGED_BY
from kubetune_operator.controllers.audit import sinks as audit_sinks
from kubetune_operator.controllers.modeldeployment_children import ServerImages
from kubetune_operator.controllers.modeldeployment_reconcile import ModelDeploymentController, Reconciled
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_operator.runtime.wakeups import Wakeups

WAKEUPS_KIND = "modeldeployment"
JobKey = tuple[str | None, str]


def setup(cfg: OperatorSettings) -> ModelDeploymentController:
    """Create the controller with the operator's settings and register its kopf handlers and its
    wakeups loop. Call once per process, before kopf.operator runs."""
    controller = ModelDeploymentController(
        ServerImages(serve=cfg.serve_image, vllm=cfg.vllm_image, fetch=cfg.trainer_image), audit_sinks(cfg))

    def requeue(namespace: str, name: str) -> datetime | None:
        return controller.reconcile(namespace, name).wake_at

    wakeups = Wakeups(WAKEUPS_KIND, requeue, safety_seconds=cfg.resync_seconds)
    register_handlers(controller, wakeups)
    wakeups.register()
    return controller


def modeldeployments_by_job(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[JobKey, str] | None:
    """kopf index: (namespace, FineTuneJob name) -> the ModelDeployments that serve from it."""
    ref = (spec.get("model") or {}).get("fineTuneJobRef") or {}
    return {(namespace, ref["name"]): name} if ref.get("name") else None


def register_handlers(controller: ModelDeploymentController, wakeups: Wakeups) -> None:
    """Register the kopf handlers. kopf passes every argument by keyword; `namespace` is None only
    for cluster-scoped kinds. The ids are the handlers' names as before the move into this function
    (runtime.logs.QUIET_HANDLERS names the watch handlers whose success lines are dropped)."""

    def reconcile(namespace: str | None, name: str) -> Reconciled:
        result = controller.reconcile(str(namespace), name)
        wakeups.wake_at(str(namespace), name, result.wake_at)
        return result

    def reconcile_or_fail(namespace: str | None, name: str) -> None:
        invalid = reconcile(namespace, name).invalid
        if invalid is not None:
            raise kopf.PermanentError(invalid.message)

    kopf.index(GROUP, VERSION, MODELDEPLOYMENT_PLURAL, id="modeldeployments_by_job")(modeldeployments_by_job)

    @kopf.on.create(GROUP, VERSION, MODELDEPLOYMENT_PLURAL, id="modeldeployment_created")
    def modeldeployment_created(namespace: str | None, name: str, **_: Any) -> None:
        reconcile_or_fail(namespace, name)

    @kopf.on.update(GROUP, VERSION, MODELDEPLOYMENT_PLURAL, field="spec", id="modeldeployment_spec_changed")
    def modeldeployment_spec_changed(namespace: str | None, name: str, **_: Any) -> None:
        reconcile_or_fail(namespace, name)

    @kopf.on.event(GROUP, VERSION, MODELDEPLOYMENT_PLURAL, id="modeldeployment_event")
    def modeldeployment_event(namespace: str | None, name: str, type: str, **_: Any) -> None:
        if type != "DELETED":
            wakeups.track(str(namespace), name)
        else:
            wakeups.forget(str(namespace), name)
            controller.forget(str(namespace), name)

    @kopf.on.event(GROUP, VERSION, FINETUNEJOB_PLURAL, id="finetunejob_versions_changed")
    def finetunejob_versions_changed(
        namespace: str | None, name: str, type: str, status: kopf.Status, **kwargs: Any
    ) -> None:
        if not controller.versions_changed(str(namespace), name, type == "DELETED", status):
            return
        index: kopf.Index[JobKey, str] = kwargs["modeldeployments_by_job"]  # kopf passes indexes by id
        for md_name in index.get((namespace, name), []):
            reconcile(namespace, md_name)

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODELDEPLOYMENT: kopf.PRESENT},
                   id="server_deployment_changed")
    def server_deployment_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        reconcile(namespace, labels[LABEL_MODELDEPLOYMENT])
