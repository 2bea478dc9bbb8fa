"""Exception types raised by fxsparse.

Every message says what went wrong and where, then gives a ``Hint:`` with the fix.
"""


class FxSparseError(Exception):
    """Base class of every error fxsparse raises on purpose."""


class TraceFailedError(FxSparseError):
    """The model could not be traced by ``torch.fx``."""


class InputError(FxSparseError, ValueError):
    """A frame handed to a :class:`~fxsparse.SparseModule` is not usable.

    Subclasses ``ValueError`` so callers that catch ``ValueError`` keep working.
    """


class InputTypeError(FxSparseError, TypeError):
    """A frame has the wrong type or dtype."""
