"""pytest configuration: puts tests/ (not the repo root) on sys.path so tests can
`from helpers import ...`; the pyllama under test is always the installed one."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
