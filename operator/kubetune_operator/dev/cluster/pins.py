"""Pinned versions of the control-plane components and how each is built from the Go module proxy.

Changing a pin changes the cache path (`~/.cache/kubetune/<component>/<version>`), so the next
`kubetune dev up` rebuilds exactly that component and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.14"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
# Kueue (optional admission backend): built only when asked for (`dev up --with-kueue`, `dev build --kueue`).
# v0.17.0's go.mod has no replace directives and declares `go 1.25.0` and no godebug line, so the wrapper
# needs no replaces and keeps `go 1.25.0` (the GODEBUG defaults upstream's own build gets).
KUEUE_VERSION = "v0.17.0"

# The staging modules of k8s.io/kubernetes v1.36: each is `require … v0.0.0` + a local replace
# upstream, so a wrapper module must replace every one of them with its published tag
# (golang/go#35878, kubernetes/kubernetes#79384).
KUBERNETES_STAGING = (
    "api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider "
    "cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api "
    "cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt "
    "kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics "
    "mount-utils pod-security-admission sample-apiserver streaming"
).split()


@dataclass(frozen=True)
class Component:
    """One Go build: a wrapper module requiring `module@version`, producing `binaries`."""

    name: str
    version: str
    module: str
    packages: dict[str, str]  # binary name -> Go package path
    go_directive: str = "1.26.0"
    godebug: str | None = None
    replaces: dict[str, str] = field(default_factory=dict)
    ldflags: tuple[str, ...] = ("-s", "-w")
    tags: tuple[str, ...] = ()
    # Files of the module's source copied next to the binaries at build time, so they are cached with
    # exactly the version they belong to: destination folder (under the component's cache dir) -> glob
    # relative to the module's root (e.g. Kueue's CRDs).
    module_files: dict[str, str] = field(default_factory=dict)
    # Not built by a plain `kubetune dev build` / `dev up`; only when a feature asks for it.
    on_demand: bool = False
    # Build-time source patches of main packages, built from a patched copy in the wrapper module:
    # (file relative to the module root, exact text that must occur once, replacement).
    patches: tuple[tuple[str, str, str], ...] = ()

    def go_mod(self) -> str:
        lines = [f"module local.kubetune/{self.name}", "", f"go {self.go_directive}", ""]
        if self.godebug:
            lines += [f"godebug {self.godebug}", ""]
        lines += [f"require {self.module} {self.version}", "", "tool ("]
        lines += [f"\t{pkg}" for pkg in self.packages.values()]
        lines += [")", ""]
        if self.replaces:
            lines.append("replace (")
            lines += [f"\t{old} => {new}" for old, new in sorted(self.replaces.items())]
            lines += [")", ""]
        return "\n".join(lines)


def _kubernetes() -> Component:
    minor = KUBERNETES_VERSION.split(".")[1]
    staging_version = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    ldflags = ["-s", "-w"]
    # Without these, /version reports v0.0.0 and version-aware clients misbehave.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return Component(
        name="kubernetes",
        version=KUBERNETES_VERSION,
        module="k8s.io/kubernetes",
        packages={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        },
        go_directive="1.26.0",
        # Copied from k8s.io/kubernetes' own go.mod: dependencies' godebug lines are ignored.
        godebug="default=go1.26",
        replaces={f"k8s.io/{m}": f"k8s.io/{m} {staging_version}" for m in KUBERNETES_STAGING},
        ldflags=tuple(ldflags),
        tags=("selinux", "notest"),
    )


# Kueue v0.17.0 reads its metrics-server certificate from the fixed path /etc/kueue/metrics/certs
# whenever `internalCertManagement` is off, and exits when it is missing (cmd/kueue/main.go). A local
# process cannot rely on writing /etc, so the build lets an environment variable name that folder; the
# default path stays upstream's. If an upgrade changes that line, the build fails and says so.
KUEUE_METRICS_CERT_DIR_ENV = "KUBETUNE_KUEUE_METRICS_CERT_DIR"
_KUEUE_METRICS_CERT_LINE = 'metricsCertPath := "/etc/kueue/metrics/certs"'


def _kueue() -> Component:
    return Component(
        name="kueue",
        version=KUEUE_VERSION,
        module="sigs.k8s.io/kueue",
        packages={"kueue": "sigs.k8s.io/kueue/cmd/kueue"},
        go_directive="1.25.0",
        # Upstream's Makefile sets these; without them the log says gitVersion v0.0.0-main.
        ldflags=("-s", "-w", f"-X sigs.k8s.io/kueue/pkg/version.GitVersion={KUEUE_VERSION}"),
        module_files={"crds": "config/components/crd/bases/*.yaml"},
        on_demand=True,
        patches=((
            "cmd/kueue/main.go", _KUEUE_METRICS_CERT_LINE,
            f'{_KUEUE_METRICS_CERT_LINE}; if d := os.Getenv("{KUEUE_METRICS_CERT_DIR_ENV}"); d != "" '
            "{ metricsCertPath = d }",
        ),),
    )


def components() -> dict[str, Component]:
    """Every component `kubetune dev` knows, in build order (smallest first; on-demand ones last)."""
    return {
        "etcd": Component(
            name="etcd",
            version=ETCD_VERSION,
            module="go.etcd.io/etcd/server/v3",
            packages={"etcd": "go.etcd.io/etcd/server/v3"},
            go_directive="1.25.0",
        ),
        "kwok": Component(
            name="kwok",
            version=KWOK_VERSION,
            module="sigs.k8s.io/kwok",
            packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        ),
        "kubernetes": _kubernetes(),
        "helm": Component(
            name="helm",
            version=HELM_VERSION,
            module="helm.sh/helm/v3",
            packages={"helm": "helm.sh/helm/v3/cmd/helm"},
        ),
        "kueue": _kueue(),
    }
