"""The examples in the docstrings and the README's quickstart run and say what they claim."""

import doctest
import pathlib
import re

import pytest

import phased_lstm.functional
import phased_lstm.nn.cell
import phased_lstm.nn.layer
import phased_lstm.nn.stream
import phased_lstm.optim
import phased_lstm.tuning

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    "module",
    [
        phased_lstm.functional,
        phased_lstm.nn.cell,
        phased_lstm.nn.layer,
        phased_lstm.nn.stream,
        phased_lstm.optim,
        phased_lstm.tuning,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_quickstart_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    exec(compile(blocks[0], "README quickstart", "exec"), {})
