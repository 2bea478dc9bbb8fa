"""Energy of a piece of work: Intel RAPL counters when readable, else a labelled CPU-time estimate."""

from __future__ import annotations

import glob
import os
import time

DEFAULT_WATTS_PER_CORE = 10.0  # a stated assumption for the estimate, overridable on the command line


class EnergyMeter:
    """Accumulates joules of the calls it wraps: ``with meter: work()``.

    Uses ``/sys/class/powercap/intel-rapl:*/energy_uj`` (package domains) when readable; otherwise
    CPU-seconds of this process times ``watts_per_core`` (``estimated`` is then True).
    """

    RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*/energy_uj"

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, rapl_glob: str = RAPL_GLOB):
        self.watts_per_core = watts_per_core
        self.paths = [p for p in glob.glob(rapl_glob) if os.access(p, os.R_OK)]
        if self.paths:
            try:
                self._read()
            except OSError:
                self.paths = []
        self.estimated = not self.paths
        self.joules = 0.0
        self.calls = 0

    @property
    def method(self) -> str:
        if self.estimated:
            return f"estimate: CPU-seconds x {self.watts_per_core:g} W per core"
        return "RAPL (package energy counters)"

    def _read(self) -> float:
        total = 0.0
        for p in self.paths:
            with open(p) as f:
                total += int(f.read()) / 1e6
        return total

    def __enter__(self):
        self._start = self._read() if self.paths else time.process_time()
        return self

    def __exit__(self, *exc):
        if self.paths:
            delta = self._read() - self._start
            self.joules += max(delta, 0.0)  # the counter wraps rarely; a wrapped sample counts as 0
        else:
            self.joules += (time.process_time() - self._start) * self.watts_per_core
        self.calls += 1
        return False
