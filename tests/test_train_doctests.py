"""The >>> examples in the training modules run and give what they show."""
import doctest

import pytest

import pyllama.data
import pyllama.optim
import pyllama.train


@pytest.mark.parametrize("module", [pyllama.optim, pyllama.data, pyllama.train], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
