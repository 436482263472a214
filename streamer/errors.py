"""Exceptions for bad input: skipped with a counted reason. Bugs are not caught as these."""


class BadInput(Exception):
    """Input from outside (detector, file, user) that cannot be used.

    `reason` is a short, stable, low-cardinality label used as the Prometheus/summary
    drop reason (e.g. "corrupt_compression"); the message says what was wrong in detail.
    """

    reason = "bad_input"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadHeader(BadInput):
    """A series header (start message) that cannot be understood."""

    reason = "bad_header"


class BadMessage(BadInput):
    """A stream message that does not parse (multipart layout, JSON, CBOR, unknown type)."""

    reason = "malformed_message"


class BadFrame(BadInput):
    """An image whose pixels cannot be used (corrupt compression, wrong size/shape/dtype)."""

    reason = "bad_frame"


class BadConfig(BadInput):
    """A configuration file or override that does not validate."""

    reason = "bad_config"
