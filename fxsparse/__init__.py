"""fxsparse: run ordinary PyTorch CNNs on fixed-camera video, computing only what changed.

>>> sm = fxsparse.transform(model)   # any torch.fx-traceable CNN
>>> y = sm(frames)                   # [B, C, H, W]: one frame per stream; same output as model(frames)
>>> sm.stats, sm.coverage()          # what the call cost; how each node is handled
"""

from .errors import FxSparseError, InputError, InputTypeError, TraceFailedError
from .patch import PatchRunner, PatchStats
from .pixels import PixelNormalize
from .runtime import SparseModule
from .stats import CoverageReport, FrameStats, LayerStats
from .transform import transform
from .tune import TuneResult, evaluate, tune

__version__ = "0.1.0"

__all__ = [
    "transform",
    "tune",
    "evaluate",
    "TuneResult",
    "SparseModule",
    "PatchRunner",
    "PatchStats",
    "PixelNormalize",
    "FrameStats",
    "LayerStats",
    "CoverageReport",
    "FxSparseError",
    "InputError",
    "InputTypeError",
    "TraceFailedError",
    "__version__",
]
