"""The `kubetune` command line: the operator, CRD generation and the local development cluster."""

from __future__ import annotations

import importlib

import click

# Development commands load on use: the operator image runs `kubetune run` and never imports dev/.
DEV_COMMANDS = {
    "dev": "kubetune_operator.dev.cluster.cli:dev",
    "demo": "kubetune_operator.dev.demo.cli:demo",
    "models": "kubetune_operator.dev.demo.cli:models",
}


class Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *DEV_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in DEV_COMMANDS:
            module, _, attr = DEV_COMMANDS[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kubetune")
def main() -> None:
    """kubetune: fine-tune and serve your own language models on your own Kubernetes clusters."""


@main.command("crds")
@click.option("--out", "out_dir", default="crds", show_default=True, help="Folder for the generated CRD YAML.")
@click.option("--check", is_flag=True, help="Fail (exit 1) when the files in --out differ from the models.")
def crds(out_dir: str, check: bool) -> None:
    """Generate CustomResourceDefinitions from the pydantic API models."""
    from kubetune_operator.api.crdgen import write_or_check

    raise SystemExit(write_or_check(out_dir, check=check))


def _described(name: str) -> str:
    from kubetune_operator.runtime.settings import ENV_PREFIX, OperatorSettings

    field = OperatorSettings.model_fields[name]
    return f"{field.description} [env {ENV_PREFIX}{name.upper()}]"


@main.command("run")
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch this namespace (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster (the default without -n).")
@click.option("--controllers", default=None, help="Comma-separated controllers to run "
              "(finetunejob, modeldeployment) [default: all; env KUBETUNE_CONTROLLERS]")
@click.option("--bind-address", default=None, help=_described("bind_address") + " [default: 127.0.0.1]")
@click.option("--metrics-port", type=int, default=None, help=_described("metrics_port") + " [default: 8080]")
@click.option("--health-port", type=int, default=None, help=_described("health_port") + " [default: 8081]")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines as text or as JSON objects [default: text; env KUBETUNE_LOG_FORMAT]")
@click.option("--leader-election/--no-leader-election", default=None,
              help=_described("leader_election") + " [default: off]")
@click.option("--leader-election-lease", default=None, metavar="NAME",
              help=_described("leader_election_lease") + " [default: kubetune]")
@click.option("--leader-election-namespace", default=None, metavar="NAMESPACE",
              help=_described("leader_election_namespace"))
@click.option("--verbose", is_flag=True, help="Debug logging.")
def run(namespaces: tuple[str, ...], all_namespaces: bool, controllers: str | None, bind_address: str | None,
        metrics_port: int | None, health_port: int | None, log_format: str | None, leader_election: bool | None,
        leader_election_lease: str | None, leader_election_namespace: str | None, verbose: bool) -> None:
    """Run the operator (kopf) against the cluster of the current kubeconfig.

    Flags override the KUBETUNE_* environment, which overrides the defaults. With --leader-election,
    run as many as you like: one acts, the others wait and one of them takes over within 19 s of the
    leader's death (a coordination.k8s.io Lease; docs/install.md, "High availability").
    """
    from kubetune_operator.main import run_operator

    argv: list[str] = ["--all-namespaces"] if all_namespaces else []
    for ns in namespaces:
        argv += ["--namespace", ns]
    for flag, value in (("--controllers", controllers), ("--bind-address", bind_address),
                        ("--metrics-port", metrics_port), ("--health-port", health_port),
                        ("--log-format", log_format), ("--leader-election-lease", leader_election_lease),
                        ("--leader-election-namespace", leader_election_namespace)):
        if value is not None:
            argv += [flag, str(value)]
    if leader_election is not None:
        argv.append("--leader-election" if leader_election else "--no-leader-election")
    run_operator(argv + (["--verbose"] if verbose else []))


if __name__ == "__main__":
    main()
