"""One memory + pids cgroup per sandboxed run, so a run is bounded as a whole: rlimits bound each process, but a run
of many processes (and the memfds, /tmp files and inodes they make: all charged to the memory cgroup) could
otherwise hold many times its memory limit. Uses cgroup v2 where this process's cgroup has the memory and pids
controllers and can be written, else the v1 memory and pids hierarchies where they can be written."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

CONTROLLERS = ("memory", "pids")


class CgroupsUnavailable(RuntimeError):
    pass


def _mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, root within its hierarchy, mount point, super options) of each cgroup mount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] in ("cgroup", "cgroup2"):
            out.append((fields[sep + 1], fields[3], fields[4], fields[sep + 3]))
    return out


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _under(mount_root: str, mount_point: str, path: str) -> Path:
    rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return Path(mount_point) / ("" if rel == "." else rel)


def _writable(parent: Path) -> None:
    probe = parent / f"rlpost-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise CgroupsUnavailable(f"cannot create cgroups under {parent}: {e.strerror}") from e


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


class RunCgroups:
    """Where each run's cgroups are made: v2, one directory with both controllers; v1, one per controller."""

    def __init__(self, version: int, parents: list[Path]):
        self.version, self.parents = version, parents

    @classmethod
    def detect(cls) -> RunCgroups:
        mounts, own, why = _mounts(), _own_paths(), []
        v2 = next((m for m in mounts if m[0] == "cgroup2"), None)
        if v2 is not None and "" in own:
            mine = _under(v2[1], v2[2], own[""])
            have = set((mine / "cgroup.controllers").read_text().split()) if (mine / "cgroup.controllers").exists() \
                else set()
            if set(CONTROLLERS) <= have:
                try:
                    return cls(2, [cls._delegate_v2(mine)])
                except (CgroupsUnavailable, OSError) as e:
                    why.append(f"cgroup v2 at {mine}: {e}")
            else:
                why.append(f"cgroup v2 at {mine} lacks the {'/'.join(sorted(set(CONTROLLERS) - have))} controller")
        parents = []
        for name in CONTROLLERS:
            mount = next((m for m in mounts if m[0] == "cgroup" and name in m[3].split(",")), None)
            if mount is None or name not in own:
                why.append(f"no cgroup v1 {name} hierarchy")
                break
            parent = _under(mount[1], mount[2], own[name])
            try:
                _writable(parent)
            except CgroupsUnavailable as e:
                why.append(str(e))
                break
            parents.append(parent)
        if len(parents) == len(CONTROLLERS):
            return cls(1, parents)
        raise CgroupsUnavailable("; ".join(why))

    @staticmethod
    def _delegate_v2(mine: Path) -> Path:
        """v2 puts processes only in leaves: this server moves into a leaf of its own so that its cgroup can hand
        the controllers to the runs' cgroups beside it. Other processes in its cgroup would block that."""
        _writable(mine)
        others = set((mine / "cgroup.procs").read_text().split()) - {str(os.getpid())}
        if others:
            raise CgroupsUnavailable(f"it also holds {len(others)} other processes; start the sandbox server in a "
                                     f"cgroup of its own (e.g. systemd-run --scope -p Delegate=yes rlpost serve "
                                     f"sandbox)")
        leaf = mine / "rlpost-sandbox-server"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        (mine / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        return mine

    def describe(self) -> str:
        return f"cgroup v{self.version} under {', '.join(map(str, self.parents))}"

    def create(self, memory_bytes: int, max_pids: int) -> RunCgroup:
        name = f"rlpost-run-{uuid.uuid4().hex[:12]}"
        dirs = [parent / name for parent in self.parents]
        for d in dirs:
            d.mkdir()
        run = RunCgroup(self.version, dirs)
        try:
            if self.version == 2:
                (dirs[0] / "memory.max").write_text(str(memory_bytes))
                (dirs[0] / "memory.swap.max").write_text("0")
                (dirs[0] / "pids.max").write_text(str(max_pids))
            else:
                (dirs[0] / "memory.limit_in_bytes").write_text(str(memory_bytes))
                if (dirs[0] / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                    (dirs[0] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                (dirs[1] / "pids.max").write_text(str(max_pids))
        except OSError:
            run.remove()
            raise
        return run


class RunCgroup:
    def __init__(self, version: int, dirs: list[Path]):
        self.version, self.dirs = version, dirs

    def enter_tree(self, pid: int) -> None:
        """Move pid and its descendants in. Each process moves before its children are listed, so a child forked
        meanwhile is either listed or born inside."""
        todo = [pid]
        while todo:
            current = todo.pop()
            try:
                for d in self.dirs:
                    (d / "cgroup.procs").write_text(str(current))
            except ProcessLookupError:
                continue
            todo += _children(current)

    def _stat(self, name: str, key: str) -> int:
        with contextlib.suppress(OSError):
            for line in (self.dirs[0] / name).read_text().splitlines():
                field, _, value = line.partition(" ")
                if field == key:
                    return int(value)
        return 0

    def oom_kills(self) -> int:
        return self._stat("memory.events" if self.version == 2 else "memory.oom_control", "oom_kill")

    def remove(self) -> None:
        """Kill whatever is left (nothing, normally: the PID namespace died with bwrap), then remove the cgroups."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    with contextlib.suppress(OSError):
                        for pid in (d / "cgroup.procs").read_text().split():
                            with contextlib.suppress(ProcessLookupError, PermissionError):
                                os.kill(int(pid), signal.SIGKILL)
                    time.sleep(0.02)
