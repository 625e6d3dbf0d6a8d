"""Error classes the contract puts in ``errors.py`` that it does not define yet.

DELETE AT MERGE: the runtime half adds ``RateLimited`` to ``errors.py`` (contract §5). Until
then the DSPy half defines it here with the same name and shape, so the wire type is right
either way. Import it from here only; at merge this module becomes a re-export, then goes.
"""

from __future__ import annotations

from typing import Optional

from . import errors

if hasattr(errors, "RateLimited"):
    RateLimited = errors.RateLimited
else:

    class RateLimited(errors.BridgeError):  # type: ignore[no-redef]
        """The provider answered 429 / RateLimitError; the host backs off and retries the request.

        ``retry_after`` (seconds) is the provider's hint, when it sent one; the worker puts
        it in the error object as ``retry_after``.
        """

        def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
            super().__init__(message)
            self.retry_after = retry_after
