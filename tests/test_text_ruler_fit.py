"""Issue 23: the two fit modes. `exact` (each prompt as close to the length as whole units allow, at
least `fit_tolerance` of it) and `ruler` (RULER's prepare scripts: one haystack size per cell by a
binary search on one sample, then each sample shrunk by RULER's fixed step until it fits; RULER's
fixed-seed shuffles). vt hops are never adjacent in either mode. A tokenizer trained here; the
RULER rule is recomputed in this file from the tasks' `build`, not through the fitter."""

import collections
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from longarch import tasks
from longarch.cli import app
from longarch.tasks import text as T
from test_bad_input import one_error_line
from test_text_support import n_tokens




def _task(name, qa_files=None):
    return tasks.get(name, path=str(qa_files[name])) if name.startswith("qa") else tasks.get(name)


# ------------------------------------------------------------------ vt: hops never adjacent

def _statement_lines(part: str) -> list[int]:
    """Indices of the lines of `part` that hold a VAR statement."""
    return [i for i, line in enumerate(part.split("\n")) if line.startswith("VAR ")]


@pytest.mark.parametrize("mode", ["exact", "ruler"])
@pytest.mark.parametrize("length, count", [(1024, 40), (4096, 12)])
def test_vt_hops_are_never_adjacent(mode, length, count, tok):
    """RULER samples distinct noise units for a chain's statements (0 adjacent hops in 50 samples);
    version 1 of vt put two side by side in 34 of 50 at 1K. Each statement here is followed by a
    noise line of its own, in the question and in its one-shot example."""
    task = tasks.get("vt")
    assert task.version == 2
    for s in T.fit_samples(task, tok, length, count, seed=7, fit_mode=mode):
        start = s.prompt.rindex("Follow the chains")
        for part in (s.prompt[:start], s.prompt[start:]):
            lines = _statement_lines(part)
            assert len(lines) == 5
            assert all(b - a >= 2 for a, b in zip(lines, lines[1:])), lines  # a noise line between hops
            assert part.split("\n")[lines[-1] + 1].startswith("The river")  # and one after the last
        assert len(set(s.metadata["positions"])) == 5


def test_vt_hops_apart_in_an_essay_and_adjacent_only_without_room():
    task = tasks.get("vt", type_haystack="essay", num_chains=3)
    for seed in range(20):
        _, _, meta = task.build(3000, seed, 4096, lambda text: len(text.split()))
        positions = meta["positions"]
        assert positions == sorted(positions) and len(set(positions)) == 15  # 15 statements, all apart
    noise = tasks.get("vt")
    from longarch.tasks.text.ruler import distinct_slots, separated
    import random
    assert sorted(distinct_slots(random.Random(0), 5, 5)) == [0, 1, 2, 3, 4]
    assert len(distinct_slots(random.Random(0), 3, 5)) == 5  # fewer units than statements: some share one
    assert separated([2, 2, 2], 10) == [2, 3, 4] and separated([9, 9, 9], 10) == [8, 9, 10]
    assert separated([0, 0, 0], 1) == [0, 0, 1]  # no room: adjacent, as the docstring says
    _, _, meta = noise._sample(3, random.Random(1), 5, 4)  # 3 noise units for 5 statements
    assert len(meta["positions"]) == 5


# ------------------------------------------------------------------ ruler mode: RULER's rule

STEPS = {  # RULER's `incremental`, from its prepare scripts, by task and length (1K / 4K)
    ("niah_single_1", 1024): 5, ("niah_single_1", 4096): 25, ("niah_multikey_1", 4096): 500,
    ("niah_multikey_2", 1024): 5, ("vt", 1024): 5, ("vt", 4096): 10, ("cwe", 4096): 10, ("qa_2", 4096): 10,
}


def _total(task, tok, length, seed, units, offset):
    prompt = task.build(max(units - offset, 0), seed, length, lambda t: n_tokens(tok, t), ruler=True)[0]
    return n_tokens(tok, prompt) + task.max_new_tokens


