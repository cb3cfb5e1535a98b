"""Errors a user can act on. Each names where the problem is and what was expected."""


class OversightError(Exception):
    """Base class; the CLI prints these without a traceback."""


class SpecError(OversightError):
    """A batch spec is invalid: raised before any model call is made."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}")


class DataError(OversightError):
    """A dataset row is malformed."""

    def __init__(self, file: str, line: int, field: str, message: str):
        self.file, self.line, self.field = file, line, field
        super().__init__(f"{file}:{line}: field '{field}': {message}")


class ModelError(OversightError):
    """A model call failed. `retryable` tells the retry layer whether another attempt may help;
    `retry_after` is the server's own wait hint in seconds (Retry-After or a rate-limit reset
    header), `kind` a short class for reports: rate_limit, overloaded, server, timeout,
    connection, malformed, context_length, auth, bad_request, not_found, budget, other;
    `abandoned` (a sibling turn failed: nothing was sent, never recorded as a call) and, on
    call records only, `cancelled` (a request cut off by Ctrl-C or a lost lease)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None, kind: str = "other"):
        self.retryable, self.status, self.retry_after, self.kind = retryable, status, retry_after, kind
        super().__init__(message)


class StoreError(OversightError):
    """A store cannot be opened or written as asked: names the store and what was expected."""

    def __init__(self, target: str, message: str):
        self.target, self.message = target, message
        super().__init__(f"{target}: {message}")
