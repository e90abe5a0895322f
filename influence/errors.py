"""One exception type for every bad input the library refuses, so callers can catch it in one place."""


class InfluenceError(ValueError):
    """A one-line, actionable error: what is wrong and what to fix."""
