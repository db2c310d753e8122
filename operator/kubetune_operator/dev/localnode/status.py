"""Pod status as the kubelet reports it, computed from the node's own record of the pod (pure).

- Container statuses: `state` running / waiting{reason, message} / terminated{exitCode, reason,
  message, startedAt, finishedAt}, `lastState` the previous run, `restartCount` = runs before the
  latest, `started` (startup probe passed), `ready` (readiness), `containerID` `local://…`,
  `image` as written in the spec, `imageID` "" (no image is pulled).
- Phase (kubelet `getPhase`): Pending until initialised and every container has started once;
  Running while one runs or will be restarted; Succeeded/Failed once every container terminated
  and `restartPolicy` forbids another run (or the pod is being deleted).
- Conditions PodReadyToStartContainers, Initialized, ContainersReady, Ready; `lastTransitionTime`
  moves only on a flip. Terminal pods are not Ready (reason PodCompleted).
- Termination messages (kubelet rules): the file at `terminationMessagePath`, at most 4096 bytes;
  with `FallbackToLogsOnError`, an empty file and a non-zero exit code, the last 80 lines / 2048
  bytes of the container's log.
- Restart back-off: the first restart is immediate, then 10 s doubling to 300 s; a run that lasted
  10 minutes resets it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune_operator.dev.localnode.state import ContainerState, PodState, Run

MAX_MESSAGE_BYTES = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0


def now_rfc3339(wall: float | None = None) -> str:
    t = dt.datetime.fromtimestamp(wall, dt.UTC) if wall is not None else dt.datetime.now(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def termination_message(file_content: bytes, exit_code: int, policy: str | None, log_tail: bytes) -> str:
    """The `terminated.message` of a run: the file, or (FallbackToLogsOnError) the log's tail."""
    message = file_content[:MAX_MESSAGE_BYTES]
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail.splitlines(keepends=True)[-FALLBACK_LINES:]
        message = b"".join(lines)[-FALLBACK_BYTES:]
    return message.decode(errors="replace")


def next_backoff(previous: float, last_run_seconds: float) -> float:
    """Delay before the next restart. `previous` is the delay used for the last restart, -1 if none.

    The first restart is immediate, then 10 s doubling to 300 s; a run of 10 minutes resets it."""
    if previous < 0 or last_run_seconds >= BACKOFF_RESET_AFTER:
        return 0.0
    if previous == 0:
        return BACKOFF_INITIAL
    return min(previous * 2, BACKOFF_MAX)


def should_restart(policy: str, exit_code: int, init: bool) -> bool:
    if policy == "Always":
        # Init containers of an Always pod are re-run only on failure (they must complete once).
        return exit_code != 0 if init else True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def _terminated(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": run.exit_code,
        "reason": run.reason or ("Completed" if run.exit_code == 0 else "Error"),
        "startedAt": run.started_at,
        "finishedAt": run.finished_at,
        "containerID": f"local://{run.container_id}",
    }
    if run.message:
        out["message"] = run.message
    return out


def container_status(spec: Mapping[str, Any], c: ContainerState) -> dict[str, Any]:
    latest = c.latest
    status: dict[str, Any] = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "restartCount": max(len(c.runs) - 1, 0),
        "started": bool(c.running and c.started),
        "ready": bool(c.running and c.ready),
        "lastState": {},
    }
    if latest is not None:
        status["containerID"] = f"local://{latest.container_id}"
    if latest is not None and not latest.finished:
        status["state"] = {"running": {"startedAt": latest.started_at}}
        if len(c.runs) > 1:
            status["lastState"] = {"terminated": _terminated(c.runs[-2])}
    elif latest is not None and c.restart_at is None:
        status["state"] = {"terminated": _terminated(latest)}
        if len(c.runs) > 1:
            status["lastState"] = {"terminated": _terminated(c.runs[-2])}
    else:
        waiting: dict[str, Any] = {"reason": c.waiting_reason or "ContainerCreating"}
        if c.waiting_message:
            waiting["message"] = c.waiting_message
        status["state"] = {"waiting": waiting}
        if latest is not None:
            status["lastState"] = {"terminated": _terminated(latest)}
    return status


