import pytest

from rlpost.testing.checkpoints import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    from rlpost.models.hf import load_tokenizer

    return load_tokenizer(tiny_llama)
