"""One pod's life on the local node: a worker thread per pod, driven by a 0.25 s tick.

Contract (kubelet semantics, see docs/local-node.md for what differs):

- Setup ("sandbox"): per-pod dirs, volumes and the ServiceAccount token (`volumes`); the pod IP
  and /etc/hosts were already published by the node when it first saw the pod.
- Init containers run one at a time, in order, each to completion; a failed one is re-run per
  `restartPolicy` (never for Never: the pod fails). Then every regular container starts.
- Each run is `unshare … python -m …shim <spec>` (see `shim`), in its own session, with the
  environment of `env` plus KUBETUNE_POD_IP and LD_PRELOAD of the bind shim. The image is never
  pulled: `command`/`args` run with the project's venv first on PATH.
- Probes (`probes`) drive `started`/`ready`; a failed liveness or startup probe kills the run
  (SIGTERM, then SIGKILL after the grace period) and it is restarted unless restartPolicy is Never.
- Exits: the code from the shim's exit-code file (137 when the shim itself was SIGKILLed), the
  termination message from the file mounted at `terminationMessagePath` (`status`). A restart
  waits for the back-off (state waiting CrashLoopBackOff).
- Status is PATCHed (JSON patch of the status fields, guarded by the pod's uid) only on change.
- Deletion: SIGTERM to every run's process group, SIGKILL after the grace period (the pod's
  deletionGracePeriodSeconds, else terminationGracePeriodSeconds, at least 2 s as on a kubelet),
  a final terminal status, then DELETE with gracePeriodSeconds=0 and the per-pod dir is removed.
  A pod object that vanished (force delete) gets the same kill without the API calls.
- Everything needed to adopt the pod after a node restart is in `<pod-dir>/pod.json` (`state`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_operator.dev.localnode import crilog
from kubetune_operator.dev.localnode.env import ConfigError, command_line, resolve_env
from kubetune_operator.dev.localnode.kube import Kube, KubeError
from kubetune_operator.dev.localnode.probes import ProbeTracker, run_probe
from kubetune_operator.dev.localnode.state import (
    ContainerState,
    PodState,
    Run,
    kill_group,
    process_start_time,
)
from kubetune_operator.dev.localnode.status import (
    comparable,
    next_backoff,
    now_rfc3339,
    pod_status,
    should_restart,
    termination_message,
)
from kubetune_operator.dev.localnode.volumes import (
    Materialiser,
    Mount,
    PodVolumes,
    VolumeError,
    container_mounts,
)

log = logging.getLogger(__name__)

TICK = 0.25
VOLUME_REFRESH_SECONDS = 60.0
MIN_GRACE = 2.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class NodeContext:
    """What every pod worker shares with the node."""

    kube: Kube
    node_name: str
    host_ip: str
    pods_dir: Path
    ca_cert: bytes
    allocatable: dict[str, str]
    apiserver_port: int
    bindshim: Path | None
    pass_env: dict[str, str]
    executor: ThreadPoolExecutor
    on_done: Callable[[PodWorker], None]
    on_terminal: Callable[[], None]  # a pod finished: its names leave the other pods' /etc/hosts


def hostname_of(pod: Mapping[str, Any]) -> str:
    name = pod["spec"].get("hostname") or pod["metadata"]["name"]
    return str(name)[:63].rstrip("-.")


def pod_grace(pod: Mapping[str, Any]) -> float:
    meta, spec = pod["metadata"], pod["spec"]
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
    return max(float(grace), MIN_GRACE)


@dataclass
class _Live:
    """In-memory companions of a running run: its Popen (if ours), probes, kill bookkeeping."""

    popen: subprocess.Popen[bytes] | None = None
    probes: dict[str, ProbeTracker] = field(default_factory=dict)
    futures: dict[str, Future[tuple[bool, str]]] = field(default_factory=dict)
    kill_deadline: float | None = None
    restart_after_kill: bool = False
    env: dict[str, str] = field(default_factory=dict)
    retry_at: float = 0.0


class PodWorker:
    def __init__(self, ctx: NodeContext, pod: dict[str, Any], state: PodState) -> None:
        self.ctx = ctx
        self.pod = pod
        self.st = state
        self.uid = state.uid
        self.dir = ctx.pods_dir / state.uid
        self.gone = False
        self.finished = False
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.live: dict[str, _Live] = {}
        self.vols: PodVolumes | None = None
        self.vols_at = 0.0
        self.last_sent: Any = None
        self.deleting_since: float | None = None
        self.kill_deadline = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"pod-{state.namespace}/{state.name}", daemon=True)

    # ------------------------------------------------------------------ events from the node

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            if int(pod["metadata"].get("resourceVersion") or 0) >= int(self.pod["metadata"].get("resourceVersion") or 0):
                self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.gone = True
        self.wake.set()

    def stop(self) -> None:
        """Stop watching (node shutdown); the processes keep running."""
        self.stopping.set()
        self.wake.set()

    @property
    def name(self) -> str:
        return f"{self.st.namespace}/{self.st.name}"

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self.stopping.is_set() and not self.finished:
            try:
                self.tick()
            except Exception:
                log.exception("pod %s: tick failed", self.name)
                time.sleep(1)
            if self.finished:
                break
            self.wake.wait(TICK if not self.st.terminal else 2.0)
            self.wake.clear()
        if self.finished:
            self.ctx.on_done(self)

    def tick(self) -> None:
        with self.lock:
            pod = self.pod
        if self.gone or pod["metadata"].get("deletionTimestamp"):
            self._terminate(pod)
            return
        if self.st.terminal:
            return
        now = time.time()
        if not self.st.sandbox_ready or now - self.vols_at > VOLUME_REFRESH_SECONDS:
            if not self._setup(pod):
                self._report(pod)
                return
        elif self.vols is not None:
            try:
                self._materialiser(pod).refresh_tokens(self.vols)
            except (VolumeError, KubeError, OSError) as e:
                log.warning("pod %s: token refresh failed: %s", self.name, e)
        self._reap(pod)
        self._probe(pod)
        self._start_due(pod)
        self._report(pod)

    # ------------------------------------------------------------------ setup

    def _materialiser(self, pod: Mapping[str, Any]) -> Materialiser:
        return Materialiser(self.ctx.kube, pod, self.dir, self.ctx.ca_cert, self.ctx.allocatable)

    def _setup(self, pod: dict[str, Any]) -> bool:
        for sub in ("tmp", "volumes", "containers"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").chmod(0o1777)
        try:
            self.vols = self._materialiser(pod).prepare(self.vols)
        except (VolumeError, KubeError) as e:
            if not self.st.sandbox_ready:
                for c in self._all_specs(pod):
                    cs = self._cstate(c["name"], c in (pod["spec"].get("initContainers") or []))
                    if not cs.runs:
                        cs.waiting_reason, cs.waiting_message = "ContainerCreating", f"volumes: {e}"
                return False
            log.warning("pod %s: refreshing volumes: %s", self.name, e)
            return True
        self.vols_at = time.time()
        if not self.st.sandbox_ready:
            self.st.sandbox_ready = True
            self.st.start_time = self.st.start_time or now_rfc3339()
            for c in self._all_specs(pod):
                cs = self._cstate(c["name"], c in (pod["spec"].get("initContainers") or []))
                if not cs.runs and cs.waiting_message and cs.waiting_message.startswith("volumes:"):
                    cs.waiting_message = None
            self._save()
        return True

    def _all_specs(self, pod: Mapping[str, Any]) -> list[dict[str, Any]]:
        spec = pod["spec"]
        return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]

    def _cstate(self, name: str, init: bool) -> ContainerState:
        cs = self.st.containers.get(name)
        if cs is None:
            cs = ContainerState(name, init=init, waiting_reason="PodInitializing" if not init and
                                self.pod["spec"].get("initContainers") else "ContainerCreating")
            self.st.containers[name] = cs
        return cs

    def _save(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.st.save(self.dir)

    # ------------------------------------------------------------------ processes

    def _alive(self, name: str, run: Run) -> bool:
        live = self.live.get(name)
        if live is not None and live.popen is not None and live.popen.pid == run.pid:
            return live.popen.poll() is None
        return process_start_time(run.pid or 0) == run.pid_start and run.pid is not None

    def _reap(self, pod: Mapping[str, Any]) -> None:
        now = time.time()
        for cs in list(self.st.containers.values()):
            run = cs.latest
            if run is None or run.finished:
                continue
            live = self.live.setdefault(cs.name, _Live())
            if self._alive(cs.name, run):
                if live.kill_deadline is not None and now >= live.kill_deadline:
                    kill_group(run.pid, run.pid_start, signal.SIGKILL)
                continue
            self._finish(pod, cs, run, live)

    def _finish(self, pod: Mapping[str, Any], cs: ContainerState, run: Run, live: _Live) -> None:
        folder = self.dir / "containers" / cs.name
        code: int
        try:
            code = int((folder / f"{run.index}.exit-code").read_text().strip())
        except (OSError, ValueError):
            rc = live.popen.returncode if live.popen is not None else None
            code = 128 - rc if rc is not None and rc < 0 else (rc if rc is not None else 137)
        start_error = folder / f"{run.index}.start-error"
        spec = next((c for c in self._all_specs(pod) if c["name"] == cs.name), {})
        if start_error.exists():
            run.reason = "StartError"
            run.message = start_error.read_text(errors="replace")[:4096]
        else:
            run.reason = "Completed" if code == 0 else "Error"
            try:
                content = (folder / "termination-log").read_bytes()
            except OSError:
                content = b""
            tail = crilog.text_tail(folder / f"{run.index}.log") if not content and code != 0 else b""
            run.message = termination_message(content, code, spec.get("terminationMessagePolicy"), tail) or None
        run.exit_code = code
        run.finished_at = now_rfc3339()
        if live.popen is not None:
            with contextlib.suppress(Exception):
                live.popen.wait(0)
        deleting = self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))
        policy = pod["spec"].get("restartPolicy", "Always")
        restart = should_restart(policy, code, cs.init) or (live.restart_after_kill and policy != "Never")
        cs.started = cs.ready = False
        self.live[cs.name] = _Live()
        if restart and not deleting:
            delay = next_backoff(cs.backoff, time.time() - run.started_wall)
            cs.backoff = delay
            cs.restart_at = time.time() + delay
            if delay > 0:
                cs.waiting_reason = "CrashLoopBackOff"
                cs.waiting_message = (f"back-off {delay:g}s restarting failed container={cs.name} "
                                      f"pod={self.st.name}_{self.st.namespace}({self.uid})")
        else:
            cs.restart_at = None
            cs.done = True
        log.info("pod %s: container %s run %d exited %d (%s)", self.name, cs.name, run.index, code, run.reason)
        self._save()

    def _start_due(self, pod: dict[str, Any]) -> None:
        now = time.time()
        spec = pod["spec"]
        for ic in spec.get("initContainers") or []:
            cs = self._cstate(ic["name"], True)
            latest = cs.latest
            if latest is not None and latest.finished and latest.exit_code == 0:
                continue  # done
            if latest is None or (latest.finished and cs.restart_at is not None and cs.restart_at <= now):
                self._launch(pod, ic, cs)
            return  # one init container at a time; the next starts once this one succeeded
        for c in spec.get("containers") or []:
            cs = self._cstate(c["name"], False)
            latest = cs.latest
            if latest is None or (latest.finished and cs.restart_at is not None and cs.restart_at <= now):
                self._launch(pod, c, cs)

    def _service_env(self) -> dict[str, str]:
        port = str(self.ctx.apiserver_port)
        return {"KUBERNETES_SERVICE_HOST": self.ctx.host_ip, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{self.ctx.host_ip}:{port}"}

    def _launch(self, pod: dict[str, Any], spec: Mapping[str, Any], cs: ContainerState) -> None:
        live = self.live.setdefault(cs.name, _Live())
        if time.time() < live.retry_at:
            return
        mat = self._materialiser(pod)

        def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
            data = mat.data(kind, name)
            return None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}

        # The pod object may not show its IPs yet; the kubelet answers these from its own knowledge.
        ips = {"podIP": self.st.ip, "podIPs": [{"ip": self.st.ip}], "hostIP": self.ctx.host_ip,
               "hostIPs": [{"ip": self.ctx.host_ip}]}
        known = {**pod, "status": {**(pod.get("status") or {}), **ips}}
        try:
            env = resolve_env(known, spec, lookup, self._service_env(), self.ctx.allocatable)
            argv = command_line(spec, env)
            assert self.vols is not None
            mounts = self._mounts(pod, spec)
        except (ConfigError, VolumeError, KubeError) as e:
            cs.waiting_reason = "CreateContainerConfigError" if isinstance(e, ConfigError) else "CreateContainerError"
            cs.waiting_message = str(e)
            cs.restart_at = time.time() if cs.runs else cs.restart_at
            live.retry_at = time.time() + 2
            return
        base = {"PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}", "HOME": "/root",
                "HOSTNAME": hostname_of(pod), **self.ctx.pass_env}
        full = {**base, **env, "KUBETUNE_POD_IP": self.st.ip}
        if self.ctx.bindshim is not None:
            full["LD_PRELOAD"] = " ".join(filter(None, [str(self.ctx.bindshim), full.get("LD_PRELOAD")]))
        index = len(cs.runs)
        folder = self.dir / "containers" / cs.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "termination-log").write_bytes(b"")
        for stale in (f"{index}.exit-code", f"{index}.start-error"):
            (folder / stale).unlink(missing_ok=True)
        shim_spec = {
            "hostname": hostname_of(pod), "argv": argv, "env": full, "cwd": spec.get("workingDir") or "/",
            "mounts": [m.to_json() for m in mounts], "log": str(folder / f"{index}.log"),
            "run_dir": str(folder), "prefix": str(index),
        }
        spec_path = folder / f"{index}.spec.json"
        spec_path.write_text(json.dumps(shim_spec))
        spec_path.chmod(0o600)  # it holds the container's environment (Secrets)
        cmd = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
               "--propagation", "private", "--",
               sys.executable, "-m", "kubetune_operator.dev.localnode.shim", str(spec_path)]
        with open(folder / "shim.log", "ab") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True,  # outlives the node; signalled as a group
                                     env={"PATH": os.environ.get("PATH", SYSTEM_PATH)})
        now = time.time()
        run = Run(index=index, container_id=f"{self.uid[:8]}-{cs.name}-{index}", pid=popen.pid,
                  pid_start=process_start_time(popen.pid), started_at=now_rfc3339(now), started_wall=now)
        cs.runs.append(run)
        cs.waiting_reason = cs.waiting_message = None
        cs.restart_at = None
        self.live[cs.name] = _Live(popen=popen, env=full)
        self._arm_probes(spec, cs)
        log.info("pod %s: started container %s run %d (pid %d): %s", self.name, cs.name, index, popen.pid, argv)
        self._save()

    def _mounts(self, pod: Mapping[str, Any], spec: Mapping[str, Any]) -> list[Mount]:
        assert self.vols is not None
        folder = self.dir / "containers" / spec["name"]
        mounts = [Mount(str(self.dir / "tmp"), "/tmp", True, False), *_host_code_under_tmp(),
                  Mount(str(self.dir / "hosts"), "/etc/hosts", False, False)]
        mounts += container_mounts(spec, self.vols)
        mounts.append(Mount(str(folder / "termination-log"), spec.get("terminationMessagePath") or "/dev/termination-log",
                            False, False))
        return mounts

    # ------------------------------------------------------------------ probes

    def _arm_probes(self, spec: Mapping[str, Any], cs: ContainerState) -> None:
        live = self.live[cs.name]
        now = time.monotonic()
        live.probes = {}
        if spec.get("startupProbe"):
            live.probes["startup"] = ProbeTracker(spec["startupProbe"], "startup", now)
        else:
            self._arm_after_startup(spec, cs, now)

    def _arm_after_startup(self, spec: Mapping[str, Any], cs: ContainerState, now: float) -> None:
        live = self.live[cs.name]
        cs.started = True
        for kind in ("liveness", "readiness"):
            probe = spec.get(f"{kind}Probe")
            if probe:
                live.probes[kind] = ProbeTracker(probe, kind, now)
        cs.ready = "readiness" not in live.probes

    def _probe(self, pod: Mapping[str, Any]) -> None:
        now = time.monotonic()
        for spec in pod["spec"].get("containers") or []:
            cs = self.st.containers.get(spec["name"])
            if cs is None or not cs.running:
                continue
            live = self.live.setdefault(cs.name, _Live())
            if not live.probes and not cs.started:  # adopted after a node restart: probes start over
                self._arm_probes(spec, cs)
            if live.kill_deadline is not None:
                continue
            for kind, tracker in list(live.probes.items()):
                fut = live.futures.get(kind)
                if fut is not None and fut.done():
                    del live.futures[kind]
                    ok, message = fut.result()
                    tracker.record(ok, message, time.monotonic())
                    self._after_probe(pod, spec, cs, kind, tracker)
                elif fut is None and tracker.due(now):
                    run = cs.latest
                    ns_pid = _namespace_pid(run.pid) if run and run.pid else None
                    live.futures[kind] = self.ctx.executor.submit(
                        run_probe, tracker.probe, spec, self.st.ip, live.env, ns_pid)

    def _after_probe(self, pod: Mapping[str, Any], spec: Mapping[str, Any], cs: ContainerState, kind: str,
                     tracker: ProbeTracker) -> None:
        live = self.live[cs.name]
        if kind == "startup" and tracker.result is True:
            del live.probes["startup"]
            self._arm_after_startup(spec, cs, time.monotonic())
        elif kind == "readiness":
            cs.ready = bool(tracker.result)
        elif kind in ("startup", "liveness") and tracker.result is False:
            log.info("pod %s: container %s failed %s probe, will be restarted: %s", self.name, cs.name, kind,
                     tracker.last_message)
            run = cs.latest
            grace = float(tracker.probe.get("terminationGracePeriodSeconds") or pod_grace(pod))
            kill_group(run.pid if run else None, run.pid_start if run else None, signal.SIGTERM)
            live.kill_deadline = time.time() + grace
            live.restart_after_kill = True
            cs.ready = False

    # ------------------------------------------------------------------ status

    def _report(self, pod: Mapping[str, Any], deleting: bool = False) -> None:
        status = pod_status(pod, self.st, self.ctx.host_ip, deleting=deleting)
        if status["phase"] in ("Succeeded", "Failed") and not deleting and not self.st.terminal:
            self.st.terminal = True
            self._save()
            self.ctx.on_terminal()
        key = comparable(status)
        if key == self.last_sent:
            return
        meta = pod["metadata"]
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": self.uid}]
        ops += [{"op": "add", "path": f"/status/{k}", "value": v} for k, v in status.items()]
        try:
            updated = self.ctx.kube.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                          ops, kind="json")
        except KubeError as e:
            if e.status in (404, 409, 422):
                log.info("pod %s: status not written (%s)", self.name, e)
                return
            raise
        self.last_sent = key
        if updated:
            self.update(updated)

    # ------------------------------------------------------------------ deletion

    def _terminate(self, pod: dict[str, Any]) -> None:
        now = time.time()
        if self.deleting_since is None:
            self.deleting_since = now
            grace = pod_grace(pod) if not self.gone else MIN_GRACE
            self.kill_deadline = now + grace
            for cs in self.st.containers.values():
                cs.restart_at = None
                run = cs.latest
                if run is not None and not run.finished:
                    kill_group(run.pid, run.pid_start, signal.SIGTERM)
            log.info("pod %s: deleting: SIGTERM sent, grace %.0fs", self.name, grace)
        self._reap(pod)
        running = [cs.latest for cs in self.st.containers.values() if cs.running]
        if running:
            if now >= self.kill_deadline:
                for run in running:
                    if run is not None:
                        kill_group(run.pid, run.pid_start, signal.SIGKILL)
            return
        if not self.gone:
            with contextlib.suppress(KubeError):
                self._report(pod, deleting=True)
            meta = pod["metadata"]
            try:
                self.ctx.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                     {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                      "preconditions": {"uid": self.uid}})
            except KubeError as e:
                if e.status not in (404, 409):
                    raise
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.finished = True


def _namespace_pid(unshare_pid: int) -> int | None:
    """The shim's pid (PID 1 of the pod's namespaces), a child of `unshare --fork`."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _host_code_under_tmp() -> list[Mount]:
    """The project and its venv, mounted back at their own paths when they live under /tmp (a clone in
    `mktemp -d`): the pod's private /tmp would otherwise hide the commands it runs ("image" here)."""
    import kubetune_operator

    repo = Path(kubetune_operator.__file__).resolve().parents[2]
    roots: list[Path] = []
    for path in (repo, Path(sys.prefix).resolve()):
        if path.is_relative_to("/tmp") and not any(path.is_relative_to(r) for r in roots):
            roots.append(path)
    return [Mount(str(r), str(r), True, False) for r in roots]
