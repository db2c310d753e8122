"""Build the pinned control-plane components from the Go module proxy into a per-version cache."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from kubetune_operator.dev.cluster.pins import Component, components


class BuildError(RuntimeError):
    """A component failed to build; the message names it and says why."""


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE_DIR", Path.home() / ".cache" / "kubetune"))


def component_dir(component: Component) -> Path:
    return cache_root() / component.name / component.version


def binary_path(component: Component, binary: str) -> Path:
    return component_dir(component) / "bin" / binary


def is_built(component: Component) -> bool:
    return all(binary_path(component, b).is_file() for b in component.packages)


def go_env() -> dict[str, str]:
    """Go caches live under ~/.cache so that CI keeps them between runs."""
    root = cache_root() / "go"
    env = dict(os.environ)
    env.setdefault("GOMODCACHE", str(root / "mod"))
    env.setdefault("GOCACHE", str(root / "build"))
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -modcacherw").strip()
    # The wrapper's go line is what upstream declares; never let go fetch another toolchain silently.
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = "0"
    return env


def _run_with_progress(
    cmd: list[str], cwd: Path, label: str, say: Callable[[str], None], every: float = 20.0
) -> None:
    """Run a go command, printing elapsed time every `every` s; raise BuildError with its last output."""
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=25)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    while proc.poll() is None:
        try:
            proc.wait(timeout=every)
        except subprocess.TimeoutExpired:
            last = tail[-1] if tail else ""
            say(f"  {label}: {time.monotonic() - start:5.0f}s elapsed {last[:100]}")
    t.join(timeout=5)
    if proc.returncode != 0:
        detail = "\n".join(tail) or "(no output)"
        raise BuildError(f"{label} failed (exit {proc.returncode}): {' '.join(cmd[:3])} …\n{detail}")


def build(component: Component, say: Callable[[str], None] = print) -> float:
    """Build one component into its cache folder; returns the seconds it took (0 when cached)."""
    if is_built(component):
        return 0.0
    component_dir(component).mkdir(parents=True, exist_ok=True)
    # Parallel test sessions may start cold at once: one builds, the others wait and reuse it.
    with (component_dir(component) / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(component):
            return 0.0
        return _build_locked(component, say)


def _build_locked(component: Component, say: Callable[[str], None]) -> float:
    if shutil.which("go") is None:
        raise BuildError(f"building {component.name} {component.version} needs the Go toolchain (`go`) on PATH")
    start = time.monotonic()
    src = component_dir(component) / "src"
    bindir = component_dir(component) / "bin"
    src.mkdir(parents=True, exist_ok=True)
    bindir.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(component.go_mod())
    label = f"{component.name} {component.version}"
    say(f"building {label} (cold builds take minutes; cached in {component_dir(component)})")
    _run_with_progress(["go", "mod", "tidy"], src, f"{label}: go mod tidy", say)
    staging = bindir / ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    cmd = ["go", "build", "-trimpath", "-ldflags", " ".join(component.ldflags), "-o", str(staging) + "/"]
    if component.tags:
        cmd += ["-tags", ",".join(component.tags)]
    cmd += list(component.packages.values())
    _run_with_progress(cmd, src, f"{label}: go build", say)
    # Go names each binary after its package's last element; rename to what we call it.
    for binary, pkg in component.packages.items():
        produced = staging / pkg.rstrip("/").split("/")[-1]
        if pkg.endswith("/v3"):  # a module root named by its major version, e.g. etcd's server/v3
            produced = staging / pkg.split("/")[-2]
        if not produced.exists():
            found = sorted(p.name for p in staging.iterdir())
            raise BuildError(f"{label}: go build produced {found}, not {produced.name}")
        produced.replace(bindir / binary)  # atomic: a half-built binary never looks cached
    shutil.rmtree(staging, ignore_errors=True)
    took = time.monotonic() - start
    say(f"built {label} in {took:.0f}s")
    return took


def build_all(say: Callable[[str], None] = print, only: list[str] | None = None) -> float:
    total = 0.0
    for name, component in components().items():
        if only is None or name in only:
            total += build(component, say)
    return total


if __name__ == "__main__":
    took = build_all(only=sys.argv[1:] or None)
    print(f"all components ready ({took:.0f}s building)")