def _ruler_rule(task, tok, length, seeds, step, offset_of, cwe=False):
    """RULER's generate_samples, written out plainly: bisect between its bounds on sample 0, then
    each sample from there down by `step` until it fits. Returns the size and each sample's units.
    The bounds: tokens per unit measured on `step` units, x3 (cwe: on 4096 words, floor then x2)."""
    probe = seeds[0]
    estimate_on = 4096 if cwe else step
    per_unit = (_total(task, tok, length, probe, estimate_on, offset_of(probe)) - task.max_new_tokens) / estimate_on
    high = int(length // per_unit) * 2 if cwe else int(length / per_unit * 3)
    low, high, best = step, max(high, 2 * step), None
    while low <= high:
        mid = (low + high) // 2
        if _total(task, tok, length, probe, mid, offset_of(probe)) <= length:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    start = best or step
    units = []
    for seed in seeds:
        u = start
        while _total(task, tok, length, seed, u, offset_of(seed)) > length:
            u -= step
        units.append(u)
    return start, units


@pytest.mark.parametrize("name, length", sorted(STEPS))
def test_ruler_mode_follows_rulers_binary_search_then_steps(name, length, tok, qa_files):
    task = _task(name, qa_files)
    step = STEPS[name, length]
    assert task.ruler_steps(length).step == step
    n = 6
    samples = T.fit_samples(task, tok, length, n, seed=3, fit_mode="ruler")
    seeds = [3 * 1_000_003 + i for i in range(n)]
    if name == "cwe":
        offset_of = lambda seed: task.num_cw  # RULER counts all the words, the common ones too
        assert task.ruler_steps(length).probe == 4096
    elif name.startswith("qa"):
        offset_of = lambda seed: task.ruler_steps(length, seed).offset  # the golden documents
    else:
        offset_of = lambda seed: 0
    # cwe's words are drawn anew for each size, so its count is not monotone and its bounds matter
    start, units = _ruler_rule(task, tok, length, seeds, step, offset_of, cwe=name == "cwe")
    assert [s.metadata["ruler_start"] for s in samples] == [start] * n
    assert [s.metadata["ruler_units"] for s in samples] == units
    for s, u, seed in zip(samples, units, seeds):
        total = n_tokens(tok, s.prompt) + s.max_new_tokens
        assert s.metadata["total_tokens"] == total == _total(task, tok, length, seed, u, offset_of(seed)) <= length
        assert s.metadata["fit"] == "ruler" and s.metadata["ruler_step"] == step
        if u < start:  # shrunk: one step more was over the length
            assert _total(task, tok, length, seed, u + step, offset_of(seed)) > length


def test_ruler_fills_go_below_95_percent_where_the_rule_puts_them(tok, qa_files):
    """Fills in ruler mode are whatever RULER's steps leave: here a 500-word step at 4K and a
    10-document step (HotpotQA-sized paragraphs) at 4K land under 95%, which `exact` refuses."""
    low = {}
    for name in ("niah_multikey_1", "qa_2"):
        fills = [s.metadata["total_tokens"] / 4096
                 for s in T.fit_samples(_task(name, qa_files), tok, 4096, 6, seed=0, fit_mode="ruler")]
        assert all(0 < f <= 1 for f in fills)
        low[name] = min(fills)
    assert low["niah_multikey_1"] < 0.95 and low["qa_2"] < 0.95, low


def test_fwe_grows_as_ruler_does(tok):
    """fwe is not searched: RULER walks up from (length - budget) // 6 words by (length - budget) // 32
    while the prompt is under length - budget, then one step back."""
    task, length = tasks.get("fwe"), 1024
    limit = length - task.max_new_tokens
    count = lambda units, seed: n_tokens(tok, task.build(units, seed, length, ruler=True)[0])
    units, step = limit // 6, limit // 32
    while count(units, 0) < limit:
        units += step
    units -= step
    samples = T.fit_samples(task, tok, length, 4, seed=0, fit_mode="ruler")
    assert samples[0].metadata["ruler_start"] == units
    for i, s in enumerate(samples):
        u = units
        while count(u, i) > limit:
            u -= step
        assert s.metadata["ruler_units"] == u and s.metadata["total_tokens"] <= length


def test_ruler_mode_refuses_what_ruler_would_loop_on(tok, qa_files):
    """RULER's qa.py retries for ever when its smallest size (10 documents) is over the length."""
    with pytest.raises(T.FitError, match=r"RULER's smallest haystack \(10 units\) is \d+ tokens"):
        T.fit_samples(_task("qa_1", qa_files), tok, 1024, 1, fit_mode="ruler")


# ------------------------------------------------------------------ ruler mode: RULER's shuffles

def test_qa_golden_position_depends_on_the_number_of_documents_alone(qa_files):
    task = _task("qa_1", qa_files)
    for n in (9, 14, 29):
        ruler = {tuple(task.build(n, seed, 4096, ruler=True)[2]["golden_documents"]) for seed in range(30)}
        exact = {tuple(task.build(n, seed, 4096)[2]["golden_documents"]) for seed in range(30)}
        assert len(ruler) == 1 and len(exact) > 5, (n, ruler)
    # golden first, then RULER's shuffle of n + 1 documents: where index 0 lands
    import random
    order = list(range(15))
    random.Random(42).shuffle(order)
    assert task.build(14, 5, 4096, ruler=True)[2]["golden_documents"] == [order.index(0) + 1]
    hotpot = _task("qa_2", qa_files)  # ten golden documents, placed by the count alone too
    assert len({tuple(hotpot.build(10, seed, 8192, ruler=True)[2]["golden_documents"]) for seed in range(10)}) == 1


def _positions(sequence, items):
    return [sequence.index(x) for x in items]


def test_shuffles_are_fixed_per_size_in_ruler_mode():
    """Needles, cwe lists and fwe streams: one permutation for every sample of a size in ruler mode
    (RULER reseeds each shuffle with its fixed seed); one per sample otherwise."""
    cwe, fwe, niah = tasks.get("cwe"), tasks.get("fwe"), tasks.get("niah_multivalue")

    def cwe_list(prompt):
        return re.findall(r"\d+\. (\S+)", prompt.split("most often.\n")[-1].split("\nQuestion:")[0])

    def fwe_stream(prompt):
        return prompt.split("occur most often. ", 1)[1].split("\nQuestion:")[0].split()

    for ruler in (True, False):
        layouts = collections.defaultdict(set)
        for seed in range(8):
            prompt, answers, _ = cwe.build(200, seed, 4096, ruler=ruler)
            words = cwe_list(prompt)
            layouts["cwe"].add(tuple(i for i, w in enumerate(words) if w in answers[:1]))  # where word 1 repeats
            prompt, answers, _ = fwe.build(3000, seed, 4096, ruler=ruler)
            layouts["fwe"].add(tuple(i for i, w in enumerate(fwe_stream(prompt)) if w == answers[0]))
            prompt, answers, _ = niah.build(2000, seed, 4096, ruler=ruler)
            layouts["niah"].add(tuple(sorted(range(4), key=lambda k: prompt.index(answers[k]))))
        for name, seen in layouts.items():
            assert (len(seen) == 1) == ruler, (name, ruler, len(seen))
    # a different size, a different permutation
    a = cwe_list(cwe.build(200, 0, 4096, ruler=True)[0])
    b = cwe_list(cwe.build(201, 0, 4096, ruler=True)[0])
    assert len(a) != len(b)


def test_noise_needles_in_ruler_mode_sit_at_distinct_units():
    task = tasks.get("niah_multiquery", type_haystack="noise")
    for seed in range(10):
        prompt, answers, meta = task.build(40, seed, 4096, ruler=True)
        lines = prompt.split("\n")
        needles = [i for i, line in enumerate(lines) if line.startswith("One of the secret")]
        assert len(needles) == 4 and all(b - a >= 2 for a, b in zip(needles, needles[1:]))


# ------------------------------------------------------------------ exact mode and fit_tolerance

def test_exact_mode_is_todays_fit(tok):
    for name in ("niah_single_2", "cwe", "fwe"):
        task = tasks.get(name)
        made = T.fit_samples(task, tok, 2048, 2, seed=1)
        assert [s.prompt for s in made] == [T.fit_sample(task, tok, 2048, seed=1_000_003 + i).prompt
                                            for i in range(2)]
        assert all("fit" not in s.metadata and s.metadata["total_tokens"] >= 0.95 * 2048 for s in made)
        n = made[0].metadata["haystack_units"]
        assert made[0].prompt == task.build(n, 1_000_003, 2048, lambda t: n_tokens(tok, t))[0]


class Words:
    """A tokenizer stub: one token a word."""
    name_or_path = "words"

    def __call__(self, text):
        return {"input_ids": text.split()}

    def get_vocab(self):
        return {}


class Blocks(tasks.TextTask):
    """A stub task of 40-token units after a 6-token preamble, budget 32: at 512 the best fit is
    6 + 11 * 40 + 32 = 478 tokens (93%), one more unit makes 518."""
    name, max_new_tokens = "blocks", 32

    def build(self, n, seed, length, count_tokens=None, ruler=False):
        return " ".join(["w"] * (6 + 40 * n)), ["w"], {"haystack_units": n}


def test_fit_tolerance_accepts_478_of_512_at_0_9_and_names_itself_at_0_95():
    s = T.fit_samples(Blocks(), Words(), 512, 1, fit_tolerance=0.9)[0]
    assert s.metadata["total_tokens"] == 478 and s.metadata["haystack_units"] == 11
    with pytest.raises(T.FitError) as error:
        T.fit_samples(Blocks(), Words(), 512, 1)
    message = str(error.value)
    assert "\n" not in message and "best fit is 478 tokens" in message and "under 95% of 512" in message
    assert "fit_tolerance 0.93 or lower" in message


# ------------------------------------------------------------------ the study settings

def _study(tmp_path, **eval_settings):
    from longarch.kinds import load_study

    path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"kind": "pretrained", "name": "s", "models": ["hf:some/model"],
                                    "tasks": ["niah_single_1", "vt"],
                                    "eval": {"lengths": [1024], "samples": 2, **eval_settings}}))
    return load_study(str(path))


