"""The error of weights preparation, shared by conversion and adapter merging."""

from tunedock.errors import TunedockError


class ConversionFailed(TunedockError):
    """The weights could not be prepared for the engine; ``message`` gives the reason, for people."""

    code = "weights_conversion_failed"
