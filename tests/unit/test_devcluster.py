"""The local control plane's pure parts: pins, wrapper modules, topology, and build failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_operator.dev.cluster import build
from kubetune_operator.dev.cluster.pins import KUBERNETES_STAGING, Component, components
from kubetune_operator.dev.cluster.topology import load_topology, node_manifests


def test_every_component_is_pinned_and_cached_per_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path))
    for name, component in components().items():
        assert component.version.startswith("v"), name
        assert build.component_dir(component) == tmp_path / name / component.version


def test_kubernetes_wrapper_module_replaces_every_staging_module_with_its_tag() -> None:
    k8s = components()["kubernetes"]
    mod = k8s.go_mod()
    staging = "v0." + k8s.version.removeprefix("v1.")
    for module in KUBERNETES_STAGING:
        assert f"k8s.io/{module} => k8s.io/{module} {staging}" in mod
    assert f"require k8s.io/kubernetes {k8s.version}" in mod
    assert "godebug default=go1.26" in mod
    assert any(f"gitVersion={k8s.version}" in flag for flag in k8s.ldflags)


def test_default_topology_has_two_gpu_pools() -> None:
    nodes = node_manifests(load_topology(None))
    products = {}
    for node in nodes:
        product = node["metadata"]["labels"]["nvidia.com/gpu.product"]
        products.setdefault(product, []).append(int(node["status"]["capacity"]["nvidia.com/gpu"]))
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert products == {"NVIDIA-H100-80GB-HBM3": [8] * 4, "NVIDIA-A100-SXM4-80GB": [4] * 4}


def test_a_failed_build_names_the_component_and_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GOFLAGS", "-mod=mod")
    monkeypatch.setenv("GOPROXY", "off")  # fail fast and offline: the module cannot be fetched
    bogus = Component(name="bogus", version="v0.0.1", module="example.invalid/nothing",
                      packages={"nothing": "example.invalid/nothing/cmd/nothing"})
    said: list[str] = []
    with pytest.raises(build.BuildError) as failed:
        build.build(bogus, say=said.append)
    message = str(failed.value)
    assert "bogus v0.0.1" in message and "example.invalid/nothing" in message
    assert not build.is_built(bogus)
    assert any("building bogus v0.0.1" in line for line in said)


def test_pki_issues_the_local_node_serving_cert_and_the_apiserver_kubelet_client_cert(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from kubetune_operator.dev.cluster.pki import write_pki

    pki = write_pki(tmp_path)
    serving = x509.load_pem_x509_certificate(pki.kubelet_cert.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    client = x509.load_pem_x509_certificate(pki.kubelet_client_cert.read_bytes())
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver-kubelet-client"
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert serving.issuer == client.issuer == ca.subject
    assert pki.kubelet_client_key.stat().st_mode & 0o077 == 0
