"""Shared fixtures for the tests."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def own_count_cache(tmp_path_factory):
    """The parameter counts kept between processes (models/registry.py) go to a folder of the
    session's own, read by every worker it starts: the suite neither reads a count an earlier
    checkout wrote nor leaves one in the user's home."""
    previous = os.environ.get("LONGARCH_COUNT_CACHE")
    os.environ["LONGARCH_COUNT_CACHE"] = str(tmp_path_factory.mktemp("counts"))
    yield
    if previous is None:
        os.environ.pop("LONGARCH_COUNT_CACHE", None)
    else:
        os.environ["LONGARCH_COUNT_CACHE"] = previous


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