def pod_phase(pod: Mapping[str, Any], st: PodState, deleting: bool = False) -> str:
    spec = pod["spec"]
    policy = spec.get("restartPolicy", "Always")
    for ic in spec.get("initContainers") or []:
        c = st.containers.get(ic["name"])
        latest = c.latest if c else None
        if latest is not None and latest.finished and latest.exit_code != 0 and c is not None and c.done:
            return "Failed"  # an init container failed for good
        if deleting and (latest is None or latest.exit_code != 0):
            return "Failed"
        if latest is None or not latest.finished or latest.exit_code != 0:
            return "Pending"
    running = waiting = stopped = succeeded = 0
    for rc in spec.get("containers") or []:
        c = st.containers.get(rc["name"])
        latest = c.latest if c else None
        if latest is None:
            waiting += 1
        elif not latest.finished:
            running += 1
        else:
            stopped += 1
            succeeded += latest.exit_code == 0
    if deleting and running == 0:
        return "Succeeded" if waiting == 0 and stopped == succeeded else "Failed"
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if policy == "Never":
        return "Failed"
    # OnFailure: the failed ones will be restarted unless marked done.
    containers = [st.containers[rc["name"]] for rc in spec.get("containers") or []]
    return "Failed" if all(c.done for c in containers) else "Running"


def _condition(previous: Mapping[str, Mapping[str, Any]], type_: str, ok: bool, reason: str | None,
               message: str | None, now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(type_)
    cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": prev.get("lastTransitionTime") if prev and
                            prev.get("status") == status else now}
    if not ok and reason:
        cond["reason"] = reason
    if not ok and message:
        cond["message"] = message
    return cond


def pod_status(pod: Mapping[str, Any], st: PodState, host_ip: str, deleting: bool = False,
               now: str | None = None) -> dict[str, Any]:
    """The pod's whole `status` as this node reports it (conditions of other writers are kept)."""
    now = now or now_rfc3339()
    spec = pod["spec"]
    current = pod.get("status") or {}
    previous = {c["type"]: c for c in current.get("conditions") or []}
    phase = pod_phase(pod, st, deleting)
    inits: Sequence[Mapping[str, Any]] = spec.get("initContainers") or []
    regular: Sequence[Mapping[str, Any]] = spec.get("containers") or []
    init_statuses = [container_status(c, st.containers.get(c["name"]) or ContainerState(c["name"], init=True))
                     for c in inits]
    statuses = [container_status(c, st.containers.get(c["name"]) or ContainerState(c["name"])) for c in regular]
    incomplete = [s["name"] for s in init_statuses
                  if (s["state"].get("terminated") or {}).get("exitCode") != 0]
    unready = [s["name"] for s in statuses if not s["ready"]]
    terminal = phase in ("Succeeded", "Failed")
    conditions = [
        _condition(previous, "PodReadyToStartContainers", st.sandbox_ready and not terminal, None, None, now),
        _condition(previous, "Initialized", not incomplete, "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(incomplete)}]", now),
        _condition(previous, "ContainersReady", not unready and not terminal,
                   "PodCompleted" if terminal else "ContainersNotReady",
                   None if terminal else f"containers with unready status: [{' '.join(unready)}]", now),
        _condition(previous, "Ready", not unready and not terminal,
                   "PodCompleted" if terminal else "ContainersNotReady",
                   None if terminal else f"containers with unready status: [{' '.join(unready)}]", now),
    ]
    if not inits:
        conditions[1]["status"] = "True"
    ours = {c["type"] for c in conditions}
    conditions += [c for c in current.get("conditions") or [] if c["type"] not in ours]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": st.ip,
        "podIPs": [{"ip": st.ip}],
        "startTime": st.start_time,
        "containerStatuses": statuses,
        "qosClass": current.get("qosClass", "BestEffort"),
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    return status


def comparable(status: Mapping[str, Any]) -> Any:
    """The parts of a status whose change is worth a PATCH (transition times follow the rest)."""
    conds = sorted((c["type"], c["status"], c.get("reason")) for c in status.get("conditions") or [])
    return (status.get("phase"), conds, status.get("containerStatuses"), status.get("initContainerStatuses"),
            status.get("podIP"), status.get("startTime"))
