"""The shared fixtures live in tests/conftest.py; the names the experiment tests import are re-exported here."""

from ..conftest import CONF, SCALE_QUERIES, TINY_QUERIES, compose_cfg  # noqa: F401
