"""`python -m kubetune_operator.dev.localnode`: run the local node (started by `kubetune dev up --local-node`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from kubetune_operator.dev.localnode import DEFAULT_GPU_PRODUCT, DEFAULT_NODE_NAME


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kubetune_operator.dev.localnode", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    p.add_argument("--state-dir", required=True, type=Path, help="per-pod state, logs, volumes")
    p.add_argument("--tls-cert", required=True, type=Path, help="log server certificate (for 127.0.0.1)")
    p.add_argument("--tls-key", required=True, type=Path)
    p.add_argument("--client-ca", required=True, type=Path, help="CA that signs the apiserver's client cert")
    p.add_argument("--cluster-ca", type=Path, help="the ca.crt pods get (default: --client-ca)")
    p.add_argument("--log-port", type=int, default=0, help="log server port (default: the last one, else any)")
    p.add_argument("--pass-env", action="append", default=[],
                   help="a host environment variable that pods inherit (as if from their image); repeatable")
    p.add_argument("--drain-on-exit", action="store_true",
                   help="on SIGTERM, stop every pod's processes before exiting (default: leave them running)")
    p.add_argument("--gpus", type=int, default=0,
                   help="fake GPUs to advertise (allocatable nvidia.com/gpu); only a count for the scheduler and "
                        "the GPU queue: pods still run on the CPU (default 0)")
    p.add_argument("--gpu-product", default=DEFAULT_GPU_PRODUCT,
                   help=f"the GPU type label (nvidia.com/gpu.product) of a node with --gpus (default {DEFAULT_GPU_PRODUCT})")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.gpus < 0:
        p.error("--gpus must be 0 or more")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")

    from kubetune_operator.dev.localnode.kube import Kube
    from kubetune_operator.dev.localnode.node import LocalNode

    node = LocalNode(
        Kube(args.kubeconfig), args.node_name, args.state_dir, args.tls_cert, args.tls_key, args.client_ca,
        args.cluster_ca or args.client_ca, log_port=args.log_port,
        pass_env={k: os.environ[k] for k in args.pass_env if k in os.environ}, drain_on_exit=args.drain_on_exit,
        gpus=args.gpus, gpu_product=args.gpu_product,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop.set())
    node.run()


if __name__ == "__main__":
    main()
