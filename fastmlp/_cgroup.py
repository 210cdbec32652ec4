"""Limits a container or a systemd slice sets on this process, from its cgroup (Linux):
the memory it may use and the CPU time it may take. A limit set on the cgroup or on any
cgroup above it holds; where none is set or readable, None."""
from __future__ import annotations

import os

ROOT, OWN = "/sys/fs/cgroup", "/proc/self/cgroup"


def _texts(v2_file, v1_file, root=ROOT, own=OWN):
    """The contents of ``v2_file`` (cgroup v2, in the unified folder) and of ``v1_file``
    ("controller/file", cgroup v1) in the cgroup root as this process sees it (in a
    container, the container's), in the process's own cgroup and in every cgroup above
    it, as (version, path, text) for each one that can be read."""
    controller = v1_file.split("/")[0]
    folders = {v2_file: ["/"], v1_file: ["/"]}
    try:
        with open(own) as f:   # "0::/path" (v2), "4:memory:/path" (v1)
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                # the cgroup and every one above it: a limit on a parent (a systemd
                # slice's MemoryMax=, a pod's) holds its children too
                ancestors = [path.rsplit("/", k)[0] or "/" for k in range(path.count("/"))]
                if not controllers:
                    folders[v2_file] += ancestors
                elif controller in controllers.split(","):
                    folders[v1_file] += ancestors
    except (OSError, ValueError):
        pass
    texts = []
    for name, paths in folders.items():
        folder, file = os.path.split(name)
        for path in paths:
            where = os.path.join(root, folder, path.lstrip("/"), file)
            try:
                with open(where) as f:
                    texts.append((2 if name == v2_file else 1, where, f.read().strip()))
            except OSError:   # not this cgroup version, not Linux, or not readable
                continue
    return texts


def memory_limit(root=ROOT, own=OWN):
    """The smallest memory limit in bytes: memory.max (v2, "max" when unlimited) and
    memory/memory.limit_in_bytes (v1, a huge number when unlimited)."""
    limits = [int(text) for _, _, text in _texts("memory.max", "memory/memory.limit_in_bytes",
                                                 root, own) if text.isdigit()]
    return min(limits) if limits else None


def cpu_limit(root=ROOT, own=OWN):
    """The smallest CPU quota, in CPUs (1.5: one and a half CPUs' time): cpu.max (v2,
    "quota period", quota "max" when unlimited) and cpu/cpu.cfs_quota_us over
    cpu/cpu.cfs_period_us (v1, quota -1 when unlimited)."""
    limits = []
    for version, where, text in _texts("cpu.max", "cpu/cpu.cfs_quota_us", root, own):
        if version == 2:
            quota, _, period = text.partition(" ")
        else:
            quota, period = text, _read(os.path.join(os.path.dirname(where),
                                                     "cpu.cfs_period_us"))
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
