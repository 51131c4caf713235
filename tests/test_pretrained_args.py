"""Model and generation arguments of pretrained studies, lm-eval style (issue 23): the KEY=VALUE
syntax, rope_scaling changing a tiny Llama's logits past its trained length (and not within it
where the scaling only applies past it), each argument in the cell ids (and none leaving them as
they were), the system prompt, the prompts' hashes in the prediction files, bad input as one line,
and `longarch export --lm-eval`'s layout with the store's numbers."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import transformers
import yaml
from typer.testing import CliRunner

from longarch.cli import app
from longarch.kinds import load_study
from longarch.models import hf
from longarch.pretrained import args as arguments
from longarch.pretrained import runner
from longarch.study import content_id
from longarch.study.store import Store, read_only
from test_bad_input import one_error_line
from test_hf_models import _config, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINED = 32  # the tiny Llama's max_position_embeddings
NAME = "argsllama"  # its folder's name, so its model id


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    net = transformers.AutoModelForCausalLM.from_config(_config("llama", len(tokenizer)))
    folder = tmp_path_factory.mktemp("args", numbered=True) / NAME  # its id, whatever other modules' folders are called
    net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert net.config.max_position_embeddings == TRAINED
    return folder


@pytest.fixture(autouse=True)
def text_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARCH_TEXT_CACHE", str(tmp_path / "text-cache"))


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# the syntax
# ---------------------------------------------------------------------------------------------
def test_pairs_keep_commas_inside_brackets_and_read_values_as_json_then_as_lm_eval_does():
    parsed = arguments.parse('pretrained=org/name,dtype=bfloat16,rope_scaling={"rope_type":"linear","factor":4.0},'
                             "trust_remote_code=True,until=['a,b', \"c\"],n=3,x=null,name=main", "--model-args")
    assert parsed == {"pretrained": "org/name", "dtype": "bfloat16", "rope_scaling": {"rope_type": "linear", "factor": 4.0},
                      "trust_remote_code": True, "until": ["a,b", "c"], "n": 3, "x": None, "name": "main"}
    assert arguments.parse("", "--gen-args") == {}
    assert arguments.parse("rope_scaling={'type': 'dynamic', 'factor': 2}", "f") == \
        {"rope_scaling": {"type": "dynamic", "factor": 2}}  # a Python literal, as lm-eval users may write it


@pytest.mark.parametrize("text, message", [
    ("revision", "expects KEY=VALUE pairs separated by commas, got 'revision'"),
    ("=main", "expects KEY=VALUE"),
    ('rope_scaling={"factor":4.0', "unclosed '{'"),
    ("rope_scaling=[1}", "unbalanced '}'"),
    ("a=1,a=2", "a is given twice"),
    ("rope_scaling={nope: }", "is neither JSON nor a Python literal"),
])
def test_a_malformed_string_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        arguments.parse(text, "--model-args")


def test_generation_arguments_are_normalised_and_the_no_ops_dropped():
    assert arguments.gen_args({"max_gen_toks": 7, "until": "\n", "do_sample": False, "temperature": 0.0}) == \
        {"max_new_tokens": 7, "until": ["\n"]}
    for bad, message in [({"top_p": 0.9}, "unknown generation argument 'top_p'"),
                         ({"max_new_tokens": 0}, "positive whole number"),
                         ({"do_sample": True}, "greedily only"), ({"temperature": 0.7}, "greedily only")]:
        with pytest.raises(ValueError, match=message):
            arguments.gen_args(bad)
    assert arguments.cut("12 cats\n\nand more", ["\n\n", "and"]) == "12 cats"


# ---------------------------------------------------------------------------------------------
# rope_scaling on a tiny Llama, past and within its trained length
# ---------------------------------------------------------------------------------------------
def _logits(folder, prompt, model_args=None):
    model = hf.load(f"hf:{folder}", model_args=model_args)
    return model.next_token_logits(prompt), model


def test_rope_scaling_changes_a_llamas_logits_past_its_trained_length_only_where_it_should(llama):
    torch.manual_seed(1)
    long = torch.randint(4, 30, (3 * TRAINED,)).tolist()  # three times the trained length
    short = long[:TRAINED - 4]
    plain_long, plain = _logits(llama, long)
    plain_short, _ = _logits(llama, short)
    linear_long, linear = _logits(llama, long, {"rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    assert linear.model.config.rope_parameters["rope_type"] == "linear"
    assert linear.model.config.rope_parameters["rope_theta"] == plain.model.config.rope_parameters["rope_theta"]
    assert not torch.allclose(plain_long, linear_long, atol=1e-4)  # the override reached the model
    # dynamic NTK scales only past max_position_embeddings: within it, the same logits; past it, others
    dynamic_short, _ = _logits(llama, short, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    assert torch.allclose(plain_short, dynamic_short, atol=1e-6)
    dynamic_long, _ = _logits(llama, long, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    assert not torch.allclose(plain_long, dynamic_long, atol=1e-4)
    # the identity (the default rope type, old spelling `type`) changes nothing anywhere
    identity_long, _ = _logits(llama, long, {"rope_scaling": {"type": "default"}})
    assert torch.allclose(plain_long, identity_long, atol=1e-6)
    greedy = [linear.generate([long], 6)[0], plain.generate([long], 6)[0]]
    assert all(len(g) <= 6 for g in greedy)


@pytest.mark.parametrize("scaling, message", [
    ({"rope_type": "linear"}, "Missing required keys"),
    ({"rope_type": "warp", "factor": 2.0}, "'rope_type'='warp'"),
    ({"factor": 2.0}, "Unrecognized keys"),
])
def test_a_rope_scaling_transformers_refuses_is_refused_before_loading(llama, scaling, message):
    with pytest.raises(ValueError, match=f"transformers refuses rope_scaling=.*{message}"):
        hf.configured(str(llama), {"rope_scaling": scaling})


# ---------------------------------------------------------------------------------------------
# the cell ids
# ---------------------------------------------------------------------------------------------
def _study(tmp_path, model, **extra):
    data = {"kind": "pretrained", "name": "ids", "models": [model], "tasks": ["vt"],
            "eval": {"lengths": [1024], "samples": 2}, **extra}
    path = tmp_path / f"s{len(list(tmp_path.glob('s*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cell_id(tmp_path, model, **options):
    study = load_study(str(_study(tmp_path, model)), **options)
    [cell], _ = runner.plan(study)
    return cell


def test_each_argument_changes_the_cell_id_and_none_leaves_it_as_it_was(llama, tmp_path):
    spec = f"hf:{llama}"
    base = _cell_id(tmp_path, spec)
    # the id as computed before the arguments existed
    before = content_id({"model": runner.fingerprint(spec), "tokenizer": None, "dtype": "float32",
                         "template": "base", "trust_remote_code": False})
    assert base.model_id == before
    ids = {"none": base.cell_id}
    for name, model, options in [
        ("revision", {"model": spec, "model_args": "revision=v2"}, {}),
        ("attn", {"model": spec, "model_args": {"attn_implementation": "eager"}}, {}),
        ("dtype", {"model": spec, "model_args": "dtype=bfloat16"}, {}),
        ("rope", {"model": spec, "model_args": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}}, {}),
        ("budget", {"model": spec, "gen_args": "max_new_tokens=7"}, {}),
        ("until", {"model": spec, "gen_args": {"until": ["\n"]}}, {}),
        ("cli rope", spec, {"model_args": 'rope_scaling={"rope_type":"dynamic","factor":2.0}'}),
        ("system", spec, {"system_prompt": "Be brief."})]:
        cell = _cell_id(tmp_path, model, **options)
        assert cell.cell_id not in ids.values(), name
        ids[name] = cell.cell_id
    # what changes nothing keeps the id: greedy decoding said aloud, the study's own dtype, log_prompts
    for model, options in [({"model": spec, "gen_args": "do_sample=false,temperature=0"}, {}),
                           ({"model": spec, "model_args": "dtype=float32"}, {}), (spec, {"log_prompts": True})]:
        assert _cell_id(tmp_path, model, **options).cell_id == base.cell_id
    budget = _cell_id(tmp_path, {"model": spec, "gen_args": "max_gen_toks=7"})
    assert budget.cell_id == ids["budget"] and budget.task.max_new_tokens == 7  # the task's budget replaced


def test_the_command_lines_arguments_join_each_models_own(tmp_path):
    path = _study(tmp_path, {"model": "hf:org/a", "model_args": "revision=v1,attn_implementation=sdpa",
                             "gen_args": {"max_new_tokens": 9}}, system_prompt="S")
    study = load_study(str(path), model_args="revision=v2,trust_remote_code=True", gen_args="until=x")
    [model] = study.models
    assert model.model_args == {"revision": "v2", "attn_implementation": "sdpa"}
    assert model.gen_args == {"max_new_tokens": 9, "until": ["x"]}
    assert model.trust_remote_code and study.trust_remote_code  # lm-eval's trust_remote_code=True
    assert study.system_prompt == "S"
    with pytest.raises(Exception, match="--model-args is for pretrained studies"):
        load_study("quick", model_args="revision=v2")


# ---------------------------------------------------------------------------------------------
# end to end: prompts in the prediction files, the system prompt, the budget, the report
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(llama, tmp_path_factory):
    """Two evaluations of the tiny Llama on vt at 1024: plain, and with every kind of argument and
    --log-prompts."""
    root = tmp_path_factory.mktemp("runs")
    common = ["eval", "--tasks", "vt", "--lengths", "1024", "--samples", "2"]
    plain = _invoke(*common, "--model", f"hf:{llama}", "--out", root / "plain")
    assert plain.exit_code == 0, plain.output
    given = _invoke(*common, "--model-args", f'pretrained={llama},rope_scaling={{"rope_type":"linear","factor":4.0}}',
                    "--gen-args", "max_gen_toks=5", "--system-prompt", "Answer tersely.", "--log-prompts",
                    "--out", root / "given")
    assert given.exit_code == 0, given.output
    return root / "plain", root / "given"


def test_prediction_lines_hold_the_prompts_hash_and_with_log_prompts_its_text(runs, llama):
    plain, given = runs
    for line in _lines(plain / "predictions" / NAME / "vt-1024.jsonl"):
        assert len(line["prompt_sha256"]) == 64 and "prompt" not in line and line["prompt_tokens"] > 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama)
    for line in _lines(given / "predictions" / NAME / "vt-1024.jsonl"):
        assert hashlib.sha256(line["prompt"].encode()).hexdigest() == line["prompt_sha256"]
        # the system prompt before the task's text (base template), counted towards the length
        assert line["prompt"].startswith("Answer tersely.\n\n")
        assert line["prompt_tokens"] == len(tokenizer(line["prompt"])["input_ids"])
        assert line["total_tokens"] == line["prompt_tokens"] + 5 <= 1024  # max_gen_toks is the budget
    with Store(given / "results.sqlite") as store:
        [row], [model] = store.results(), store.pretrained()
    assert row.knobs["max_new_tokens"] == 5
    assert model["model_args"] == {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    assert model["gen_args"] == {"max_new_tokens": 5} and model["system_prompt"] == "Answer tersely."
    summary = json.loads((given / "summary.json").read_text())["models"][NAME]
    assert summary["model_args"]["rope_scaling"]["factor"] == 4.0 and summary["gen_args"] == {"max_new_tokens": 5}
    report = (given / "report.md").read_text()
    assert NAME + ': model arguments `rope_scaling={"factor": 4.0, "rope_type": "linear"}`; generation arguments ' \
           '`max_new_tokens=5`; system prompt "Answer tersely.".' in report
    assert "Evaluated with arguments" not in (plain / "report.md").read_text()


def test_the_system_prompt_is_the_chat_templates_system_message(llama, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(llama, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}answer{% endif %}")
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    result = _invoke("eval", "--model", f"hf:{folder}", "--tasks", "vt", "--lengths", "1024", "--samples", "1",
                     "--template", "chat", "--system-prompt", "who is red", "--log-prompts", "--out", out)
    assert result.exit_code == 0, result.output
    [line] = _lines(out / "predictions" / "chat" / "vt-1024.jsonl")
    assert line["prompt"].startswith("system who is red user ") and line["total_tokens"] <= 1024


@pytest.mark.parametrize("args, fragments", [
    (["--gen-args", "top_k=5"], ["unknown generation argument 'top_k'"]),
    (["--model-args", 'revision=main,rope_scaling={"rope_type":"linear"'], ["--model-args: unclosed '{'"]),
    (["--model-args", "revision"], ["--model-args expects KEY=VALUE"]),
    (["--model-args", 'rope_scaling={"rope_type":"linear"}'], ["transformers refuses rope_scaling", "'factor'"]),
    (["--model-args", "no_such_key=1"], ["'no_such_key' is neither revision"]),
    (["--model-args", "max_length=32768"], ["never truncates"]),
])
def test_bad_arguments_are_one_line_and_status_2(llama, tmp_path, args, fragments):
    result = _invoke("eval", "--model", f"hf:{llama}", "--tasks", "vt", "--lengths", "1024", "--out", tmp_path / "o",
                     *args)
    one_error_line(result.exit_code, result.stderr, result.output, fragments)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# export --lm-eval
# ---------------------------------------------------------------------------------------------
def test_lm_eval_export_has_lm_evals_layout_and_the_stores_numbers(runs, tmp_path):
    _, given = runs
    result = _invoke("export", given, "--lm-eval", "--out", tmp_path / "lm")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "lm" / NAME / "results.json").read_text())
    with read_only(given / "results.sqlite") as store:
        [row] = store.results()
    assert document["results"]["ruler_vt"] == {"alias": "ruler_vt", "1024,none": row.accuracy,
                                               "1024_stderr,none": "N/A"}
    assert document["results"]["ruler"]["1024,none"] == row.accuracy  # the group over its one task
    assert document["groups"]["ruler"] == document["results"]["ruler"]
    assert document["group_subtasks"] == {"ruler": ["ruler_vt"]}
    assert {"configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "git_hash", "date",
            "model_name", "model_name_sanitized", "system_instruction", "system_instruction_sha"} <= set(document)
    assert document["configs"]["ruler_vt"]["generation_kwargs"]["max_gen_toks"] == 5
    assert document["n-shot"]["ruler_vt"] == 0 and document["n-samples"]["ruler_vt"]["effective"] == 2
    assert document["higher_is_better"]["ruler_vt"] == {"1024": True}
    config = document["config"]
    assert config["model"] == "hf" and config["model_args"].startswith(f"pretrained={document['model_name']},")
    assert 'rope_scaling={"factor": 4.0, "rope_type": "linear"}' in config["model_args"]
    assert config["gen_kwargs"] == "max_new_tokens=5"
    assert document["system_instruction"] == "Answer tersely."
    assert document["longarch"]["cell_ids"]["ruler_vt"] == [row.cell_id]


def test_lm_eval_export_names_tasks_as_lm_eval_does_and_averages_the_group_per_length(tmp_path):
    from test_pretrained import _fake_store, _right

    scores = {("m", "niah_single_1", 1024): _right(3, 4), ("m", "vt", 1024): _right(1, 4),
              ("m", "niah_single_1", 2048): _right(2, 4), ("m", "qa_1", 2048): _right(4, 4)}
    _fake_store(tmp_path, scores, ["niah_single_1", "vt", "qa_1"])
    result = _invoke("export", tmp_path, "--lm-eval")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "lm-eval" / "m" / "results.json").read_text())
    results = document["results"]
    assert set(results) == {"niah_single_1", "ruler_vt", "ruler_qa_squad", "ruler"}
    assert results["niah_single_1"]["1024,none"] == 0.75 and results["niah_single_1"]["2048,none"] == 0.5
    assert results["ruler"]["1024,none"] == pytest.approx((0.75 + 0.25) / 2)
    assert results["ruler"]["2048,none"] == pytest.approx((0.5 + 1.0) / 2)
    assert "string_match_part" in document["configs"]["ruler_qa_squad"]["metadata"]["metric"]
    for args, fragment in [(["--format", "csv"], "--format is for the per-sample table"),
                           (["--out", "-"], "give --out DIR")]:
        bad = _invoke("export", tmp_path, "--lm-eval", *args)
        one_error_line(bad.exit_code, bad.stderr, bad.output, [fragment])
