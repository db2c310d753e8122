"""Checks of a FineTuneJob spec that need the builders: render the run's children once, without I/O.

The schema cannot check everything (an IANA zone name, a cron date that never comes, what the pod
builders read from a quantity), so the controller renders a run here before acting on a spec; the
first value kubetune cannot use raises SpecError naming the field and the fix.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from kubetune_operator.api.common import SpecError
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.builders.trainer_config import RunInputs, build_trainer_config
from kubetune_operator.builders.training import build_training_job, build_validation_job
from kubetune_operator.core.finetunejob import schedule


def validation_problems(error: ValidationError) -> str:
    """Pydantic errors as `spec.field: message` lines, as kubectl would name the fields."""
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" if e["loc"][:1] == ("spec",)
        else f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
    ) + "; fix the field and apply again"


def check_spec(ftj: FineTuneJob) -> None:
    """Interpret every user value the controller will use; SpecError names the first bad one."""
    if ftj.spec.schedule is not None:
        schedule.validate(ftj.spec.schedule)
    cpu = ftj.spec.resources.cpu
    if isinstance(cpu, str) and not re.fullmatch(r"[0-9]+m|[0-9]*\.?[0-9]+", cpu):
        raise SpecError("spec.resources.cpu", f"{cpu!r} is a quantity the trainer cannot turn into CPU threads",
                        "write cores (8, 0.5) or millicores (7500m)")
    inputs = RunInputs(run=1, version=1, attempt=1, resume=False)
    try:
        rendered = build_trainer_config(ftj, inputs)
        build_validation_job(ftj, inputs, "image", rendered)
        build_training_job(ftj, inputs, "image", rendered=rendered)
    except ValidationError as e:
        raise SpecError("spec", f"the trainer refuses the configuration built from it: {validation_problems(e)}",
                        "fix the field it names") from e
    except (ValueError, TypeError, ArithmeticError) as e:
        raise SpecError("spec", f"kubetune cannot build the run's pods from it: {e}",
                        "fix the value it names and apply again") from e
