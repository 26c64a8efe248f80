import socket
import sys
from collections.abc import Iterator
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
        pytest.skip(f"needs the Kodak images: {KODAK} not found (set HPCM_SHARED)")
    return KODAK


@pytest.fixture
def process_group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What ``torchrun --nproc_per_node=1`` gives its process (with a free port): a trainer built
    with ``trainer.ddp=true`` joins a gloo process group of one, so that DDP and the collectives
    really run in the test's process. The group is left at the end."""
    from hpcm.train.distributed import cleanup

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    try:
        yield
    finally:
        cleanup()
