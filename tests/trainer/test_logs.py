"""Logs are one JSON object per line on stderr (docs/trainer.md, docs/serving.md), including what
transformers, datasets, huggingface_hub and Python's warnings module print (issue 12, smaller items)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.trainer.conftest import REPO, child_env

EMIT = """
import logging, warnings
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
from huggingface_hub.utils import logging as hub_logging
hub_logging.get_logger("huggingface_hub.file_download").warning("a hub warning")
warnings.warn("a python warning", FutureWarning, stacklevel=1)
logging.getLogger("accelerate.state").warning("an accelerate warning")
"""
DATASETS = """
from datasets.utils import logging as ds_logging
ds_logging.get_logger("datasets.builder").warning("a datasets warning")
"""
# The server never imports datasets; the trainer does.
SETUPS = {
    "trainer": "from kubetune_trainer.log_setup import setup_logging, route_library_logs\n"
               "setup_logging(); route_library_logs()\n" + DATASETS,
    "server": "from kubetune_trainer.serve.log_setup import configure_logging, route_model_library_logs\n"
              "configure_logging('info'); route_model_library_logs()\n",
}


@pytest.mark.parametrize("process", sorted(SETUPS))
def test_library_warnings_reach_stderr_as_one_json_object_per_line(process: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SETUPS[process] + EMIT], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=120, check=True)
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # a raw line fails here
    by_message = {str(line["message"]).strip(): line for line in lines}
    expected = ["a transformers warning", "a hub warning", "an accelerate warning"]
    expected += ["a datasets warning"] if process == "trainer" else []
    for message in expected:
        assert by_message[message]["level"] == "warning", lines
    (python_warning,) = [line for line in lines if line["logger"] == "py.warnings"]
    assert "FutureWarning: a python warning" in str(python_warning["message"])
    assert len(lines) == len(expected) + 1  # each once: no plain-text copy from a library's own handler
