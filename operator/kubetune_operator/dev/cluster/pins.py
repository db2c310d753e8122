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


def components() -> dict[str, Component]:
    """Every component `kubetune dev` needs, in build order (smallest first)."""
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
    }
