"""Pod networking on one host without CNI: an IP per pod on `lo`, and a per-pod /etc/hosts.

- Pod IPs come from 10.245.0.0/16, made local to the host by ONE route, added at node start:
  `ip route replace local 10.245.0.0/16 dev lo table local` (what 127.0.0.0/8 is by default). Every
  address of the range is then bindable and reachable from the host and from every pod, with no
  per-pod configuration. Loopback addresses (127.x) would be simpler but the apiserver rejects them
  in EndpointSlices ("may not be in the loopback range"), so Services would never get endpoints.
  Without the privilege to add the route, the node falls back to 127.10.0.0/16 and says so.
  The route stays after the node exits (harmless; `ip route del table local local 10.245.0.0/16 dev lo`).
- Each leased IP is also an address of `lo` (`ip addr replace <ip>/32 dev lo`) while its pod
  lives, as the pod IP is an address of eth0 in a real pod: programs that look up the interface of
  their own address (gloo, NCCL and torch.distributed's TCPStore resolve the hostname and then
  search `getifaddrs()` for it) find one. The route alone makes the address reachable, not owned.
- Addresses are leased host-wide (a file per IP under /run/kubetune/localnode-ips, created with
  O_EXCL, naming the pod directory that holds it): several local nodes (clusters) on one machine
  never hand out the same IP, and an IP is never reused while its pod directory exists.
- Servers that bind the wildcard address are moved onto their pod's IP by `bindshim` (LD_PRELOAD),
  so two pods can both listen on 0.0.0.0:29500.
- Names: each pod's /etc/hosts (bind-mounted over /etc/hosts in its mount namespace) holds the
  localhost lines, the pod's own hostname (as the kubelet writes it), and for every live pod on the
  node that has `hostname` + `subdomain` the names the cluster DNS would serve for it:
  `<h>.<s>.<ns>`, `<h>.<s>.<ns>.svc`, `<h>.<s>.<ns>.svc.cluster.local`, plus the short `<h>.<s>`
  (which DNS serves through the search path) for pods of the same namespace. Unlike the cluster DNS
  these names exist whether or not a headless Service named `<s>` exists.
- The hosts files are rewritten IN PLACE (same inode) when pods come and go: a bind mount pins the
  inode, so replacing the file by rename would never be seen inside the pod.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
LEASES = Path("/run/kubetune/localnode-ips")

_LOCALHOST = """# Kubernetes-managed hosts file (kubetune local node).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class PodName:
    """What one pod contributes to the hosts files."""

    namespace: str
    ip: str
    hostname: str  # spec.hostname or the pod name
    subdomain: str | None


def hosts_file(own: PodName, others: Iterable[PodName], domain: str = CLUSTER_DOMAIN) -> str:
    """The /etc/hosts content of pod `own`, given every live pod's names (its own included or not)."""
    lines = [_LOCALHOST.rstrip("\n")]
    if own.subdomain:
        lines.append(f"{own.ip}\t{own.hostname}.{own.subdomain}.{own.namespace}.svc.{domain}\t{own.hostname}")
    else:
        lines.append(f"{own.ip}\t{own.hostname}")
    seen: set[str] = set()
    for pod in others:
        if not pod.subdomain:
            continue
        qualified = f"{pod.hostname}.{pod.subdomain}.{pod.namespace}"
        names = [f"{pod.hostname}.{pod.subdomain}"] if pod.namespace == own.namespace else []
        names += [qualified, f"{qualified}.svc", f"{qualified}.svc.{domain}"]
        if qualified in seen:  # two live pods claiming one name: the first (newest) wins
            continue
        seen.add(qualified)
        lines.append(f"{pod.ip}\t" + " ".join(names))
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, content: str) -> None:
    """Overwrite `path` keeping its inode (bind mounts of it stay valid); create it if missing.

    Writing first and truncating after means a reader never sees an empty file when the new
    content is at least as long as the old."""
    data = content.encode()
    path.touch(exist_ok=True)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


