import pytest

from tests.lib.layers import make_busy_layer


@pytest.fixture
def busy_layer():
    """:func:`make_busy_layer`, for the tests that compare layers on gates that open and close."""
    return make_busy_layer
