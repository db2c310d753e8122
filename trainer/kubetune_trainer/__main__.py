"""`kubetune-train` / `python -m kubetune_trainer`: the training pod's entrypoint.

    kubetune-train train --config job.json
    kubetune-train launch --config job.json --nnodes N --nproc-per-node P --node-rank R \
        --master-addr HOST --master-port PORT       # a pod's main process: torchrun + exit codes
    kubetune-train validate-data --config job.json [--report report.json]
    kubetune-train check-data --config job.json [--count-rows]   # the training source's fingerprint

Exit codes (contract/config.py): 0 ok; 42 preempted after a checkpoint; 43 data or configuration error
(message also in /dev/termination-log, or $KUBETUNE_TERMINATION_LOG); 1 anything unexpected.
Under `launch` (env KUBETUNE_EXIT_DIR set) a worker records its code and message for the launcher,
which sets the pod's exit code and termination message (launcher.py). The messages themselves are
contract/results.py's: a VersionSummary after `train`, a DataQualitySummary from `validate-data`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from kubetune_trainer.contract.config import EXIT_OK, EXIT_PREEMPTED, TrainerConfig
from kubetune_trainer.contract.results import DataFingerprint
from kubetune_trainer.errors import ConfigError, write_termination_message
from kubetune_trainer.launcher import add_arguments as add_launch_arguments
from kubetune_trainer.launcher import record_exit, under_launcher
from kubetune_trainer.log_setup import get_logger, route_library_logs, setup_logging
from kubetune_trainer.train.stages import STARTING, exit_on_sigterm

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


def require_local_output(config: TrainerConfig) -> None:
    """Checkpoints and versions are written to a mounted volume; object-store output is not built yet."""
    for field, value in (("output.root", config.output.root), ("resumeFrom", config.resume_from)):
        if value and "://" in value:
            raise ConfigError(
                f"{field} is {value!r}: the trainer writes checkpoints and versions to a mounted volume only "
                "(object-store output is not supported yet); use a pvc:// output in the FineTuneJob"
            )


def cmd_train(args: argparse.Namespace) -> int:
    from kubetune_trainer.contract.results import VersionManifest, VersionSummary
    from kubetune_trainer.publish.artifacts import version_dir
    from kubetune_trainer.train.training import run_training

    config = load_config(args.config)
    require_local_output(config)
    code = run_training(config)
    manifest = version_dir(config) / "manifest.json"
    if code == EXIT_OK and int(os.environ.get("RANK", "0")) == 0 and manifest.exists():
        published = VersionManifest.model_validate_json(manifest.read_text())
        args.result_message = VersionSummary.of(published).termination_message()
    return code


def cmd_launch(args: argparse.Namespace) -> int:
    from kubetune_trainer.launcher import launch, validate_arguments

    validate_arguments(args)
    # A config that does not parse, or cannot run here, fails now (43), before any worker starts.
    require_local_output(load_config(args.config))
    return launch(args)


def cmd_validate_data(args: argparse.Namespace) -> int:
    from kubetune_trainer.data.quality import check_gate
    from kubetune_trainer.train.model_loading import load_tokenizer
    from kubetune_trainer.train.training import quality_report

    config = load_config(args.config)
    report, _ = quality_report(config, load_tokenizer(config.base_model))
    text = report.to_json()
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
    else:
        print(text)
    if args.termination_message:
        # The operator copies this into status.dataQuality; on a failed gate it is also the reason.
        from kubetune_trainer.data.quality import status_report

        args.result_message = status_report(report, source_fingerprint(config, report.rows))
        write_termination_message(args.result_message)
    check_gate(report)
    log.info(f"data quality gate passed: {report.usable_rows} usable rows")
    return EXIT_OK


def source_fingerprint(config: TrainerConfig, rows: int) -> DataFingerprint | None:
    """The training source's fingerprint as validated (`rows` read); None, with a warning, when it cannot be
    taken: the gate's verdict does not depend on it, only retrain.onDataChange's next comparison does."""
    from kubetune_trainer.data.fingerprint import fingerprint

    try:
        fp = fingerprint(config.data.train)
    except (ConfigError, OSError) as e:
        log.warning(f"the training data's fingerprint could not be taken: {e}")
        return None
    return fp if fp.rows is not None else fp.model_copy(update={"rows": rows})


def cmd_check_data(args: argparse.Namespace) -> int:
    from kubetune_trainer.data.fingerprint import fingerprint

    config = load_config(args.config)
    fp = fingerprint(config.data.train, count_rows=args.count_rows)
    args.result_message = fp.termination_message()
    log.info(f"training data fingerprint: {fp.digest} ({fp.items} item(s)"
             + (f", {fp.rows} rows)" if fp.rows is not None else ")"))
    if args.termination_message:
        write_termination_message(args.result_message)
    else:
        print(args.result_message)
    return EXIT_OK


def cmd_prune_versions(args: argparse.Namespace) -> int:
    from kubetune_trainer.publish.retention import prune_versions

    versions = [int(v) for v in args.versions.split(",") if v]
    deleted = prune_versions(args.root, args.job, versions)
    message = f"deleted versions {deleted} of {args.job}" if deleted else f"no version of {versions} was left to delete"
    log.info(message)
    if args.termination_message:
        write_termination_message(message)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubetune-train", description="kubetune trainer")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train, evaluate and publish one model version")
    train.add_argument("--config", required=True, help="TrainerConfig JSON")
    train.set_defaults(func=cmd_train)
    launch = sub.add_parser("launch", help="a pod's main process: run torchrun, forward SIGTERM, exit 0/42/43")
    add_launch_arguments(launch)
    launch.set_defaults(func=cmd_launch)
    val = sub.add_parser("validate-data", help="write the data quality report; exit 43 when the gate fails")
    val.add_argument("--config", required=True, help="TrainerConfig JSON")
    val.add_argument("--report", help="write the JSON report here instead of stdout")
    val.add_argument("--termination-message", action="store_true",
                     help="also write a compact report (status.dataQuality shape) as the termination message")
    val.set_defaults(func=cmd_validate_data)
    check = sub.add_parser("check-data", help="print the training source's fingerprint (retrain.onDataChange)")
    check.add_argument("--config", required=True, help="TrainerConfig JSON")
    check.add_argument("--count-rows", action="store_true", help="also count its rows (reads the data once)")
    check.add_argument("--termination-message", action="store_true",
                       help="write the fingerprint as the termination message instead of stdout")
    check.set_defaults(func=cmd_check_data)
    prune = sub.add_parser("prune-versions", help="delete published versions the FineTuneJob no longer keeps")
    prune.add_argument("--root", required=True, help="the output root (the path spec.output.uri is mounted at)")
    prune.add_argument("--job", required=True, help="FineTuneJob name")
    prune.add_argument("--versions", required=True, help="comma-separated version numbers")
    prune.add_argument("--termination-message", action="store_true", help="say what was deleted in the termination message")
    prune.set_defaults(func=cmd_prune_versions)
    return p


def report_exit(code: int, message: str) -> None:
    """Under `launch`, record the code and message for the launcher; otherwise write the termination log."""
    if under_launcher():
        record_exit(code, message)
    elif code != EXIT_OK or message:
        write_termination_message(message)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup_logging()
    args = parser().parse_args(argv)
    if args.command == "train":
        # SIGTERM while still importing and reading the config: nothing to checkpoint, exit 42 at once.
        # run_training() replaces this handler with the checkpointing one (train/preemption.py) before
        # loading data and model, and that one, once training is over, with the one naming the stage.
        exit_on_sigterm(STARTING)
    if args.command in ("train", "validate-data"):
        # The first line at once: importing torch, transformers and datasets takes seconds to minutes.
        log.info(f"kubetune-train {args.command} --config {args.config}: importing torch and transformers")
        route_library_logs()  # they load transformers and datasets, which would print plain text
    try:
        code = int(args.func(args))
    except ConfigError as e:
        message = str(e)
        log.error(message, extra={"exit_code": e.exit_code})
        # A failed data gate keeps its structured report as the termination message.
        report_exit(e.exit_code, getattr(args, "result_message", None) or message)
        return e.exit_code
    except Exception as e:
        report_exit(1, f"{type(e).__name__}: {e}")
        raise
    if args.command == "train":
        report_exit(code, "preempted: SIGTERM received, a checkpoint was saved; the next attempt resumes from it"
                    if code == EXIT_PREEMPTED else getattr(args, "result_message", ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
