"""Certificates for a local control plane: a CA, the apiserver's serving cert, a service-account key,
for the local node: its log server's serving cert (127.0.0.1) and the apiserver's kubelet-client cert, and
for Kueue (`dev up --with-kueue`): the serving cert of its webhook and metrics servers (127.0.0.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    sa_key: Path
    kubelet_cert: Path
    kubelet_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    kueue_cert: Path
    kueue_key: Path


def write_pki(folder: Path) -> Pki:
    """Issue a fresh CA and a serving certificate valid for the loopback names clients use."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="kubetune dev cluster")
    server = ca.issue_cert(
        "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", "10.96.0.1",
    )
    # The local node's log server (the apiserver verifies it with --kubelet-certificate-authority) and
    # the client certificate the apiserver presents to it (system:masters, as kubeadm issues it).
    kubelet = ca.issue_cert("127.0.0.1", "localhost", common_name="kubetune-local-node")
    kubelet_client = ca.issue_cert("kube-apiserver-kubelet-client", common_name="kube-apiserver-kubelet-client",
                                   organization_name="system:masters")
    # Kueue's webhook and metrics servers (controller-runtime needs a certificate even when no webhook
    # configuration points at it). Issued with the rest: the CA's key is never written to disk.
    kueue = ca.issue_cert("127.0.0.1", "localhost", common_name="kubetune-kueue")
    pki = Pki(folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key", folder / "sa.key",
              folder / "kubelet.crt", folder / "kubelet.key",
              folder / "apiserver-kubelet-client.crt", folder / "apiserver-kubelet-client.key",
              folder / "kueue.crt", folder / "kueue.key")
    ca.cert_pem.write_to_path(str(pki.ca_cert))
    for leaf, cert, key in ((server, pki.server_cert, pki.server_key), (kubelet, pki.kubelet_cert, pki.kubelet_key),
                            (kubelet_client, pki.kubelet_client_cert, pki.kubelet_client_key),
                            (kueue, pki.kueue_cert, pki.kueue_key)):
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    sa = ec.generate_private_key(ec.SECP256R1())
    pki.sa_key.write_bytes(sa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ))
    pki.sa_key.chmod(0o600)
    return pki
