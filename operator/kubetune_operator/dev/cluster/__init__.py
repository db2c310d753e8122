"""A real local Kubernetes control plane, built from pinned Go modules and started on loopback.

`kubetune dev up | down | status | env`. Components: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes whose pods run and finish on cue), plus kubectl and helm.
"""
