"""benchmarks/long_stream.py runs and reports what it says, on a tiny stream (its speed figures
are benchmarks, recorded in the issue, not tested here)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "long_stream.py"


def _script():
    spec = importlib.util.spec_from_file_location("long_stream", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_stream_prints_and_writes_each_segment(tmp_path, capsys, one_thread):
    out = tmp_path / "stream.json"
    archs = ["mamba2", "gla", "retnet"]
    _script().main(["--tokens", "8K", "--piece", "1K", "--segment", "2K", "--d-model", "16",
                    "--archs", *archs, "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["results"]] == archs
    for result in saved["results"]:
        assert [s["tokens"] for s in result["segments"]] == [2048, 4096, 6144, 8192]
        assert all(s["tok_s"] > 0 for s in result["segments"])
        assert result["first_tok_s"] == result["segments"][0]["tok_s"]
        assert result["last_tok_s"] == result["segments"][-1]["tok_s"]
        assert result["peak_rss_mib"] > 0
        assert f"{result['name']}: 8,192 tokens at batch 1 in pieces of 1,024" in printed
    assert printed.count("tok/s  RSS") == 3 * 4 and printed.count("end/start") == 3


def test_a_last_piece_shorter_than_the_others_is_fed_and_counted(one_thread):
    result = _script().stream("mamba2", 2500, 1024, 2048, 16)
    assert [s["tokens"] for s in result["segments"]] == [2048, 2500]


@pytest.mark.parametrize("text, count", [("8K", 8192), ("1M", 1 << 20), ("5000", 5000)])
def test_counts(text, count):
    assert _script()._count(text, "--tokens") == count
