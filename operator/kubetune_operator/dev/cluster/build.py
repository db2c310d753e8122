"""Build the pinned control-plane components from the Go module proxy into a per-version cache."""

from __future__ import annotations

import fcntl
import json
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


def module_files_dir(component: Component, name: str) -> Path:
    """Where the files listed in `component.module_files[name]` are cached (e.g. Kueue's CRDs)."""
    return component_dir(component) / name


def _patches_stamp(component: Component) -> Path:
    return component_dir(component) / "bin" / ".patches.json"


def is_built(component: Component) -> bool:
    """Binaries present, with their module files and (for patched builds) the very patches asked for."""
    if not all(binary_path(component, b).is_file() for b in component.packages):
        return False
    if not all(any(module_files_dir(component, name).glob("*")) for name in component.module_files):
        return False
    if component.patches:
        stamp = _patches_stamp(component)
        return stamp.is_file() and stamp.read_text() == json.dumps(component.patches)
    return True


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
    # A patched main package is built from a patched copy inside the wrapper module (go refuses
    # `-overlay` for files in the module cache); its imports still resolve to the pinned module.
    local = _copy_patched_packages(component, src, label) if component.patches else {}
    cmd += [local.get(pkg, pkg) for pkg in component.packages.values()]
    _run_with_progress(cmd, src, f"{label}: go build", say)
    if component.module_files:
        _copy_module_files(component, _module_dir(component, src, label), label)
    if component.patches:
        _patches_stamp(component).write_text(json.dumps(component.patches))
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


def _module_dir(component: Component, src: Path, label: str) -> Path:
    """The pinned module's source folder in the module cache (read-only)."""
    out = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", component.module], cwd=src, env=go_env(),
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError(f"{label}: cannot find the module's source folder: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def _copy_patched_packages(component: Component, src: Path, label: str) -> dict[str, str]:
    """Copy each main package that a patch touches (its non-test .go files) from the pinned module into
    the wrapper module, apply the patches there, and return {package path: local ./path to build}."""
    module_dir = _module_dir(component, src, label)
    local: dict[str, str] = {}
    for i, (rel, old, new) in enumerate(component.patches):
        rel_dir = Path(rel).parent.as_posix()
        pkg = f"{component.module}/{rel_dir}"
        if pkg not in component.packages.values():
            raise BuildError(f"{label}: patch {i} touches {rel}, which is not a main package this build makes")
        if pkg not in local:
            dest = src / rel_dir
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            for f in sorted((module_dir / rel_dir).glob("*.go")):
                if not f.name.endswith("_test.go"):
                    shutil.copyfile(f, dest / f.name)  # plain copies: the module cache is read-only
            local[pkg] = f"./{rel_dir}"
        text = (src / rel).read_text()
        if text.count(old) != 1:
            raise BuildError(f"{label}: patch {i} expects {old!r} exactly once in {rel}, found "
                             f"{text.count(old)}; the pinned version changed, so review the patch in pins.py")
        (src / rel).write_text(text.replace(old, new))
    return local


def _copy_module_files(component: Component, module_dir: Path, label: str) -> None:
    """Copy files of the module's own source (the version just built) into the component's cache dir."""
    for name, pattern in component.module_files.items():
        found = sorted(module_dir.glob(pattern))
        if not found:
            raise BuildError(f"{label}: no {pattern} in {module_dir}")
        dest = module_files_dir(component, name)
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for f in found:
            shutil.copyfile(f, partial / f.name)  # plain copies: the module cache is read-only
        shutil.rmtree(dest, ignore_errors=True)
        partial.replace(dest)


def build_all(say: Callable[[str], None] = print, only: list[str] | None = None) -> float:
    """Build `only` these components, or every one that is not built on demand (Kueue)."""
    total = 0.0
    for name, component in components().items():
        if (only is None and not component.on_demand) or (only is not None and name in only):
            total += build(component, say)
    return total


if __name__ == "__main__":
    took = build_all(only=sys.argv[1:] or None)
    print(f"all components ready ({took:.0f}s building)")
