"""Shared fixtures for the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny tensor work on one thread: a second thread only adds synchronisation,
    and while the cores are busy with another job each parallel region (the per-channel
    convolution has many) can stall for milliseconds, making a 1 s test take 30."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    """A BPE tokenizer trained here on the support module's text (the hub is out of reach)."""
    from test_text_support import bpe_tokenizer

    return bpe_tokenizer()


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    """Small SQuAD v2 and HotpotQA dev files in their real layouts, for qa_1 and qa_2."""
    from test_text_support import write_hotpot, write_squad

    folder = tmp_path_factory.mktemp("qa")
    return {"qa_1": write_squad(folder / "squad.json"), "qa_2": write_hotpot(folder / "hotpot.json")}
