"""The session's digits classifier fixtures, shared with tests/metrics."""

from tests.metrics.conftest import classifier_cache, digits_classifier  # noqa: F401
