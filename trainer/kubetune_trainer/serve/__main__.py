"""`kubetune-serve` / `python -m kubetune_trainer.serve`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from kubetune_trainer.serve.log_setup import configure_logging, route_model_library_logs
from kubetune_trainer.serve.settings import parse_settings


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("info")
    log = logging.getLogger("kubetune.serve")
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        log.error("invalid settings", extra={"reason": _describe(exc)})
        return 2
    except ValueError as exc:
        log.error("invalid settings", extra={"reason": str(exc)})
        return 2
    configure_logging(settings.log_level)
    route_model_library_logs()
    from kubetune_trainer.serve.http.server import run_server  # imports uvicorn/fastapi; keep --help fast

    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
