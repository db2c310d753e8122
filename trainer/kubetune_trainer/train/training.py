"""One training run, from a TrainerConfig to a published model version.

Data → quality gate → augmentation → tokenisation → TrainingArguments (strategy) → model and
method → transformers Trainer (DistillationTrainer with a teacher) → resume from the newest
complete checkpoint → train → evaluate → publish the version. Every rank runs this; rank 0
alone reports progress and writes the version's files. At the end every rank leaves the process
group together (leave_process_group).
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.contract.config import EXIT_OK, EXIT_PREEMPTED, StrategyType, Task, TrainerConfig
from kubetune_trainer.contract.results import DataQualityReport
from kubetune_trainer.data.augmentation import augment
from kubetune_trainer.data.preparation import Cuts, ensure_chat_template, split_validation, tokenize_records
from kubetune_trainer.data.quality import build_report, check_gate, map_rows
from kubetune_trainer.data.records import Record
from kubetune_trainer.data.sources import load_source
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.log_setup import get_logger
from kubetune_trainer.train.stages import announce, exit_on_sigterm
from kubetune_trainer.train.strategy import StrategyChoice, choose_strategy, deepspeed_config, fsdp_arguments

log = get_logger(__name__)


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    report: DataQualityReport
    digest: str
    counts: dict[str, int] = field(default_factory=dict)


def token_counter(tokenizer: Any) -> Any:
    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def quality_report(config: TrainerConfig, tokenizer: Any) -> tuple[DataQualityReport, list[Record]]:
    """Load the training split, map its fields and build the quality report (gate not enforced)."""
    mapped = map_rows(load_source(config.data.train), config)
    return build_report(mapped, config, token_counter(tokenizer)), mapped.records


def prepare_data(config: TrainerConfig, tokenizer: Any) -> PreparedData:
    report, records = quality_report(config, tokenizer)
    announce("checking the data gate", rows=report.rows)
    check_gate(report)
    if config.data.validation is not None:
        val_mapped = map_rows(load_source(config.data.validation), config)
        if val_mapped.issues:
            raise ConfigError(f"validation data: {len(val_mapped.issues)} rows do not match the schema, "
                              f"first: {val_mapped.issues[0]}")
        train_records, val_records = records, val_mapped.records
    else:
        train_records, val_records = split_validation(records, config.data.validation_split,
                                                      config.hyperparameters.seed)
    train_records = augment(train_records, config.data.augmentation, config.task)
    hp = config.hyperparameters
    cuts, val_cuts = Cuts(), Cuts()
    train = tokenize_records(train_records, tokenizer, config.task, hp.max_seq_length, config.labels, hp.packing,
                             cuts)
    validation = (tokenize_records(val_records, tokenizer, config.task, hp.max_seq_length, config.labels, False,
                                   val_cuts) if val_records else [])
    for split, c in (("train", cuts), ("validation", val_cuts)):
        if c.total():
            log.warning(f"{split}: {c.total()} rows are longer than hyperparameters.maxSeqLength="
                        f"{hp.max_seq_length} tokens: {c.prompt_cut} prompts cut from the left (completion kept), "
                        f"{c.completion_cut} completions cut, {c.dropped} rows dropped (no completion token fit), "
                        f"{c.truncated} texts cut on the right; raise maxSeqLength to keep them whole",
                        extra={"split": split, **c.counts(), "examples": c.origins})
    counts = {"rows": report.rows, "trainRecords": len(train_records), "validationRecords": len(val_records),
              "trainExamples": len(train), "validationExamples": len(validation),
              **{f"train{k[0].upper()}{k[1:]}": v for k, v in cuts.counts().items()},
              **{f"validation{k[0].upper()}{k[1:]}": v for k, v in val_cuts.counts().items()}}
    if config.task == Task.CLASSIFICATION and val_records:
        present = {r.data.get("label") for r in val_records}
        missing = [label for label in config.labels if label not in present]
        counts["labelsWithoutValidationRows"] = len(missing)
        if missing:
            log.warning(f"validation data has no rows of labels {missing}: macro precision, recall and F1 leave "
                        "them out; add validation rows for them (or a larger data.validationSplit)",
                        extra={"labels": missing})
    return PreparedData(train, validation, report, report.data_digest, counts)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(config: TrainerConfig, choice: StrategyChoice, output_dir: str, model_dir: str | None,
                       has_eval: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    hp = config.hyperparameters
    cuda = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if choice.chosen == StrategyType.DEEPSPEED:
        extra["deepspeed"] = deepspeed_config(choice)
    elif choice.chosen == StrategyType.FSDP:
        extra.update(fsdp_arguments(model_dir))
    eval_steps = config.evaluation.eval_steps
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=hp.batch_size_per_device,
        per_device_eval_batch_size=hp.batch_size_per_device,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=cuda and hp.precision == "bf16",
        fp16=cuda and hp.precision == "fp16",
        use_cpu=not cuda,
        ddp_backend=("nccl" if cuda else "gloo") if world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        save_strategy="steps",
        save_steps=config.output.checkpoints.every_steps,
        save_total_limit=config.output.checkpoints.keep,
        eval_strategy="steps" if (eval_steps and has_eval) else "no",
        eval_steps=eval_steps if has_eval else None,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        **extra,
    )


def final_metrics(trainer: Any, config: TrainerConfig, has_eval: bool) -> dict[str, float]:
    """Validation metrics at the end, without the `eval_` prefix; perplexity for causal tasks."""
    if not has_eval:
        return {}
    raw = trainer.evaluate()
    metrics = {k.removeprefix("eval_"): float(v) for k, v in raw.items()
               if isinstance(v, (int, float)) and k not in ("epoch",)}
    for noise in ("runtime", "samples_per_second", "steps_per_second", "num_input_tokens_seen"):
        metrics.pop(noise, None)
    if config.task != Task.CLASSIFICATION and "loss" in metrics:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


RANK0_DONE_KEY = "kubetune/rank0-done"
RANK0_POLL_SECONDS = 0.5


def leave_process_group(poll_seconds: float = RANK0_POLL_SECONDS) -> None:
    """Every rank, after its last collective: wait until rank 0 is done, meet at a barrier, destroy the group.

    Rank 0 publishes alone after the last collective (publish_version). The other ranks used to
    return at once and tear their interpreter down while gloo's worker threads could still be
    releasing the tensors of the last collectives (a worker frees a finished work after the waiting
    rank has moved on). Freeing a tensor Python also owns takes the GIL, and CPython 3.11 ends a
    thread that asks for the GIL during finalization with pthread_exit, whose unwinding through that
    C++ destructor calls std::terminate: "terminate called without an active exception", SIGABRT,
    and torchrun then SIGTERMs every other rank. Destroying the group does not join those threads
    here (DeepSpeed, imported after init_process_group, keeps the group as a default argument), so
    what counts is that no rank ends right after a collective: the others wait for rank 0 with the
    GIL free, then all ranks meet at a barrier, which holds no Python tensors, and destroy the group
    (for NCCL this also stops its watchdog threads).

    The others poll the store (check and sleep) rather than wait in a collective or store.wait: a
    SIGTERM must reach their handler while they wait (Python runs handlers between bytecodes, never
    inside a blocking C++ call), and rank 0's part (merging a large adapter, hashing the files) may
    take longer than a collective's timeout. If rank 0 fails instead, torchrun stops them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    store = dist.distributed_c10d._get_default_store()
    if dist.get_rank() == 0:
        store.set(RANK0_DONE_KEY, "1")
    else:
        while not store.check([RANK0_DONE_KEY]):
            time.sleep(poll_seconds)
    dist.barrier()
    dist.destroy_process_group()
    log.info("left the process group")


