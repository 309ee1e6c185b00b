"""The process's peak resident memory (`peak_rss_bytes`), read alike by every worker for its
stats rows and by the benchmarks.

Separate because it is a probe of the operating system, not shard work: one function with the
platform differences in one place.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux's VmHWM, not getrusage's ru_maxrss: that one
    survives exec, so a spawned process reports its parent's peak if that was larger."""
    if sys.platform == "linux":
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
