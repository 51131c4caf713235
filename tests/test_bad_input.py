"""Bad input to the real command line, table by table: every malformed study and command line
ends with exactly one line on stderr starting with `error: `, exit status 2, no traceback, and
nothing already stored is touched.

Every case of test_config.MALFORMED (checked there at the Python level) goes through
`longarch run STUDY --out DIR` here; the other tables are study files and command lines that
only the command line sees. Most cases run in-process through typer's CliRunner; a few run the
installed `longarch` entry point as a subprocess and must print the same line.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from longarch.study import schema
from longarch.cli import app
from study_checks import snapshot
from test_config import MALFORMED, with_changes, _changed, _set, _write

LONGARCH = str(Path(sys.executable).parent / "longarch")
cli = CliRunner()  # click >= 8.2 keeps stderr apart in result.stderr; result.output mixes both
IN_PROCESS = ["--workers", "0"]  # a study that does get to run: no process pool to start


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """A case that is wrongly accepted must not leave runs/ in the repository."""
    monkeypatch.chdir(tmp_path)


def rejected(result, fragments) -> str:
    """The contract for bad input, checked on a CliRunner result; returns the error line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {result.exception!r}; stderr: {result.stderr!r}"
    return one_error_line(result.exit_code, result.stderr, result.output, fragments)


def one_error_line(code: int, stderr: str, output: str, fragments) -> str:
    assert "Traceback" not in output and "Traceback" not in stderr, stderr
    assert code == 2, f"exit status {code}; stderr: {stderr!r}; output: {output[-500:]!r}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {stderr!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- studies

TINY = {  # one model, one cell: a study that runs in a second or two
    "name": "tiny",
    "task": {"name": "needle", "knobs": {"haystack": "random"}},
    "models": ["transformer"],
    "params": 20000,
    "train": {"length": 16, "steps": 2, "batch_size": 4, "warmup": 1, "eval_samples": 2},
    "eval": {"max_factor": 1, "depths": [50], "samples": 1},
}


def _tiny(**changes) -> dict:
    return with_changes(copy.deepcopy(TINY), changes)


