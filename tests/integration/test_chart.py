"""The Helm chart against the real control plane: accepted manifests, working least-privilege RBAC,
CRD upgrades, and an uninstall that keeps users' objects.

The operator cannot run as the chart's pod here (no images), so it runs as a process with a
kubeconfig holding the chart ServiceAccount's token (TokenRequest API): every call it makes is
authorised by the chart's RBAC, as in a real cluster. The tests of this module share one release and
run in file order (the last one uninstalls it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.dev import chart

from tests.integration.ftj_support import (
    apply,
    condition,
    create_data,
    finish_pods,
    ftj,
    manifest,
    pass_validation,
    train_selector,
    wait_phase,
)
from tests.support import DevCluster, OperatorProcess, eventually

pytestmark = pytest.mark.integration

RELEASE, NAMESPACE = "kubetune", "kubetune-system"
SA = f"system:serviceaccount:{NAMESPACE}:{chart.fullname(RELEASE)}"
CRDS = ["finetunejobs.kubetune.io", "modeldeployments.kubetune.io", "gpuquotas.kubetune.io"]


def helm(cluster: DevCluster, *args: str) -> str:
    return chart.helm(cluster.kubeconfig, *args).stdout


@pytest.fixture(scope="module")
def release(cluster: DevCluster, kubetune_crds: list[str]) -> Iterator[str]:
    """The whole chart installed (operator Deployment included; its pod lands on a fake node), owning
    the CRDs that the session applied with kubectl before (adopted)."""
    chart.install(cluster.kubeconfig, NAMESPACE, RELEASE, install_crds=True, operator=True)
    yield RELEASE
    if RELEASE in helm(cluster, "list", "-n", NAMESPACE, "-q"):
        helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")


def can_i(cluster: DevCluster, user: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", f"--as={user}", *args, check=False)
    return out.stdout.strip() == "yes"


def test_rendered_manifests_are_accepted_by_the_api_server(cluster: DevCluster, tmp_path: Path) -> None:
    cluster.kubectl("create", "namespace", "chart-dry-run", check=False)
    for ns in ("team-a", "team-b"):
        cluster.kubectl("create", "namespace", ns, check=False)
    for values in ([], ["--set-json", 'operator.watchNamespaces=["team-a","team-b"]', "--set", "dashboard.enabled=true"]):
        rendered = tmp_path / "rendered.yaml"
        rendered.write_text(helm(cluster, "template", "dry", str(chart.CHART), "-n", "chart-dry-run", *values))
        kinds = [d["kind"] for d in yaml.safe_load_all(rendered.read_text()) if d]
        assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "Service",
                "PodDisruptionBudget", "ServiceAccount"} <= set(kinds)
        out = cluster.kubectl("apply", "--dry-run=server", "-f", str(rendered))
        assert out.stdout.count("(server dry run)") == len(kinds), out.stdout


def test_install_creates_the_operator_and_owns_the_crds(cluster: DevCluster, release: str) -> None:
    dep = json.loads(cluster.kubectl("get", "deployment", chart.fullname(release), "-n", NAMESPACE, "-o",
                                     "json").stdout)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"  # leader election decides which replica acts
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "KUBETUNE_BIND_ADDRESS", "value": "0.0.0.0"} in c["env"]
    assert pod["serviceAccountName"] == chart.fullname(release)
    for crd in CRDS:
        meta = json.loads(cluster.kubectl("get", "crd", crd, "-o", "json").stdout)["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        assert meta["annotations"]["meta.helm.sh/release-name"] == release


def test_operator_with_the_chart_service_account_reconciles_without_rbac_errors(
    cluster: DevCluster, namespace: str, release: str, tmp_path: Path
) -> None:
    # Watching one namespace: the chart binds the namespaced rules there only (RoleBinding).
    chart.install(cluster.kubeconfig, NAMESPACE, release, install_crds=True, operator=True,
                  values={"operator.watchNamespaces": [namespace]})
    assert not can_i(cluster, SA, "create", "jobs.batch", "-n", "default")
    assert can_i(cluster, SA, "create", "jobs.batch", "-n", namespace)
    token = chart.service_account_token(cluster.kubeconfig, NAMESPACE, chart.fullname(release))
    kubeconfig = chart.write_token_kubeconfig(cluster.kubeconfig, token, tmp_path / "sa.kubeconfig", SA)
    # Leader election as in the chart's pod: the Lease in the release namespace, by the chart's Role.
    lease = chart.fullname(release)
    assert can_i(cluster, SA, "update", f"leases.coordination.k8s.io/{lease}", "-n", NAMESPACE)
    assert not can_i(cluster, SA, "update", "leases.coordination.k8s.io/other", "-n", NAMESPACE)
    op = OperatorProcess(cluster, [namespace], tmp_path / "operator.log", env={
        "KUBECONFIG": str(kubeconfig), "KUBETUNE_LEADER_ELECTION": "true",
        "KUBETUNE_LEADER_ELECTION_LEASE": lease, "KUBETUNE_LEADER_ELECTION_NAMESPACE": NAMESPACE})
    op.start()
    eventually(lambda: "leads (Lease" in op.logs(), timeout=30, what="the operator holds the chart's Lease")
    try:
        create_data(cluster, namespace)
        apply(cluster, namespace, ftj("charted"))
        wait_phase(cluster, namespace, "charted", "Validating")
        pass_validation(cluster, namespace, "charted")
        wait_phase(cluster, namespace, "charted", "Running")

        # The per-job progress Role the operator created (it may only grant what it holds).
        role = json.loads(cluster.kubectl("get", "role", "-n", namespace, "-l", "kubetune.io/finetunejob=charted",
                                          "-o", "json").stdout)["items"]
        assert [r["rules"] for r in role] == [[{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                                                "resourceNames": ["charted"], "verbs": ["get", "patch"]}]]
        pod = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", train_selector("charted"), "-o",
                                         "json").stdout)["items"][0]
        trainer = f"system:serviceaccount:{namespace}:{pod['spec']['serviceAccountName']}"
        assert can_i(cluster, trainer, "patch", "finetunejobs.kubetune.io/charted", "--subresource=status",
                     "-n", namespace)
        assert not can_i(cluster, trainer, "patch", "finetunejobs.kubetune.io/other", "--subresource=status",
                         "-n", namespace)
        assert not can_i(cluster, trainer, "patch", "finetunejobs.kubetune.io/charted", "-n", namespace)

        finish_pods(cluster, namespace, train_selector("charted"), "Succeeded", count=2, message=manifest(1),
                    rank0_message_only=True)
        st = wait_phase(cluster, namespace, "charted", "Succeeded")
        assert condition(st, "Succeeded")["status"] == "True"

        # Serving: Deployment, Service and HPA created by the same ServiceAccount.
        body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
                "spec": {"model": {"fineTuneJobRef": {"name": "charted", "version": "latest"}},
                         "runtime": {"type": "vllm"}, "resources": {"gpus": 1},
                         "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetConcurrency": 4}}}
        apply(cluster, namespace, body)

        def available() -> Any:
            obj = json.loads(cluster.kubectl("get", "mdep", "chat", "-n", namespace, "-o", "json").stdout)
            return condition(obj.get("status") or {}, "Available").get("status") == "True"

        eventually(available, timeout=90, what="ModelDeployment chat Available")
        cluster.kubectl("get", "hpa", "chat", "-n", namespace)
        cluster.kubectl("get", "service", "chat", "-n", namespace)
    finally:
        op.stop()
    log = op.logs()
    # A 403 status, not the digits in a timestamp's milliseconds ("12:18:08,403").
    assert not re.search(r"(?<![,.:\d])403(?!\d)", log) and "forbidden" not in log.lower(), log[-6000:]
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "forbidden" not in events.lower()


def test_operator_kubeconfig_is_idempotent_and_holds_only_the_chart_rights(
    cluster: DevCluster, release: str, tmp_path: Path
) -> None:
    # A second release without CRDs (the first owns them), as `kubetune demo` would install it.
    args = (cluster.kubeconfig, tmp_path / "demo.kubeconfig", "kubetune-demo-rbac", "demo-kubetune")
    first = chart.operator_kubeconfig(*args)
    again = chart.operator_kubeconfig(*args)
    assert first == again
    user = "system:serviceaccount:kubetune-demo-rbac:demo-kubetune"
    as_sa = DevCluster(again, cluster.server, cluster.kubectl_path)
    assert as_sa.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == user
    assert as_sa.kubectl("get", "finetunejobs", "-A").returncode == 0
    for allowed in (["create", "roles.rbac.authorization.k8s.io", "-n", "default"],
                    ["patch", "finetunejobs.kubetune.io", "--subresource=status", "-n", "default"],
                    ["list", "nodes"], ["get", "secrets", "-n", "default"]):
        assert can_i(cluster, user, *allowed), allowed
    for refused in (["list", "secrets", "-n", "default"], ["delete", "nodes"], ["create", "pods", "-n", "default"],
                    ["patch", "finetunejobs.kubetune.io", "-n", "default"], ["escalate", "roles", "-n", "default"],
                    ["bind", "clusterroles"], ["create", "clusterroles"], ["*", "*"]):
        assert not can_i(cluster, user, *refused), refused
    helm(cluster, "uninstall", "demo-kubetune", "-n", "kubetune-demo-rbac", "--wait")


def test_upgrade_with_a_changed_crd_updates_it(cluster: DevCluster, release: str, tmp_path: Path) -> None:
    changed = tmp_path / "kubetune"
    shutil.copytree(chart.CHART, changed)
    crd_file = changed / "files" / "crds" / "kubetune.io_gpuquotas.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", []).append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name"})
    crd_file.write_text(yaml.safe_dump(crd))

    def columns() -> list[str]:
        got = json.loads(cluster.kubectl("get", "crd", "gpuquotas.kubetune.io", "-o", "json").stdout)
        return [c["name"] for c in got["spec"]["versions"][0].get("additionalPrinterColumns", [])]

    try:
        chart.install(cluster.kubeconfig, NAMESPACE, release, install_crds=True, operator=True, chart=changed)
        assert "Upgraded" in columns()
    finally:
        chart.install(cluster.kubeconfig, NAMESPACE, release, install_crds=True, operator=True)
    assert "Upgraded" not in columns()


def test_uninstall_keeps_the_crds_and_users_objects(cluster: DevCluster, namespace: str, release: str) -> None:
    apply(cluster, namespace, ftj("kept", runPolicy={"suspend": True}))
    helm(cluster, "uninstall", release, "-n", NAMESPACE, "--wait")
    for crd in CRDS:
        cluster.kubectl("get", "crd", crd)
    cluster.kubectl("get", "ftj", "kept", "-n", namespace)
    gone = cluster.kubectl("get", "clusterrole", f"{chart.fullname(release)}-namespaced", check=False)
    assert gone.returncode != 0, "the operator's RBAC goes with the release"
    assert cluster.kubectl("get", "deployment", chart.fullname(release), "-n", NAMESPACE,
                           check=False).returncode != 0


def test_helm_binary_is_the_pinned_one() -> None:
    out = subprocess.run([str(chart.helm_binary()), "version", "--short"], capture_output=True, text=True)
    assert out.stdout.startswith("v3.")
