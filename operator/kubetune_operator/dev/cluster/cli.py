"""`kubetune dev …`: build, start, stop and inspect a local control plane."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from kubetune_operator.dev.cluster.build import BuildError, build_all
from kubetune_operator.dev.cluster.cluster import ClusterError, LocalCluster
from kubetune_operator.dev.cluster.topology import load_topology

name_option = click.option("--name", default="default", show_default=True, help="Cluster name (its state folder).")
state_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None,
    help="Parent folder of cluster state (default ~/.local/state/kubetune/clusters).",
)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def dev() -> None:
    """A real local Kubernetes control plane with fake GPU nodes (kwok), for development and tests.

    With `up --local-node`, node local-0 runs the pods placed on it as local processes."""


@dev.command()
@click.option("--kueue", "with_kueue", is_flag=True, default=False,
              help="Also build Kueue (otherwise built on demand by `dev up --with-kueue`).")
def build(with_kueue: bool) -> None:
    """Build (or find cached) etcd, kube-apiserver, controller-manager, scheduler, kwok and helm."""
    start = time.monotonic()
    try:
        took = build_all(say=_say)
        if with_kueue:
            took += build_all(say=_say, only=["kueue"])
    except BuildError as e:
        raise click.ClickException(str(e)) from e
    _say(f"components ready ({took:.0f}s building, {time.monotonic() - start:.0f}s in all)")


@dev.command()
@name_option
@state_option
@click.option("--topology", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fake-node pools YAML (default: 4 x 8 H100 + 4 x 4 A100).")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--local-node", is_flag=True, default=False,
              help="Also run node local-0, which runs the pods placed on it as local processes "
                   "(see docs/local-node.md).")
@click.option("--local-node-gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fake GPUs local-0 advertises (nvidia.com/gpu and its type label): a count for the scheduler "
                   "and the GPU queue only; its pods still run on the CPU. Needs --local-node.")
@click.option("--local-node-gpu-product", default=None,
              help="GPU type (label nvidia.com/gpu.product) of local-0's fake GPUs (default kubetune-fake-gpu).")
@click.option("--operator", "with_operator", is_flag=True, default=False,
              help="Also install the CRDs and run the operator as a process of this cluster, with the "
                   "Helm chart's ServiceAccount; `dev down` stops it (log under the state folder).")
@click.option("--with-kueue", "with_kueue", is_flag=True, default=False,
              help="Also run Kueue (built from its pinned module on first use) as a process of this "
                   "cluster, with its CRDs; `dev down` stops it (see docs/kueue-dev.md).")
def up(name: str, state_dir: Path | None, topology: str | None, timeout: float, local_node: bool,
       local_node_gpus: int, local_node_gpu_product: str | None, with_operator: bool, with_kueue: bool) -> None:
    """Start the cluster (building components first when their pins changed)."""
    if (local_node_gpus or local_node_gpu_product) and not local_node:
        raise click.UsageError("--local-node-gpus and --local-node-gpu-product need --local-node")
    cluster = LocalCluster(name, state_dir, say=_say)
    try:
        state = cluster.up(load_topology(topology), timeout=timeout, local_node=local_node, kueue=with_kueue,
                           local_node_gpus=local_node_gpus, local_node_gpu_product=local_node_gpu_product)
    except (BuildError, ClusterError) as e:
        raise click.ClickException(str(e)) from e
    if with_operator:
        # The demo's own steps: one way to run the operator on a dev cluster, owned by its state.
        from kubetune_operator.dev.demo.run import Kubectl, install_crds, start_operator

        install_crds(Kubectl(Path(state.kubeconfig)))
        start_operator(state, _say)
    _say(f"kubeconfig: {state.kubeconfig}")
    click.echo(f"export KUBECONFIG={state.kubeconfig}")


@dev.command()
@name_option
@state_option
def down(name: str, state_dir: Path | None) -> None:
    """Stop every process the cluster started (by pid) and remove its state."""
    if LocalCluster(name, state_dir, say=_say).down():
        _say(f"cluster {name!r} stopped and removed")
    else:
        _say(f"cluster {name!r} was not running")


@dev.command()
@name_option
@state_option
def status(name: str, state_dir: Path | None) -> None:
    """Say what runs (JSON)."""
    info = LocalCluster(name, state_dir, say=_say).status()
    click.echo(json.dumps(info, indent=2))
    sys.exit(0 if info.get("running") else 1)


@dev.command()
@name_option
@state_option
def env(name: str, state_dir: Path | None) -> None:
    """Print `export KUBECONFIG=…` for eval in a shell."""
    state = LocalCluster(name, state_dir, say=_say).state()
    if state is None:
        raise click.ClickException(f"cluster {name!r} is not running: start it with `kubetune dev up`")
    click.echo(f"export KUBECONFIG={state.kubeconfig}")
