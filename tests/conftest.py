import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from official_weights import KODAK


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def kodak() -> Path:
    if not KODAK.is_dir():
        pytest.skip("../shared/data/kodak is not available")
    return KODAK
