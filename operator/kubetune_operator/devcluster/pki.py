"""Certificates for a local control plane: a CA, the apiserver's serving cert, a service-account key."""

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


def write_pki(folder: Path) -> Pki:
    """Issue a fresh CA and a serving certificate valid for the loopback names clients use."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="kubetune dev cluster")
    server = ca.issue_cert(
        "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", "10.96.0.1",
    )
    pki = Pki(folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key", folder / "sa.key")
    ca.cert_pem.write_to_path(str(pki.ca_cert))
    pki.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(pki.server_key))
    sa = ec.generate_private_key(ec.SECP256R1())
    pki.sa_key.write_bytes(sa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ))
    for key in (pki.server_key, pki.sa_key):
        key.chmod(0o600)
    return pki
