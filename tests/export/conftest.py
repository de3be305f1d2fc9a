import pytest
from tiny_checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="session")
def moe_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("moe"), preset="tiny-moe")