def ensure_local_route(cidr: str) -> bool:
    """Make every address of `cidr` local to the host (an AnyIP route on lo); False if not allowed."""
    try:
        shown = subprocess.run(["ip", "route", "show", "table", "local", "type", "local", cidr],
                               capture_output=True, text=True, timeout=10)
        if shown.returncode == 0 and cidr.split("/")[0] in shown.stdout:
            return True
        added = subprocess.run(["ip", "route", "replace", "local", cidr, "dev", "lo", "table", "local"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot add the pod IP route for %s: %s", cidr, e)
        return False
    if added.returncode != 0:
        log.warning("cannot add the pod IP route for %s: %s", cidr, added.stderr.strip())
        return False
    return True


def _ip(action: str, address: str) -> None:
    try:
        done = subprocess.run(["ip", "addr", action, f"{address}/32", "dev", "lo"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("ip addr %s %s/32 dev lo: %s", action, address, e)
        return
    if done.returncode != 0 and action != "del":  # del of an absent address is the goal reached
        log.warning("ip addr %s %s/32 dev lo: %s", action, address, done.stderr.strip())


class IpAllocator:
    """Hands out pod IPs from a range; each one is leased host-wide to the pod directory holding it.

    Outside the loopback range each held IP is also an address of `lo` (see the module docstring).
    """

    def __init__(self, cidr: str, leases: Path = LEASES) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.assign = not self.network.is_loopback
        self.leases = leases
        self.held: dict[str, Path] = {}
        self._next = 2  # .0 network, .1 reserved (as a gateway would be)

    def _lease(self, ip: str) -> Path:
        return self.leases / ip

    def _try_lease(self, ip: str, owner: Path) -> bool:
        self.leases.mkdir(parents=True, exist_ok=True)
        path = self._lease(ip)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = Path(path.read_text().strip())
                except OSError:
                    continue
                if holder == owner:
                    return True
                if holder.exists():
                    return False
                with contextlib.suppress(FileNotFoundError):  # its pod directory is gone: stale
                    path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(owner))
            return True
        return False

    def hold(self, ip: str, owner: Path) -> None:
        """Keep `ip` for `owner` (a pod adopted after a node restart)."""
        self.held[ip] = owner
        self._try_lease(ip, owner)
        if self.assign:
            _ip("replace", ip)

    def allocate(self, owner: Path) -> str:
        size = self.network.num_addresses
        for _ in range(size):
            offset = self._next
            self._next = self._next + 1 if self._next + 1 < size - 1 else 2
            ip = str(self.network.network_address + offset)
            if ip not in self.held and self._try_lease(ip, owner):
                self.held[ip] = owner
                if self.assign:
                    _ip("replace", ip)
                return ip
        raise RuntimeError(f"no free pod IP left in {self.network}")

    def release(self, ip: str | None) -> None:
        if not ip:
            return
        owner = self.held.pop(ip, None)
        with contextlib.suppress(OSError):
            if owner is not None and Path(self._lease(ip).read_text().strip()) == owner:
                self.drop(ip)

    def drop(self, ip: str | None) -> None:
        """Give up `ip` left by a pod that no longer exists (found at adoption), lease and address."""
        if not ip:
            return
        self.held.pop(ip, None)
        with contextlib.suppress(OSError):
            self._lease(ip).unlink()
        if self.assign:
            _ip("del", ip)

    def sweep(self) -> None:
        """Remove addresses of the range from `lo` that no lease holds (left by a node killed hard).

        Safe beside other live nodes: a lease is taken before its address is added, so a live pod's
        address always has one.
        """
        if not self.assign:
            return
        try:
            shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"],
                                   capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        for word in shown.split():
            address = word.split("/")[0]
            with contextlib.suppress(ValueError):
                if (ipaddress.ip_address(address) in self.network and word.endswith("/32")
                        and not self._lease(address).exists()):
                    _ip("del", address)
