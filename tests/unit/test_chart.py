"""The Helm chart rendered offline: lint, CRD copies, least-privilege RBAC, security context,
settings mapping, values schema, monitoring, and the values table of the chart README."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.runtime.settings import ENV_PREFIX, OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
ALL_ON = ["--set", "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true"]
NAMESPACED = ["--set-json", 'operator.watchNamespaces=["team-a","team-b"]']


def helm_path() -> Path:
    from kubetune_operator.dev.cluster.build import binary_path
    from kubetune_operator.dev.cluster.pins import components

    path = binary_path(components()["helm"], "helm")
    if not path.exists():
        pytest.skip(f"helm is not built ({path}); `kubetune dev up` builds it")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "kubetune", str(CHART), "-n", "kubetune-system", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean() -> None:
    for args in ([], ALL_ON, NAMESPACED):
        out = helm("lint", "--strict", str(CHART), *args)
        assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_chart_crds_are_the_generated_ones() -> None:
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copied = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert copied == generated, "charts/kubetune/files/crds/ drifted: cp crds/*.yaml charts/kubetune/files/crds/"
    for name in generated:
        assert (CHART / "files" / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), (
            f"charts/kubetune/files/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/kubetune/files/crds/")
    rendered = {d["metadata"]["name"]: d for d in by_kind(render(), "CustomResourceDefinition")}
    for name in generated:
        source = yaml.safe_load((REPO / "crds" / name).read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not by_kind(render("--set", "crds.install=false"), "CustomResourceDefinition")


@pytest.mark.parametrize("args", [[], ALL_ON, NAMESPACED], ids=["cluster-wide", "monitoring", "namespaced"])
def test_rbac_has_no_wildcards(args: list[str]) -> None:
    docs = render(*args)
    rules = [(d["metadata"]["name"], r) for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
             for r in d["rules"]]
    assert rules
    for name, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in v for v in rule.get(field, [])), f"wildcard in {name}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{name} may escalate: {rule}"


def test_every_rbac_rule_is_explained_by_a_comment() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[i - 1].strip().startswith("#"), f"rbac.yaml:{i + 1}: rule without a comment saying why"


def namespaced_rule_bindings(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "kubetune-namespaced"]


def test_watch_namespaces_binds_the_rules_per_namespace_only() -> None:
    docs = render(*NAMESPACED)
    bindings = namespaced_rule_bindings(docs)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == ["kubetune-cluster"]
    assert not namespaced_rule_bindings(render())
    assert sorted(b["roleRef"]["name"] for b in by_kind(render(), "ClusterRoleBinding")) == [
        "kubetune-cluster", "kubetune-namespaced"]


def test_operator_pod_is_locked_down_and_probed() -> None:
    (dep,) = by_kind(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["args"] == ["run"]
    (pdb,) = by_kind(render(), "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (svc,) = by_kind(render(), "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_leader_election_elects_one_replica_through_a_lease_only_this_release_may_renew() -> None:
    (dep,) = by_kind(render("--set", "operator.replicas=2"), "Deployment")
    assert dep["spec"]["replicas"] == 2
    # The new pod waits as a standby while the old one still leads: no need to stop it first.
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    spread = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = spread["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    parsed = OperatorSettings.from_env({k: v for k, v in env.items() if v is not None})
    assert parsed.leader_election is True
    assert (parsed.leader_election_namespace, parsed.leader_election_lease) == ("kubetune-system", "kubetune")
    (role,) = by_kind(render(), "Role")
    assert role["metadata"] == {**role["metadata"], "name": "kubetune-leader-election", "namespace": "kubetune-system"}
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kubetune"],
         "verbs": ["get", "update"]},
    ]
    (binding,) = [b for b in by_kind(render(), "RoleBinding") if b["roleRef"]["kind"] == "Role"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]
    # Without leader election: one replica, stopped before the next starts, and no Lease rights.
    off = render("--set", "operator.leaderElection.enabled=false")
    (dep,) = by_kind(off, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in dep["spec"]["template"]["spec"]
    assert not by_kind(off, "Role")
    (pdb,) = by_kind(render("--set", "operator.replicas=2"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


def test_every_operator_setting_is_set_from_values() -> None:
    (dep,) = by_kind(render(), "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    expected = {ENV_PREFIX + name.upper() for name in OperatorSettings.model_fields}
    assert expected <= set(env), f"settings without a chart value: {sorted(expected - set(env))}"
    assert env["KUBETUNE_BIND_ADDRESS"] == "0.0.0.0"
    parsed = OperatorSettings.from_env({k: v for k, v in env.items() if v is not None})
    assert parsed.namespaces == [] and parsed.controllers == ["finetunejob", "modeldeployment"]
    assert parsed.log_format == "json" and parsed.metrics_port == 8080
    (dep,) = by_kind(render(*NAMESPACED), "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert OperatorSettings.from_env({"KUBETUNE_NAMESPACES": env["KUBETUNE_NAMESPACES"]}).namespaces == [
        "team-a", "team-b"]


@pytest.mark.parametrize(("value", "field"), [
    ("operator.replicas=2,operator.leaderElection.enabled=false", "/operator/replicas"),
    ("operator.replicas=-1", "/operator/replicas"),
    ("operator.leaderElection.enabled=yes", "/operator/leaderElection/enabled"),
    ("operator.logFormat=xml", "/operator/logFormat"),
    ("operator.logLevel=TRACE", "/operator/logLevel"),
    ("operator.controllers={trainer}", "/operator/controllers/0"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("operator.metricsPort=70000", "/operator/metricsPort"),
    ("operator.watchNamespaces={Team_A}", "/operator/watchNamespaces/0"),
    ("operator.resyncSeconds=0", "/operator/resyncSeconds"),
    ("operator.replica=1", "/operator"),
    ("podDisruptionBudget.maxUnavailable=0", "/podDisruptionBudget/maxUnavailable"),
    ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
    ("crds.install=maybe", "/crds/install"),
])
def test_schema_refuses_a_wrong_value_naming_the_field(value: str, field: str) -> None:
    out = helm("template", "kubetune", str(CHART), "--set", value, check=False)
    assert out.returncode != 0, f"{value} was accepted"
    assert f"at '{field}'" in out.stderr, out.stderr


def test_alerts_and_dashboard() -> None:
    docs = render(*ALL_ON)
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"KubetuneOperatorDown", "KubetuneRunsFailingRepeatedly", "KubetuneQueueStuckWithFreeGPUs",
                      "KubetuneQueueWaitTooLong", "KubetuneModelDeploymentDegraded"}
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["kubetune.json"])
    text = json.dumps(dashboard)
    for metric in ("kubetune_finetunejobs", "nvidia_com_gpu", "kubetune_queue_wait_seconds", "kubetune_train_loss",
                   "kubetune_train_tokens_per_second", "kubetune_serve_request_duration_seconds",
                   "kubetune_serve_requests_total"):
        assert metric in text, metric


# ---- the values table of charts/kubetune/README.md, generated from values.yaml's `# --` comments


def values_table() -> str:
    """One row per documented value: `# -- text` above a key documents it (and its whole subtree)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    rows, stack, doc = [], [], []  # type: ignore[var-annotated]
    undocumented = []
    documented: int | None = None
    for line in (CHART / "values.yaml").read_text().splitlines():
        if m := re.match(r"^\s*# -- (.*)", line):
            doc = [m.group(1)]
        elif doc and (m := re.match(r"^\s*# (.*)", line)):
            doc.append(m.group(1))
        elif m := re.match(r"^( *)([A-Za-z]\w*):", line):
            depth = len(m.group(1)) // 2
            stack[depth:] = [m.group(2)]
            if documented is not None and depth > documented:
                continue  # inside a value documented as a whole
            documented = None
            value: Any = defaults
            for key in stack:
                value = value[key]
            if doc:
                rows.append(f"| `{'.'.join(stack)}` | `{json.dumps(value)}` | {' '.join(doc)} |")
                documented = depth
            elif not isinstance(value, dict) or not value:
                undocumented.append(".".join(stack))
            doc = []
    assert not undocumented, f"values without a `# --` description in values.yaml: {undocumented}"
    return "\n".join(["| value | default | description |", "| --- | --- | --- |", *rows])


def test_readme_values_table_matches_values_yaml() -> None:
    readme = (CHART / "README.md").read_text()
    m = re.search(r"<!-- values-table -->\n(.*?)\n<!-- /values-table -->", readme, re.S)
    assert m, "charts/kubetune/README.md lacks the <!-- values-table --> markers"
    expected = values_table()
    assert m.group(1) == expected, f"regenerate the table in charts/kubetune/README.md:\n{expected}"


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}{key} is missing from values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and child.get("additionalProperties") is False:
                walk(value, child, f"{path}{key}.")

    walk(defaults, schema, "")


def test_chart_images_default_to_the_operator_settings_defaults() -> None:
    """An operator run outside the chart (`kubetune run`) renders the same images as the chart."""
    images = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())["images"]
    defaults = OperatorSettings.model_fields
    assert images == {"trainer": defaults["trainer_image"].default, "serve": defaults["serve_image"].default,
                      "vllm": defaults["vllm_image"].default}