def test_only_non_default_fit_settings_enter_cell_ids(tmp_path):
    from longarch.pretrained.runner import plan

    ids = {}
    for key, settings in {"none": {}, "exact": {"fit": "exact", "fit_tolerance": 0.95},
                          "ruler": {"fit": "ruler"}, "loose": {"fit_tolerance": 0.9}}.items():
        cells, _ = plan(_study(tmp_path, **settings))
        ids[key] = [c.cell_id for c in cells]
    assert ids["none"] == ids["exact"]
    assert not set(ids["ruler"]) & set(ids["none"]) and not set(ids["loose"]) & set(ids["none"])
    assert not set(ids["ruler"]) & set(ids["loose"])


def test_bad_fit_settings_are_one_line(tmp_path):
    for settings, fragments in (({"fit": "tight"}, ["fit", "exact", "ruler"]),
                                ({"fit_tolerance": 1.5}, ["fit_tolerance"]),
                                ({"fit": "ruler", "fit_tolerance": 0.9}, ["fit_tolerance applies to fit: exact"])):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"kind": "pretrained", "name": "s", "models": ["hf:some/model"],
                                        "tasks": ["vt"], "eval": settings}))
        result = CliRunner().invoke(app, ["plan", str(path)])
        one_error_line(result.exit_code, result.stderr, result.output, fragments)


