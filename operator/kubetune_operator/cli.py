"""The `kubetune` command line: the operator, CRD generation and the local development cluster."""

from __future__ import annotations

import click

from kubetune_operator.devcluster.cli import dev


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kubetune")
def main() -> None:
    """kubetune: fine-tune and serve your own language models on your own Kubernetes clusters."""


main.add_command(dev)


@main.command("crds")
@click.option("--out", "out_dir", default="crds", show_default=True, help="Folder for the generated CRD YAML.")
@click.option("--check", is_flag=True, help="Fail (exit 1) when the files in --out differ from the models.")
def crds(out_dir: str, check: bool) -> None:
    """Generate CustomResourceDefinitions from the pydantic API models."""
    from kubetune_operator.api.crdgen import write_or_check

    raise SystemExit(write_or_check(out_dir, check=check))


@main.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("kopf_args", nargs=-1, type=click.UNPROCESSED)
def run(kopf_args: tuple[str, ...]) -> None:
    """Run the operator (kopf) against the cluster of the current kubeconfig."""
    from kubetune_operator.main import run_operator

    run_operator(list(kopf_args))


if __name__ == "__main__":
    main()
