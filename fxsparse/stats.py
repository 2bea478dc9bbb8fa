"""What a frame cost (``FrameStats``) and how a model is covered (``CoverageReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LayerStats:
    """One node's share of a frame."""

    name: str
    op: str
    changed_fraction: float
    macs_dense: int
    macs_cone: int
    macs_executed: int


@dataclass
class FrameStats:
    """What the last call did, summed over all streams of the batch.

    Attributes:
        macs_dense: MACs of a dense forward pass.
        macs_cone: MACs of the outputs whose receptive field touches a change
            (the least any exact method must compute).
        macs_executed: MACs the kernels ran (tile waste and dense switches included).
        changed_fraction: share of changed input pixels, one entry per stream.
        cache_bytes: bytes held by the caches of all streams.
        dense: the call ran the dense model (first frame of the streams, or a dense frame: more than
            ``dense_switch`` of every stream changed). Its ``macs_cone`` is then the dense cost (not computed).
        layers: per-node breakdown, in execution order.
    """

    macs_dense: int = 0
    macs_cone: int = 0
    macs_executed: int = 0
    changed_fraction: list[float] = field(default_factory=list)
    cache_bytes: int = 0
    dense: bool = False
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def cone_speedup(self) -> float:
        """``macs_dense / macs_cone``: the best speedup any exact method could reach."""
        return self.macs_dense / self.macs_cone if self.macs_cone else float("inf")

    def __str__(self) -> str:
        lines = [
            f"{'node':40s} {'op':18s} {'changed':>8s} {'GMACs dense':>11s} {'cone':>8s} {'executed':>9s}",
        ]
        for r in self.layers:
            lines.append(
                f"{r.name[:40]:40s} {r.op[:18]:18s} {r.changed_fraction:8.2%} {r.macs_dense / 1e9:11.3f} "
                f"{r.macs_cone / 1e9:8.3f} {r.macs_executed / 1e9:9.3f}"
            )
        changed = ", ".join(f"{c:.2%}" for c in self.changed_fraction)
        lines.append(
            f"total: dense {self.macs_dense / 1e9:.3f} GMACs, cone {self.macs_cone / 1e9:.3f}, "
            f"executed {self.macs_executed / 1e9:.3f}; changed input per stream [{changed}]; "
            f"cache {self.cache_bytes / 2**20:.1f} MiB" + (" (dense frame)" if self.dense else "")
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class CoverageEntry:
    name: str
    op: str
    rule: str
    lowering: str
    fallback_reason: str | None = None


@dataclass
class CoverageReport:
    """Every graph node with its change rule; dense fallbacks carry their reason."""

    entries: list[CoverageEntry]

    @property
    def fallbacks(self) -> list[CoverageEntry]:
        return [e for e in self.entries if e.fallback_reason is not None]

    def __str__(self) -> str:
        lines = [f"{'node':40s} {'op':24s} {'rule':18s} lowering"]
        for e in self.entries:
            tail = e.lowering if e.fallback_reason is None else f"DENSE FALLBACK: {e.fallback_reason}"
            lines.append(f"{e.name[:40]:40s} {e.op[:24]:24s} {e.rule:18s} {tail}")
        n = len(self.entries)
        lines.append(f"{n - len(self.fallbacks)} of {n} nodes run sparsely; {len(self.fallbacks)} fall back to dense.")
        return "\n".join(lines)