@pytest.mark.usefixtures("one_thread")
def test_a_ruler_study_on_a_tiny_llama_stores_rulers_fills(tmp_path, monkeypatch):
    """A `fit: ruler` study end to end on a tiny random Llama: every stored prompt's fill is the one
    RULER's rule gives with the model's own tokenizer, the report rounds as RULER does."""
    import torch
    import transformers
    from test_hf_models import _config, word_tokenizer

    monkeypatch.setenv("LONGARCH_TEXT_CACHE", str(tmp_path / "cache"))
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    transformers.AutoModelForCausalLM.from_config(_config("llama", len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "kind": "pretrained", "name": "tiny-ruler", "models": [{"model": f"hf:{folder}", "name": "llama"}],
        "tasks": [{"name": "niah_single_1", "knobs": {"max_new_tokens": 4}},
                  {"name": "vt", "knobs": {"max_new_tokens": 4}}],
        "eval": {"lengths": [1024, 2048], "samples": 3, "chunk": 100, "fit": "ruler"}}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from longarch.study import eval_seed

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    fills = []
    for name in ("niah_single_1", "vt"):
        task = tasks.get(name, max_new_tokens=4)
        for length in (1024, 2048):
            lines = [json.loads(line) for line in
                     (out / "predictions" / "llama" / f"{name}-{length}.jsonl").read_text().splitlines()]
            seed = eval_seed(0, length, None)
            seeds = [seed * 1_000_003 + i for i in range(3)]
            start, units = _ruler_rule(task, tok, length, seeds, task.ruler_steps(length).step, lambda s: 0)
            assert [line["metadata"]["ruler_units"] for line in lines] == units
            for line, u, s in zip(lines, units, seeds):
                assert line["total_tokens"] == _total(task, tok, length, s, u, 0) <= length
                assert line["metadata"]["fit"] == "ruler"
                fills.append(line["total_tokens"] / length)
    assert all(0 < f <= 1 for f in fills)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit"] == "ruler"
    tasks_scores = summary["models"]["llama"]["tasks"]
    for length in ("1024", "2048"):
        expected = round(sum(tasks_scores[t][length] for t in ("niah_single_1", "vt")) / 2, 2)
        assert summary["models"]["llama"]["ruler_average"][length] == expected
    assert "As RULER reports it" in (out / "report.md").read_text()


# ------------------------------------------------------------------ longarch sample TEXT_TASK

@pytest.fixture(scope="module")
def tok_folder(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return folder


def test_sample_prints_a_fitted_text_prompt(tok, tok_folder):
    result = CliRunner().invoke(app, ["sample", "niah_single_1", "--tokenizer", str(tok_folder), "--length", "1024"])
    assert result.exit_code == 0, result.output
    [sample] = T.fit_samples(tasks.get("niah_single_1"), tok, 1024, 1, seed=0)
    total = sample.metadata["total_tokens"]
    assert f"= {total:,} of 1,024 (fill {total / 1024:.1%})" in result.output
    assert sample.prompt in result.output and f"answers: {sample.answers[0]}" in result.output
    ruler = CliRunner().invoke(app, ["sample", "niah_multikey_1", "--tokenizer", str(tok_folder), "--length", "4096",
                                     "--fit", "ruler", "--seed", "2"])
    assert ruler.exit_code == 0, ruler.output
    [sample] = T.fit_samples(tasks.get("niah_multikey_1"), tok, 4096, 1, seed=2, fit_mode="ruler")
    assert f"RULER's haystack: {sample.metadata['ruler_units']} units" in ruler.output and "step 500" in ruler.output
    assert sample.prompt in ruler.output


def test_sample_token_tasks_work_as_before():
    result = CliRunner().invoke(app, ["sample", "needle", "--length", "24", "--seed", "3"])
    assert result.exit_code == 0 and "answer:" in result.output


@pytest.mark.parametrize("args, fragments", [
    (lambda f: ["sample", "niah_single_1", "--tokenizer", "/no/such/tok", "--length", "1024"],
     ["--tokenizer /no/such/tok", "does not exist"]),
    (lambda f: ["sample", "niah_single_9", "--tokenizer", str(f), "--length", "1024"],
     ["unknown task 'niah_single_9'", "did you mean"]),
    (lambda f: ["sample", "cwe", "--tokenizer", str(f), "--length", "300"], ["Cwe", "without haystack", "300"]),
    (lambda f: ["sample", "niah_single_1", "--length", "1024"], ["--tokenizer PATH"]),
    (lambda f: ["sample", "niah_single_1", "--tokenizer", str(f), "--length", "1024", "--fit", "tight"],
     ["--fit must be exact or ruler"]),
    (lambda f: ["sample", "needle", "--tokenizer", str(f), "--length", "24"], ["for text tasks", "'needle'"]),
    (lambda f: ["sample", "niah_single_1", "--tokenizer", str(f), "--length", "1024", "--fit-tolerance", "1.0"],
     ["under 100% of 1024", "fit_tolerance"]),
])
def test_sample_bad_text_input_is_one_line(args, fragments, tok_folder):
    result = CliRunner().invoke(app, args(tok_folder))
    one_error_line(result.exit_code, result.stderr, result.output, fragments)