# ---------------------------------------------------------------- a finished store is never touched


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A real finished study (the TINY one: one model, one cell, a couple of seconds)."""
    root = tmp_path_factory.mktemp("finished")
    result = cli.invoke(app, ["run", str(_write(root, TINY)), "--out", str(root / "out"), *IN_PROCESS])
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.mark.parametrize("study, extra, expected", [
    pytest.param(_tiny(colour="blue"), [], ["colour"], id="malformed-study"),
    pytest.param(_tiny(train__steps=0), [], ["train.steps"], id="out-of-range-value"),
    pytest.param(_tiny(task={"name": "needle", "knobs": {"haystack": "text"}}), ["--corpus", "{tmp}/latin1.txt"],
                 ["{tmp}/latin1.txt", "not UTF-8"], id="corpus-not-utf8"),
    # the same study but for eval.seed, so the stored model is reused and the run gets as far as
    # planning evaluation: the error comes after the store is opened
    pytest.param(_tiny(eval__seed=-1), [], ["eval.seed"], id="error-after-the-store-is-opened"),
])
def test_bad_input_leaves_a_finished_store_byte_for_byte(tmp_path, finished, study, extra, expected):
    """test_cli covers a placeholder results.sqlite; this is a real one, and an error raised
    after validation as well."""
    (tmp_path / "latin1.txt").write_bytes(b"\xff\xfe\x00bad")
    before = {p.name: _digest(p) for p in finished.glob("results.sqlite*")}
    names = sorted(p.name for p in finished.iterdir())
    path = _write(tmp_path, study)
    result = cli.invoke(app, ["run", str(path), "--out", str(finished), *IN_PROCESS,
                              *(a.replace("{tmp}", str(tmp_path)) for a in extra)])
    assert {p.name: _digest(p) for p in finished.glob("results.sqlite*")} == before
    assert sorted(p.name for p in finished.iterdir()) == names
    rejected(result, [f.replace("{tmp}", str(tmp_path)) for f in expected])


# ---------------------------------------------------------------- malformed study files via `run`

# Beyond test_config.MALFORMED: (a change to test_config.VALID, a whole study as a dict, YAML text
# or raw bytes; fragments of the one error line besides the study's path, "{tmp}" standing for
# the test's directory)
STUDIES = [
    pytest.param(_set("eval.lengths", [16, "4K"]), ["eval.lengths.1", "integer"], id="eval-length-as-string"),
    pytest.param(_set("params", True), ["params", "integer"], id="params-true-is-not-an-int"),
    pytest.param(_set("params", 2e4), ["params", "integer"], id="params-float"),
    pytest.param(_set("params", -5), ["params", "greater than or equal to 1"], id="params-negative"),
    pytest.param(_set("seeds", []), ["seeds", "at least 1"], id="no-seeds"),
    pytest.param(_set("seeds", "0"), ["seeds", "list"], id="seeds-not-a-list"),
    pytest.param(_tiny(seeds=[-1]), ["seeds", "-1"], id="negative-seed"),
    pytest.param(_set("train.tasks", [{"name": "muqar"}]), ["'muqar'", "did you mean 'mqar'"],
                 id="mixture-unknown-task"),
    pytest.param(_set("train.tasks", {"name": "needle"}), ["train.tasks", "list"], id="mixture-not-a-list"),
    pytest.param(_set("eval.tasks", [{"name": "needle", "knobs": {"depth": 150}}]), ["no knob 'depth'"],
                 id="eval-task-depth-knob"),
    pytest.param(_set("eval.tasks", [{"name": "needle", "knobs": {"n_keys": 0}}]), ["n_keys", "0"],
                 id="eval-task-knob-out-of-range"),
    pytest.param(_set("eval.tasks", [{"name": "needle"}, {"name": "needle"}]), ["'needle'", "distinct labels"],
                 id="eval-tasks-same-default-label"),
    pytest.param(_set("eval.tasks", [{"name": "needle", "label": "x"}, {"name": "mqar", "label": "x"}]),
                 ["'x'", "distinct labels"], id="eval-label-repeated-across-tasks"),
    pytest.param(_set("eval.tasks", [{"name": "needle", "label": 3}]), ["eval.tasks.0.label", "string"],
                 id="eval-label-not-a-string"),
    pytest.param(_set("eval.lengths", []), ["eval.lengths", "empty"], id="eval-lengths-empty"),
    pytest.param(_set("eval.depths", [True]), ["eval.depths.0", "number"], id="depth-true"),
    pytest.param(_set("eval.depths", "all"), ["eval.depths", "list"], id="depths-not-a-list"),
    pytest.param(_set("eval.max_factor", 0), ["eval.max_factor", "greater than or equal to 1"],
                 id="max-factor-zero"),
    pytest.param(_set("train.lr", "3e-3"), ["train.lr", "number"], id="lr-as-string"),
    pytest.param(_set("analysis", {"interval_level_fraction": 1.0}), ["analysis.interval_level_fraction", "less than 1"],
                 id="interval-level-1"),
    pytest.param(_set("name", 5), ["name", "string"], id="name-not-a-string"),
    pytest.param(_set("models", "transformer"), ["models", "list"], id="models-not-a-list"),
    pytest.param(_set("models", [{"name": "x"}]), ["models.0.arch", "required"], id="model-without-arch"),
    pytest.param(_set("task", "needle"), ["task", "dictionary"], id="task-not-a-mapping"),
    pytest.param(_set("task.knobs", "haystack=text"), ["task.knobs", "dictionary"], id="knobs-not-a-mapping"),
    pytest.param(_set("models", [{"arch": "mamba2", "overrides": {"d_model": -4}}]), ["mamba2", "d_model"],
                 id="override-out-of-range"),
    pytest.param(_set("models", [{"arch": "mamba2", "overrides": {"d_state": "big"}}]), ["mamba2", "d_state"],
                 id="override-wrong-type"),
    pytest.param(_set("task.knobs", {"haystack": "text", "corpus": "{tmp}/latin1.txt"}),
                 ["{tmp}/latin1.txt", "not UTF-8"], id="corpus-knob-not-utf8"),
    pytest.param("just a string\n", ["mapping"], id="yaml-scalar"),
    pytest.param("42\n", ["mapping"], id="yaml-number"),
    pytest.param("---\n...\n", ["mapping"], id="yaml-empty-document"),
    pytest.param("name: a\n---\nname: b\n", ["not valid YAML"], id="yaml-two-documents"),
    pytest.param("name: tiny\n\tmodels: [transformer]\n", ["not valid YAML", "line 2"], id="yaml-tab"),
    pytest.param(b"\xff\xfe\x00bad: 1\n", ["UTF-8"], id="yaml-not-utf8"),
    # limits: each over any machine's memory, refused with the estimate before anything is planned
    pytest.param(_tiny(scale=10 ** 12), ["scale 1,000,000,000,000 (1,000,000,000,000 models to train)",
                                         "needs at least 931.3 TiB of memory", "this machine has"],
                 id="scale-in-the-yaml-huge"),
    pytest.param(_tiny(eval__samples=10 ** 15),
                 ["one evaluation cell (1,000,000,000,000,000 samples x 16 symbols)", "of memory"],
                 id="eval-samples-huge"),
    pytest.param(_tiny(train__length=10 ** 15), ["a training batch (4 x 1,000,000,000,000,000 symbols)"],
                 id="train-length-huge"),
    pytest.param(_tiny(eval__max_factor=10 ** 15), ["one evaluation cell (1 samples x", "needs at least"],
                 id="eval-max-factor-huge"),
    pytest.param(_tiny(eval__lengths=[16, 10 ** 14]),
                 ["one evaluation cell (1 samples x 100,000,000,000,000 symbols)", "727.6 TiB"],
                 id="eval-lengths-huge"),
    pytest.param(_tiny(models=[{"arch": "transformer", "name": f"t{i}"} for i in range(100)],
                       seeds=list(range(2 ** 14)), eval__lengths=list(range(16, 16 + 2 ** 14)),
                       eval__depths=[float(d) for d in range(101)]),
                 ["the plan's 2,711,199,744,000 cells", "needs at least 2.5 PiB"], id="too-many-cells"),
    # a pretrained study's values
    pytest.param({"kind": "pretrained", "name": "p", "models": ["hf:org/name"], "tasks": ["vt"],
                  "eval": {"dtype": "float64"}}, ["eval.dtype", "'float32', 'bfloat16' or 'float16'"],
                 id="pretrained-unknown-dtype"),
    pytest.param({"kind": "pretrained", "name": "p", "models": ["hf:org/name"], "tasks": ["vt"],
                  "eval": {"device": "gpu"}}, ["eval.device", "unknown device 'gpu'", "cuda:N"],
                 id="pretrained-unknown-device"),
    pytest.param({"kind": "pretrained", "name": "a/b", "models": ["hf:org/name"], "tasks": ["vt"]},
                 ["name", "'a/b' is not a plain file name"], id="pretrained-name-with-slash"),
    pytest.param({"kind": "pretrained", "name": "p", "models": ["hf:org/name"],
                  "tasks": [{"name": "niah_single_1", "depths": [0, 100, 0]}]},
                 ["tasks.0.depths", "depth 0 appears twice"], id="pretrained-duplicate-depths"),
    pytest.param({"kind": "pretrained", "name": "p", "models": [{"model": "hf:org/name", "train_length": 4096}],
                  "tasks": [{"name": "niah_single_1", "length_factors": [1, float("nan")]}]},
                 ["tasks.0.length_factors.1", "finite"], id="pretrained-nan-length-factor"),
]


def _study_file(tmp: Path, study) -> Path:
    if isinstance(study, bytes):
        path = tmp / "study.yaml"
        path.write_bytes(study)
        return path
    if isinstance(study, str):
        return _write(tmp, text=study)
    data = study if isinstance(study, dict) else _changed(study)
    text = yaml.safe_dump(data).replace("{tmp}", str(tmp))
    return _write(tmp, text=text)


@pytest.mark.parametrize("study, expected", [
    *(pytest.param(change, fragments, id=f"config-{case_id}") for case_id, change, fragments in MALFORMED),
    *STUDIES,
])
def test_run_rejects_a_malformed_study(tmp_path, finished, study, expected):
    """Into an empty directory, which stays empty, and into a finished study, whose every file
    stays byte-identical."""
    (tmp_path / "latin1.txt").write_bytes(b"\xff\xfe\x00bad")
    path = _study_file(tmp_path, study)
    out, done = tmp_path / "out", tmp_path / "done"
    out.mkdir()
    shutil.copytree(finished, done)
    before = snapshot(done)
    for target in (out, done):
        result = cli.invoke(app, ["run", str(path), "--out", str(target), *IN_PROCESS])
        line = rejected(result, [str(path)] + [f.replace("{tmp}", str(tmp_path)) for f in expected])
        assert line.startswith(f"error: {path}: "), line  # says which file first
    assert list(out.iterdir()) == [], "a rejected study wrote into --out"
    assert snapshot(done) == before, "a rejected study changed a finished study"


# ---------------------------------------------------------------- command lines

def _click_usage(args, fragments, id):
    """A usage error that click itself raises (typer would draw it as a box of several lines)."""
    return pytest.param(args, fragments, id=id)


def _text_study(tmp: Path) -> str:
    return str(_write(tmp, _changed(_set("task.knobs", {"haystack": "text"}))))


def _valid_study(tmp: Path) -> str:
    return str(_write(tmp, _tiny()))


# (arguments, given the test's directory; fragments of the one error line, "{tmp}" the directory)
# Files in the directory: latin1.txt (not UTF-8), words.txt, digits.txt (no words), adir/,
# empty/, corrupt/results.sqlite (not a database), afile.
COMMANDS = [
    _click_usage(lambda t: ["frobnicate"], ["frobnicate"], id="unknown-command"),
    _click_usage(lambda t: ["run", "smoke", "--bogus"], ["--bogus"], id="unknown-option"),
    _click_usage(lambda t: ["sample", "needle", "--length", "abc"], ["--length", "integer"], id="length-not-an-integer"),
    _click_usage(lambda t: ["sample", "needle"], ["--length"], id="missing-length"),
    # run
    pytest.param(lambda t: ["run", "quik", "--out", str(t / "o")], ["'quik'", *schema.preset_names()],
                 id="run-unknown-preset"),
    pytest.param(lambda t: ["run", str(t / "missing.yaml")], ["{tmp}/missing.yaml", "does not exist"],
                 id="run-missing-study"),
    pytest.param(lambda t: ["run", str(t / "adir")], ["{tmp}/adir", "directory"], id="run-directory-as-study"),
    pytest.param(lambda t: ["run", "smoke", "--out", str(t / "o"), "--corpus", str(t / "missing.txt")],
                 ["{tmp}/missing.txt", "does not exist"], id="run-missing-corpus"),
    pytest.param(lambda t: ["run", "smoke", "--out", str(t / "o"), "--corpus", str(t / "words.txt")],
                 ["--corpus", "haystack: text"], id="run-corpus-but-no-text-haystack"),
    pytest.param(lambda t: ["run", _text_study(t), "--out", str(t / "o"), "--corpus", str(t / "latin1.txt")],
                 ["{tmp}/latin1.txt", "not UTF-8"], id="run-corpus-not-utf8"),
    pytest.param(lambda t: ["run", _text_study(t), "--out", str(t / "o"), "--corpus", str(t / "digits.txt")],
                 ["{tmp}/digits.txt", "no words"], id="run-corpus-without-words"),
    pytest.param(lambda t: ["run", _text_study(t), "--out", str(t / "o"), "--corpus", str(t / "adir")],
                 ["{tmp}/adir", "directory"], id="run-corpus-directory"),
    pytest.param(lambda t: ["run", _valid_study(t), "--out", str(t / "afile"), *IN_PROCESS], ["{tmp}/afile"],
                 id="run-out-is-a-file"),
    pytest.param(lambda t: ["run", _valid_study(t), "--out", str(t / "corrupt"), *IN_PROCESS], ["results.sqlite"],
                 id="run-into-corrupt-store"),
    pytest.param(lambda t: ["run", "smoke", "--out", str(t / "o"), "--backend", "slurm"], ["--backend", "'slurm'"],
                 id="run-unknown-backend"),
    pytest.param(lambda t: ["run", "smoke", "--out", str(t / "o"), "--address", "auto"], ["--address", "ray"],
                 id="run-address-without-ray"),
    _click_usage(lambda t: ["run", "smoke", "--workers", "-1"], ["--workers"], id="run-negative-workers"),
    # plan and status
    pytest.param(lambda t: ["plan", "quik"], ["'quik'", *schema.preset_names()], id="plan-unknown-preset"),
    pytest.param(lambda t: ["plan", str(_write(t, _changed(_set("train.stepz", 10))))],
                 ["{tmp}/study.yaml", "unknown key", "train.stepz"], id="plan-malformed-study"),
    pytest.param(lambda t: ["plan", "smoke", "--corpus", str(t / "words.txt")], ["--corpus", "haystack: text"],
                 id="plan-corpus-but-no-text-haystack"),
    pytest.param(lambda t: ["plan", _valid_study(t), "--out", str(t / "corrupt")], ["results.sqlite"],
                 id="plan-against-corrupt-store"),
    pytest.param(lambda t: ["plan", _valid_study(t), "--out", str(t / "afile")],
                 ["--out {tmp}/afile is a file, not a directory"], id="plan-out-is-a-file"),
    pytest.param(lambda t: ["plan", "smoke", "--scale", str(10 ** 12)],
                 ["preset smoke: scale 1,000,000,000,000", "models to train", "of memory"], id="plan-scale-huge"),
    pytest.param(lambda t: ["run", "smoke", "--scale", str(10 ** 12), "--out", str(t / "o")],
                 ["preset smoke: scale 1,000,000,000,000", "of memory"], id="run-scale-huge"),
    pytest.param(lambda t: ["status", str(t / "empty")], ["{tmp}/empty", "no results.sqlite"],
                 id="status-without-results"),
    pytest.param(lambda t: ["status", str(t / "corrupt")], ["results.sqlite"], id="status-corrupt-store"),
    # sample
    pytest.param(lambda t: ["sample", "neddle", "--length", "20"], ["'neddle'", "did you mean 'needle'"],
                 id="sample-unknown-task"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "colour=red"],
                 ["no knob 'colour'", "haystack"], id="sample-unknown-knob"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "haystack=essay"],
                 ["haystack", "'essay'", "noise"], id="sample-bad-knob-value"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys=two"], ["n_keys", "'two'"],
                 id="sample-knob-wrong-type"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys=0"], ["n_keys", ">= 1"],
                 id="sample-knob-out-of-range"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "haystack"],
                 ["KEY=VALUE", "'haystack'"], id="sample-knob-without-equals"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "=3"], ["KEY=VALUE", "'=3'"],
                 id="sample-knob-without-key"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob",
                            "n_keys=!!python/object/apply:os.system ['echo hi']"],
                 ["--knob n_keys: not a plain YAML value: could not", "python/object/apply:os.system"],
                 id="sample-knob-python-tag"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "haystack=!text noise"],
                 ["--knob haystack:", "constructor for the tag '!text'"], id="sample-knob-local-tag"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys={a: 1, a: 2}"],
                 ["--knob n_keys:", "key 'a' appears twice in one mapping"], id="sample-knob-duplicate-key"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys=[&a [x, x, x, x, x, x, x, x], "
                            + ", ".join(f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 8)}]" for i in range(6))
                            + "]"], ["--knob n_keys:", "its aliases expand it by", "100,000"],
                 id="sample-knob-alias-bomb"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys=*missing"],
                 ["--knob n_keys:", "undefined alias"], id="sample-knob-undefined-alias"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "n_keys=2", "--knob", "n_keys=3"],
                 ["--knob n_keys is given twice"], id="sample-knob-twice"),
    pytest.param(lambda t: ["sample", "needle", "--length", "1000000000000"],
                 ["--length 1,000,000,000,000", "needs at least 90.9 TiB of memory", "this machine has"],
                 id="sample-length-huge"),
    pytest.param(lambda t: ["sample", "needle", "--length", "2"], ["length 2", "minimum 5"],
                 id="sample-length-below-minimum"),
    pytest.param(lambda t: ["sample", "mqar", "--length", "3"], ["mqar", "length 3", "minimum 16"],
                 id="sample-mqar-length-below-minimum"),
    pytest.param(lambda t: ["sample", "needle", "--length", "-5"], ["length -5", "minimum 5"],
                 id="sample-negative-length"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--depth", "150"], ["depth 150", "0-100"],
                 id="sample-depth-150"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--depth", "-1"], ["depth -1", "0-100"],
                 id="sample-depth-negative"),
    pytest.param(lambda t: ["sample", "mqar", "--length", "40", "--depth", "50"], ["mqar", "no needle depth"],
                 id="sample-depth-on-task-without-depth"),
    pytest.param(lambda t: ["sample", "needle", "--length", "40", "--knob", "haystack=text",
                            "--corpus", str(t / "latin1.txt")], ["{tmp}/latin1.txt", "not UTF-8"],
                 id="sample-corpus-not-utf8"),
    pytest.param(lambda t: ["sample", "needle", "--length", "40", "--knob", "haystack=text",
                            "--corpus", str(t / "missing.txt")], ["{tmp}/missing.txt", "does not exist"],
                 id="sample-missing-corpus"),
    pytest.param(lambda t: ["sample", "needle", "--length", "40", "--corpus", str(t / "words.txt")],
                 ["corpus", "haystack='text'"], id="sample-corpus-without-text-haystack"),
    pytest.param(lambda t: ["sample", "mqar", "--length", "40", "--corpus", str(t / "words.txt")],
                 ["mqar", "no knob 'corpus'"], id="sample-corpus-on-task-without-text"),
    # report
    pytest.param(lambda t: ["report", str(t / "empty")], ["{tmp}/empty", "no results.sqlite"],
                 id="report-without-results"),
    pytest.param(lambda t: ["report", str(t / "missing")], ["{tmp}/missing", "no results.sqlite"],
                 id="report-missing-directory"),
    pytest.param(lambda t: ["report", str(t / "corrupt")], ["results.sqlite"], id="report-corrupt-store"),
    # bench: every one of these is rejected before anything is measured
    pytest.param(lambda t: ["bench", "--mode", "back"], ["--mode", "'back'", "fwd+bwd"], id="bench-bad-mode"),
    pytest.param(lambda t: ["bench", "--lengths", "4Q"], ["--lengths", "'4Q'"], id="bench-lengths-4Q"),
    pytest.param(lambda t: ["bench", "--lengths", "0"], ["--lengths", "positive", "'0'"], id="bench-lengths-0"),
    pytest.param(lambda t: ["bench", "--lengths", "-1K"], ["--lengths", "positive", "'-1K'"],
                 id="bench-lengths-negative"),
    pytest.param(lambda t: ["bench", "--lengths", ","], ["--lengths", "','"], id="bench-lengths-empty"),
    pytest.param(lambda t: ["bench", "mamab2", "--lengths", "16"], ["'mamab2'", "did you mean 'mamba2'"],
                 id="bench-unknown-architecture"),
    pytest.param(lambda t: ["bench", "--against", "torch"], ["--against", "'hf'", "'torch'"],
                 id="bench-against-not-hf"),
    pytest.param(lambda t: ["bench", "s4d", "--against", "hf"], ["s4d", "mamba2"],
                 id="bench-against-hf-unmatched"),
    pytest.param(lambda t: ["bench", "--lengths", "1K,1073741824K"],
                 ["--lengths: a batch of 1 x 1,099,511,627,776 tokens at d_model 128", "needs at least 512.0 TiB"],
                 id="bench-lengths-huge"),
    pytest.param(lambda t: ["bench", "mamba", "--against", "hf", "--lengths", "4K", "--batch", "100000000"],
                 ["--lengths: a batch of 100,000,000 x 4,096 tokens", "of memory"], id="bench-batch-huge"),
    # eval: checks of its own flags, and the schema's
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--tokenizer", "org/tok"],
                 ["--tokenizer org/tok is for mamba_ssm: checkpoints", "every --model here is hf:"],
                 id="eval-tokenizer-with-only-hf-models"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--name", "../up"],
                 ["--name: name '../up' is not a plain file name"], id="eval-name-with-slash"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--name", ".."], ["--name: name '..'"],
                 id="eval-name-dot-dot"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--name", ""], ["--name: name ''"], id="eval-name-empty"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--dtype", "float64"], ["eval.dtype"],
                 id="eval-unknown-dtype"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--device", "cuda1"],
                 ["eval.device", "unknown device 'cuda1'"], id="eval-unknown-device"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--tasks", "vt", "--samples", str(10 ** 15)],
                 ["longarch eval: one cell's prompts (1,000,000,000,000,000 samples", "of memory"],
                 id="eval-samples-huge"),
    pytest.param(lambda t: ["eval", "--model", "hf:org/name", "--tasks", "vt", "--lengths", "1000000000000K"],
                 ["one cell's prompts (250 samples x 1,024,000,000,000,000 tokens)"], id="eval-lengths-huge"),
]


def _prepare(tmp: Path) -> None:
    (tmp / "latin1.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp / "words.txt").write_text("the cat sat on the mat and the dog sat on the log " * 20, encoding="utf-8")
    (tmp / "digits.txt").write_text("123 456 ... 789\n", encoding="utf-8")
    (tmp / "adir").mkdir()
    (tmp / "empty").mkdir()
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "results.sqlite").write_bytes(b"kept")
    (tmp / "afile").write_text("x")


@pytest.mark.parametrize("make_args, expected", COMMANDS)
def test_bad_command_line_is_one_line_and_exit_2(tmp_path, make_args, expected):
    _prepare(tmp_path)
    result = cli.invoke(app, make_args(tmp_path))
    assert (tmp_path / "corrupt" / "results.sqlite").read_bytes() == b"kept"  # a bad store is not "repaired"
    rejected(result, [f.replace("{tmp}", str(tmp_path)) for f in expected])


# ---------------------------------------------------------------- the installed entry point

ENTRY_POINT = [
    pytest.param(lambda t: ["report", str(t / "empty")], id="report-without-results"),
    pytest.param(lambda t: ["sample", "neddle", "--length", "20"], id="sample-unknown-task"),
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", "haystack=essay"], id="sample-bad-knob"),
    pytest.param(lambda t: ["run", str(_write(t, _changed(_set("colour", "blue")))), "--out", str(t / "o")],
                 id="run-malformed-study"),
    pytest.param(lambda t: ["frobnicate"], id="unknown-command"),
]


@pytest.mark.parametrize("make_args", ENTRY_POINT)
def test_installed_entry_point_prints_the_same_line(tmp_path, make_args):
    _prepare(tmp_path)
    args = make_args(tmp_path)
    done = subprocess.run([LONGARCH, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    line = one_error_line(done.returncode, done.stderr, done.stdout, [])
    assert done.stdout == ""
    assert line == rejected(cli.invoke(app, args), [])


# ---------------------------------------------------------------- refused before anything of its size is built

ADDRESS_SPACE = 2 ** 31  # the process's whole address space: torch's import fits, a request built in full does not
# 10 ** 9 nodes once expanded: aliases of aliases of ten
BOMB = "[&a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)) + "]"

BOUNDED = [
    # a task's error message showed the knob's value: its repr alone is gigabytes
    pytest.param(lambda t: ["sample", "needle", "--length", "20", "--knob", f"haystack={BOMB}"],
                 ["--knob haystack", "aliases expand it"], id="knob-alias-bomb"),
    pytest.param(lambda t: ["plan", str(_write(t, _tiny(task={"name": "needle", "knobs": {"haystack": "@"}})))],
                 ["aliases expand it"], id="study-alias-bomb"),
    # the scaled seeds were listed before any check: 4 GB in 10 s
    pytest.param(lambda t: ["plan", "smoke", "--scale", str(10 ** 12)], ["scale 1,000,000,000,000"], id="scale"),
    pytest.param(lambda t: ["sample", "needle", "--length", str(10 ** 12)], ["--length"], id="sample-length"),
]


@pytest.mark.parametrize("make_args, expected", BOUNDED)
def test_a_huge_request_is_refused_in_a_small_address_space(tmp_path, make_args, expected):
    """Refused from its numbers alone: the command runs with 2 GiB of address space, where a
    request built before it is checked ends in a MemoryError and a traceback."""
    args = make_args(tmp_path)
    study = tmp_path / "study.yaml"
    if study.exists():  # the study's knob becomes the alias bomb (yaml.safe_dump cannot write one)
        study.write_text(study.read_text().replace("'@'", BOMB))

    def small() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    done = subprocess.run([sys.executable, "-m", "longarch.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, preexec_fn=small)
    one_error_line(done.returncode, done.stderr, done.stdout, expected)