def run_training(config: TrainerConfig) -> int:
    """Train, evaluate and publish; returns the process exit code (EXIT_OK or EXIT_PREEMPTED)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, PrinterCallback, set_seed
    from transformers.utils import logging as hf_logging

    from kubetune_trainer.contract.gates import gate_verdict
    from kubetune_trainer.data.preparation import CausalCollator
    from kubetune_trainer.publish.artifacts import checkpoints_dir, publish_version, run_dir
    from kubetune_trainer.report.local_progress import LocalProgress, choose_mode
    from kubetune_trainer.report.progress import ProgressCallback
    from kubetune_trainer.report.training_metrics import TrainingMetricsCallback
    from kubetune_trainer.train.checkpoints import (
        CheckpointCompletionCallback,
        ResumeGuard,
        mark_unloadable,
        plan_resume,
    )
    from kubetune_trainer.train.classification_metrics import metrics_for
    from kubetune_trainer.train.hf_trainer import KubetuneTrainer
    from kubetune_trainer.train.model_loading import (
        apply_method,
        check_method_supported,
        load_model,
        load_teacher,
        load_tokenizer,
        resolve_model_location,
    )
    from kubetune_trainer.train.preemption import PreemptionCallback

    started = time.time()
    hf_logging.disable_progress_bar()
    rank = int(os.environ.get("RANK", "0"))
    check_method_supported(config)
    preemption = PreemptionCallback()
    preemption.install()  # before the slow parts: a SIGTERM while loading must not kill us mid-write
    set_seed(config.hyperparameters.seed)

    announce("loading data", source=config.data.train.uri or "sql")
    tokenizer = load_tokenizer(config.base_model)
    if config.task == Task.INSTRUCTION and ensure_chat_template(tokenizer):
        log.warning("the base model's tokenizer has no chat template: chats are trained as plain "
                    "'role: content' lines, and the version ships that format as its chat template so "
                    "serving renders chats the same way; use a base model with a chat template for its own format")
    data = prepare_data(config, tokenizer)
    log.info("data ready", extra={"train_examples": len(data.train), "validation_examples": len(data.validation),
                                  "data_digest": data.digest})

    location = resolve_model_location(config.base_model)
    model_dir = location if os.path.isdir(location) else None
    choice = choose_strategy(config, model_dir)
    log.info("strategy", extra={"strategy": choice.chosen, "zero_stage": choice.zero_stage, "reason": choice.reason})
    has_eval = bool(data.validation)
    # TrainingArguments before the model: with ZeRO-3 it makes from_pretrained shard weights at load.
    args = training_arguments(config, choice, str(checkpoints_dir(config)), model_dir, has_eval)

    if choice.chosen == StrategyType.DEEPSPEED and world_size() > 1:
        import deepspeed
        import torch

        # ZeRO-3 partitions weights while from_pretrained loads them, through deepspeed.comm:
        # without this it sees a world of 1 and rejects the batch arithmetic.
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    announce("loading the model", model=config.base_model.uri, method=str(config.method.type))
    teacher = load_teacher(config, tokenizer)
    model = apply_method(load_model(config), config)

    causal = config.task != Task.CLASSIFICATION
    collator: Any = (CausalCollator(tokenizer.pad_token_id) if causal
                     else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None))
    progress = ProgressCallback.from_config(config)
    local = choose_mode(reported_to_cluster=progress.reporter is not None)
    metrics_cb = TrainingMetricsCallback(run_dir(config) / "metrics.prom" if rank == 0 else None,
                                         config.job_name, config.run)
    kwargs: dict[str, Any] = {
        "model": model, "args": args, "data_collator": collator,
        "train_dataset": Dataset.from_list(data.train),
        "eval_dataset": Dataset.from_list(data.validation) if has_eval else None,
        "processing_class": tokenizer,
        "compute_metrics": None if causal else metrics_for(config.labels),
        "callbacks": [CheckpointCompletionCallback(), preemption, metrics_cb, progress, guard := ResumeGuard(),
                      *([LocalProgress(local)] if local != "off" else [])],
    }
    if teacher is not None:
        from kubetune_trainer.train.distillation import DistillationTrainer

        trainer: Any = DistillationTrainer(**kwargs, teacher=teacher, temperature=config.distillation.temperature,
                                           alpha=config.distillation.alpha, causal=causal)
    else:
        trainer = KubetuneTrainer(**kwargs, causal=causal)
    trainer.remove_callback(PrinterCallback)  # prints raw dicts; TrainingMetricsCallback logs them as JSON

    plan = plan_resume(checkpoints_dir(config), resume_from=config.resume_from, attempt=config.attempt)
    resume = plan.checkpoint
    announce("training", resume_from=resume.name if resume else None)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except Exception as e:
        # Failing: no step will end, so the checkpointing handler could not act on a SIGTERM any more.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if resume is not None and not guard.stepped and rank == 0:
            # Loading it failed: a deterministic failure. The next attempt resumes from the one before.
            mark_unloadable(resume, f"attempt {config.attempt} failed to load it: {type(e).__name__}: {e}")
            log.error("resuming failed; the checkpoint is marked unloadable and the next attempt resumes "
                      "from the one before it", extra={"checkpoint": str(resume), "error": str(e)})
        raise
    finally:
        progress.close()
    if preemption.preempted_at is not None:
        # The checkpointing handler stays: a second SIGTERM changes nothing, every rank exits 42.
        log.warning("preempted: checkpoint saved, exiting", extra={"step": preemption.preempted_at,
                                                                  "exit_code": EXIT_PREEMPTED})
        leave_process_group()
        return EXIT_PREEMPTED

    # Training is over: no step will end to act on a SIGTERM. The handler naming the stage replaces the
    # checkpointing one directly (restoring the one before would say "before training started").
    exit_on_sigterm("evaluating")
    announce("evaluating", validation_examples=len(data.validation))
    metrics = final_metrics(trainer, config, has_eval)
    gate = config.evaluation.gate
    passed = True if gate is None else bool(gate.passes(metrics))  # the manifest's rule (publish/artifacts.py)
    log.info(gate_verdict(gate, metrics, passed), extra={"metrics": metrics, "passed_gate": passed})
    training = {
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "resumedFrom": resume.name if resume else None,
        "resumedFromPath": str(resume.resolve()) if resume else None,
        "skippedCheckpoints": plan.skipped,
        "worldSize": world_size(),
        "tokensSeen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        "seconds": round(time.time() - started, 1),
    }
    if teacher is not None and getattr(trainer, "last_kl", None) is not None:
        training["lastDistillationKl"] = trainer.last_kl
    exit_on_sigterm("publishing")
    announce("publishing", version=f"{config.job_name}-v{config.version}")
    path = publish_version(trainer, tokenizer, config, metrics=metrics, data_digest=data.digest,
                           strategy=choice.to_manifest(), data_counts=data.counts, training=training)
    if path is not None:
        metrics_cb.write_textfile()
        log.info("version published", extra={"path": str(path), "metrics": metrics})
    leave_process_group()  # the other ranks wait here until rank 0 has published
    return EXIT_OK
