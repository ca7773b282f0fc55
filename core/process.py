"""This process's own accounting, as Linux reports it in /proc/self (None elsewhere): the umask
(core.atomic), resident and peak memory (the stages' memory log), and the largest peak that a
child process running part of the stage reported (core.executor's isolated units)."""
from __future__ import annotations

from typing import Optional


def status_field(name: str) -> Optional[str]:
    """The first value of `name:` in /proc/self/status (e.g. "VmHWM" -> "1234"), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{name}:"):
                    return line.split()[1]
    except OSError:
        pass
    return None


def _kib_as_mb(name: str) -> Optional[int]:
    value = status_field(name)
    return None if value is None else round(int(value) / 1024)


def peak_memory_mb() -> Optional[int]:
    """This process's peak resident memory since the last reset_peak_memory (VmHWM), in MB."""
    return _kib_as_mb("VmHWM")


def resident_memory_mb() -> Optional[int]:
    """This process's resident memory now (VmRSS), in MB."""
    return _kib_as_mb("VmRSS")


_largest_child_mb: Optional[int] = None  # since the last reset_peak_memory


def note_child_peak(peak_mb: Optional[int]) -> None:
    """A child process that ran part of this stage's work (core.executor) reports its own peak
    resident memory (its VmHWM, read by itself) here; the stage keeps the largest."""
    global _largest_child_mb
    if peak_mb is not None:
        _largest_child_mb = max(_largest_child_mb or 0, int(peak_mb))


def child_peak_memory_mb() -> Optional[int]:
    """The largest peak a child process reported since the last reset_peak_memory (None: no child
    ran). The children run one at a time, so this process's peak plus this bounds what the stage
    held at once."""
    return _largest_child_mb


def reset_peak_memory() -> None:
    """Starts this process's peak-RSS count afresh (Linux: 5 > /proc/self/clear_refs), so each
    stage's peak is its own, not the largest of the stages before it; and forgets the children's."""
    global _largest_child_mb
    _largest_child_mb = None
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
