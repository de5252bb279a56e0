"""The seccomp filter every sandboxed run gets (bubblewrap's --seccomp): a classic-BPF program that refuses the system
calls by which a program reaches into another process of its own uid, above all the launcher that writes the run's
result: ptrace, process_vm_readv/writev, pidfd_getfd (which copied the launcher's report pipe) and kcmp. A call from
another ABI (32-bit x86, x32) kills the process, so the numbers below cannot be dodged."""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; ...
_NR, _ARCH = 0, 4
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_X32_BIT = 0x40000000

# machine -> (AUDIT_ARCH_*, {syscall: number}) from the kernel's syscall tables
_TABLES = {
    "x86_64": (0xC000003E, {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
                            "pidfd_getfd": 438}),
    "aarch64": (0xC00000B7, {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
                             "pidfd_getfd": 438}),
}
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")


class SeccompUnsupported(RuntimeError):
    pass


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def deny_filter(machine: str | None = None) -> bytes:
    """The compiled filter for this machine: EPERM for each DENIED call, everything else allowed."""
    machine = machine or platform.machine()
    if machine not in _TABLES:
        raise SeccompUnsupported(f"no seccomp filter for machine '{machine}' (known: {sorted(_TABLES)})")
    arch, numbers = _TABLES[machine]
    program = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, arch, jt=1), _insn(_RET_K, _KILL_PROCESS),
               _insn(_LD_W_ABS, _NR)]
    if machine == "x86_64":
        program += [_insn(_JGE_K, _X32_BIT, jf=1), _insn(_RET_K, _KILL_PROCESS)]
    for name in DENIED:  # each: if nr == number, fall through to the EPERM return, else skip it
        program += [_insn(_JEQ_K, numbers[name], jf=1), _insn(_RET_K, _ERRNO | errno.EPERM)]
    program.append(_insn(_RET_K, _ALLOW))
    return b"".join(program)
