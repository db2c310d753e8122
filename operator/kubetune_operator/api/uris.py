"""The URI forms of spec fields that name storage (spec.output.uri, datasets, models): docs/api.md."""

from __future__ import annotations

import posixpath


def parse_pvc_uri(uri: str) -> tuple[str, str] | None:
    """pvc://claim/some/path -> ("claim", "some/path"); None for other URIs."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def version_uri(output_uri: str, job: str, version: int) -> str:
    """Where version `version` of job `job` is published: <output>/<job>/versions/<version>."""
    return posixpath.join(output_uri.rstrip("/"), job, "versions", str(version))
