"""`kubetune-train` / `python -m kubetune_trainer`: the training pod's entrypoint.

    kubetune-train train --config job.json
    kubetune-train validate-data --config job.json [--report report.json]

Exit codes (config.py): 0 ok; 42 preempted after a checkpoint; 43 data or configuration error
(message also in /dev/termination-log, or $KUBETUNE_TERMINATION_LOG); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from kubetune_trainer.config import EXIT_OK, TrainerConfig
from kubetune_trainer.errors import ConfigError, write_termination_message
from kubetune_trainer.logs import get_logger, setup_logging

log = get_logger("cli")


def load_config(path: str) -> TrainerConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from e
    try:
        return TrainerConfig.from_json(text)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid TrainerConfig {path}: {problems}") from e


def cmd_train(args: argparse.Namespace) -> int:
    from kubetune_trainer.training import run_training

    return run_training(load_config(args.config))


def cmd_validate_data(args: argparse.Namespace) -> int:
    from kubetune_trainer.data_quality import check_gate
    from kubetune_trainer.model_loading import load_tokenizer
    from kubetune_trainer.training import quality_report

    config = load_config(args.config)
    report, _ = quality_report(config, load_tokenizer(config.base_model))
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
    else:
        print(text)
    check_gate(report)
    print(f"data quality gate passed: {report['usableRows']} usable rows", file=sys.stderr)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubetune-train", description="kubetune trainer")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train, evaluate and publish one model version")
    train.add_argument("--config", required=True, help="TrainerConfig JSON")
    train.set_defaults(func=cmd_train)
    val = sub.add_parser("validate-data", help="write the data quality report; exit 43 when the gate fails")
    val.add_argument("--config", required=True, help="TrainerConfig JSON")
    val.add_argument("--report", help="write the JSON report here instead of stdout")
    val.set_defaults(func=cmd_validate_data)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup_logging()
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        message = str(e)
        print(f"kubetune-train: error: {message}", file=sys.stderr)
        write_termination_message(message)
        return e.exit_code
    except Exception as e:
        write_termination_message(f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
