"""Run a local operator with the Helm chart's RBAC instead of cluster-admin (the demo, the chart tests).

Images cannot be pulled on the local control plane, so the chart is installed with
`operator.enabled=false`: the ServiceAccount, the ClusterRoles and their bindings (and, when asked,
the CRDs). A token for that ServiceAccount comes from the TokenRequest API, and a kubeconfig holding
it lets `kubetune run` act exactly as the in-cluster operator would: any call the chart does not
allow fails with 403, as it would in production.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator.dev.cluster.build import binary_path
from kubetune_operator.dev.cluster.pins import components

CHART = Path(__file__).resolve().parents[3] / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"
HELM_MANAGED = {"app.kubernetes.io/managed-by": "Helm"}


class ChartError(RuntimeError):
    """helm or the API server refused; the message has helm's own words."""


def helm_binary() -> Path:
    helm = binary_path(components()["helm"], "helm")
    if not helm.exists():
        raise ChartError(f"helm is not built at {helm}: run `kubetune dev up` (it builds helm with the cluster)")
    return helm


def fullname(release: str = RELEASE) -> str:
    """The chart's resource-name prefix (templates/_helpers.tpl `kubetune.fullname`), also the ServiceAccount's name."""
    return release if "kubetune" in release else f"{release}-kubetune"


def helm(kubeconfig: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_binary()), f"--kubeconfig={kubeconfig}", *args],
                          text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise ChartError(f"helm {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json key=value` for each dotted key (JSON keeps lists and booleans typed)."""
    import json

    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def adopt_crds(kubeconfig: Path, release: str = RELEASE, namespace: str = NAMESPACE) -> list[str]:
    """Mark kubetune CRDs applied earlier with kubectl as the release's, so `helm install` takes them over.

    Helm refuses to install over objects it does not own; these labels and annotations are Helm's
    documented way to adopt them. Returns the CRDs adopted.
    """
    from kubernetes import client, config

    api = client.ApiextensionsV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    adopted = []
    for crd in api.list_custom_resource_definition().items:
        if crd.spec.group != "kubetune.io" or crd.metadata is None:
            continue
        name = str(crd.metadata.name)
        api.patch_custom_resource_definition(name, {"metadata": {
            "labels": HELM_MANAGED,
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
        }})
        adopted.append(name)
    return adopted


def install(kubeconfig: Path, namespace: str = NAMESPACE, release: str = RELEASE, install_crds: bool = False,
            operator: bool = False, values: Mapping[str, Any] | None = None, chart: Path = CHART) -> None:
    """`helm upgrade --install` (idempotent): by default only the ServiceAccount and RBAC, no operator pod."""
    if not (chart / "Chart.yaml").exists():
        raise ChartError(f"no Helm chart at {chart}: run from a kubetune source checkout")
    if install_crds:
        adopt_crds(kubeconfig, release, namespace)
    merged = {"crds.install": install_crds, "operator.enabled": operator, **(values or {})}
    helm(kubeconfig, "upgrade", "--install", release, str(chart), "--namespace", namespace, "--create-namespace",
         "--wait", "--timeout=120s", *set_args(merged))


def service_account_token(kubeconfig: Path, namespace: str, service_account: str,
                          seconds: int = 24 * 3600) -> str:
    """A token of `service_account` from the TokenRequest API (what `kubectl create token` does)."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": seconds}}
    out = core.create_namespaced_service_account_token(service_account, namespace, request)  # type: ignore[arg-type]
    if out.status is None:
        raise ChartError(f"TokenRequest for ServiceAccount {namespace}/{service_account} returned no token")
    return str(out.status.token)


def write_token_kubeconfig(cluster_kubeconfig: Path, token: str, out: Path, user: str,
                           default_namespace: str = "default") -> Path:
    """A kubeconfig for the same API server and CA as `cluster_kubeconfig`, authenticating with `token`."""
    source = yaml.safe_load(cluster_kubeconfig.read_text())
    context = next(c for c in source["contexts"] if c["name"] == source["current-context"])["context"]
    cluster = next(c for c in source["clusters"] if c["name"] == context["cluster"])
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user,
                                                "namespace": default_namespace}}],
        "current-context": user,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(kubeconfig))
    out.chmod(0o600)
    return out


def operator_kubeconfig(cluster_kubeconfig: Path, out: Path, namespace: str = NAMESPACE, release: str = RELEASE,
                        install_crds: bool = False, watch_namespaces: Iterable[str] = (),
                        token_seconds: int = 24 * 3600) -> Path:
    """Install the chart's ServiceAccount and RBAC (idempotent) and write a kubeconfig holding its token.

    Run the operator with `KUBECONFIG=<out> kubetune run -A` (or `-n ns` for each of
    `watch_namespaces`, which then get RoleBindings instead of a ClusterRoleBinding). With
    `install_crds`, Helm owns the CRDs (adopting ones applied with kubectl); otherwise apply
    `crds/` yourself. The token lasts `token_seconds`; call again for a fresh one.
    """
    values = {"operator.watchNamespaces": list(watch_namespaces)}
    install(cluster_kubeconfig, namespace, release, install_crds=install_crds, values=values)
    sa = fullname(release)
    token = service_account_token(cluster_kubeconfig, namespace, sa, token_seconds)
    return write_token_kubeconfig(cluster_kubeconfig, token, out, f"system:serviceaccount:{namespace}:{sa}")
