"""MLflow tracking that can never stop a training run."""

from __future__ import annotations

import functools
import logging
from typing import Any

from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)

_EVENT_METHODS = ("start", "iteration_completed", "epoch_completed", "complete", "close")


class SafeMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` whose failures (unreachable server, locked store, ...) give one warning and then
    switch tracking off for the rest of the run instead of raising inside the training loop.

    Takes exactly ``MLFlowHandler``'s arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.requested_tracking_uri = kwargs.get("tracking_uri", args[0] if args else None)
        super().__init__(*args, **kwargs)
        self.tracking_failed = False
        for name in _EVENT_METHODS:
            setattr(self, name, self._guard(getattr(self, name), name))

    def _guard(self, method: Any, name: str) -> Any:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> None:
            if self.tracking_failed:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as err:  # any tracking failure: warn once, keep training
                self.tracking_failed = True
                logger.warning(
                    "MLflow tracking to %r failed in %s (%s: %s); training continues without tracking",
                    self.requested_tracking_uri, name, type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "",
                )
                return None

        return guarded
