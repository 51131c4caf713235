"""`longarch export DIR --lm-eval`: a pretrained study's scores in lm-evaluation-harness's results
JSON, one file per model (lm-eval writes one per run of one model), so that tools that read
lm-eval's output read longarch's.

lm-eval's RULER tasks (lm_eval/tasks/ruler) are one task per RULER task, each with one metric per
sequence length named by the length, under the filter `none`: `results["niah_single_1"]["4096,none"]`
is the mean score (a fraction) of that task's samples at 4096 tokens; the `ruler` group averages the
tasks (unweighted). This writes the same: one task per task entry (lm-eval's name for RULER's:
vt -> ruler_vt, qa_1 -> ruler_qa_squad, ...; an entry's own label otherwise; a fixed needle depth
adds `_depth<d>`), a `<length>,none` metric for each length stored (the store's accuracy, exactly),
and the `ruler` group over the averaged tasks at each length. A stderr is "N/A", as lm-eval writes
for RULER's metrics. The keys written: results, groups, group_subtasks, configs, versions, n-shot,
higher_is_better, n-samples, config (model, model_args, batch_size, device, gen_kwargs,
random_seed, bootstrap_iters, limit), git_hash, date, model_source, model_name,
model_name_sanitized, system_instruction, system_instruction_sha, chat_template,
chat_template_sha, fewshot_as_multiturn, transformers_version; and `longarch` (the study, the
model's label, spec and training length, and the cells' ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from ..study.ids import slug
from ..study.store import read_only
from . import args as arguments

FOLDER = "lm-eval"  # where it writes in the study directory by default
NAMES = {"vt": "ruler_vt", "cwe": "ruler_cwe", "fwe": "ruler_fwe", "qa_1": "ruler_qa_squad", "qa_2": "ruler_qa_hotpot"}
GROUP = "ruler"
METRIC = {"qa_1": "string_match_part (RULER's: any reference found)", "qa_2": "string_match_part (RULER's: any "
          "reference found)"}


def task_name(task: str, label: str, depth: float | None) -> str:
    """lm-eval's name of a cell's task."""
    name = NAMES.get(task, task) if label == task else slug(label)
    return name if depth is None else f"{name}_depth{depth:g}"


def documents(directory: Path) -> dict[str, dict]:
    """model label -> its lm-eval results document, from the store in `directory` (read-only)."""
    path = Path(directory) / "results.sqlite"
    with read_only(path, untouched=True) as store:
        meta, results, models = store.meta(), store.results(), store.pretrained()
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if (meta.get("kind") or config.get("kind")) != "pretrained":
        raise ValueError(f"{directory} holds a {meta.get('kind') or config.get('kind') or 'controlled'} study; "
                         "--lm-eval is for pretrained studies")
    date = os.path.getmtime(path)
    rows = defaultdict(list)
    for row in results:
        rows[row.model].append(row)
    info = {m["name"]: m for m in models}
    return {model: _document(meta, config, info.get(model, {}), mine, date) for model, mine in rows.items()}


def _suite(config: dict, meta: dict) -> list[str]:
    """The labels the report averages (entries without fixed depths or relative lengths)."""
    skipped = {label for label, _ in meta.get("skipped", [])}
    labels = [e.get("label") or e["name"] for e in config.get("tasks", [])
              if not e.get("depths") and not e.get("length_factors")]
    chosen = (config.get("analysis") or {}).get("labels")
    return [label for label in labels if label not in skipped and (not chosen or label in chosen)]


def _document(meta: dict, config: dict, model: dict, rows: list, date: float) -> dict:
    evaluation = config.get("eval") or {}
    tasks: dict[str, dict] = {}
    for row in rows:
        name = task_name(row.task, row.label or row.task, row.depth)
        entry = tasks.setdefault(name, {"row": row, "lengths": {}, "samples": 0, "cells": []})
        entry["lengths"][row.length] = row.accuracy
        entry["samples"] += row.n
        entry["cells"].append(row.cell_id)
    suite = {task_name(r.task, r.label or r.task, None) for r in rows
             if r.depth is None and (r.label or r.task) in _suite(config, meta)}
    results = {name: _metrics(name, t["lengths"]) for name, t in tasks.items()}
    group = _group(results, [n for n in tasks if n in suite])
    document = {
        "results": {**results, **({GROUP: group} if group else {})},
        **({"groups": {GROUP: group}, "group_subtasks": {GROUP: [n for n in tasks if n in suite]}} if group else
           {"group_subtasks": {}}),
        "configs": {name: _config(name, t, model, evaluation) for name, t in tasks.items()},
        "versions": {**{name: _version(t["row"].task) for name, t in tasks.items()},
                     **({GROUP: 1} if group else {})},
        "n-shot": {**{name: 0 for name in tasks}, **({GROUP: 0} if group else {})},
        "higher_is_better": {name: {str(n): True for n in sorted(t["lengths"])} for name, t in tasks.items()},
        "n-samples": {name: {"original": t["samples"], "effective": t["samples"]} for name, t in tasks.items()},
    }
    if group:
        document["higher_is_better"][GROUP] = {key.split(",")[0]: True for key in group if key.endswith(",none")
                                               and "_stderr" not in key}
    return {**document, **_about(meta, config, model, evaluation, date, tasks)}


def _version(task: str):
    """The task's version as longarch counts it (a part of every cell's id)."""
    from .. import tasks

    try:
        return tasks.task_class(task).version
    except (KeyError, ValueError, AttributeError):
        return None


def _metrics(name: str, lengths: dict[int, float]) -> dict:
    out: dict = {"alias": name}
    for length in sorted(lengths):
        out[f"{length},none"] = lengths[length]
        out[f"{length}_stderr,none"] = "N/A"
    return out


def _group(results: dict, members: list[str]) -> dict:
    """lm-eval's group average: at each length, the unweighted mean of the member tasks that have
    it (weight_by_size: false)."""
    by_length = defaultdict(list)
    for name in members:
        for key, value in results[name].items():
            if key.endswith(",none") and "_stderr" not in key:
                by_length[int(key.split(",")[0])].append(value)
    if not by_length:
        return {}
    out: dict = {"alias": GROUP}
    for length in sorted(by_length):
        out[f"{length},none"] = sum(by_length[length]) / len(by_length[length])
        out[f"{length}_stderr,none"] = "N/A"
    return out


def _config(name: str, task: dict, model: dict, evaluation: dict) -> dict:
    """A task's config as lm-eval writes it, for the keys that mean something here."""
    row = task["row"]
    budget = (model.get("gen_args") or {}).get("max_new_tokens") or row.knobs.get("max_new_tokens")
    return {"task": name, "tag": ["longcxt"], "output_type": "generate_until", "test_split": "test",
            "num_fewshot": 0, "repeats": 1,
            "generation_kwargs": {"do_sample": False, "temperature": 0.0, "max_gen_toks": budget,
                                  "until": (model.get("gen_args") or {}).get("until", [])},
            "metric_list": [{"metric": str(n), "higher_is_better": True} for n in sorted(task["lengths"])],
            "metadata": {"version": 1.0, "max_seq_lengths": sorted(task["lengths"]),
                         "longarch_task": row.task, "longarch_label": row.label or row.task, "depth": row.depth,
                         "knobs": row.knobs, "samples_per_length": evaluation.get("samples"),
                         "metric": METRIC.get(row.task, "string_match_all (the fraction of references found)")}}


def _about(meta: dict, config: dict, model: dict, evaluation: dict, date: float, tasks: dict) -> dict:
    """The run's keys: the model and its arguments, the environment."""
    spec = model.get("spec") or "?"
    scheme, _, target = spec.partition(":")
    given = {"pretrained": target, "dtype": model.get("dtype") or evaluation.get("dtype"),
             **{k: v for k, v in (model.get("model_args") or {}).items() if k != "dtype"}}
    system = model.get("system_prompt")
    gen = model.get("gen_args") or {}
    return {
        "config": {"model": scheme or "hf", "model_args": arguments.shown(given), "batch_size": None,
                   "device": evaluation.get("device"), "gen_kwargs": arguments.shown(gen) or None,
                   "random_seed": evaluation.get("seed"), "bootstrap_iters": 0, "limit": None},
        "git_hash": meta.get("git_commit"), "date": date, "model_source": scheme or "hf", "model_name": target,
        "model_name_sanitized": target.replace("/", "__"), "system_instruction": system,
        "system_instruction_sha": hashlib.sha256(system.encode()).hexdigest() if system else None,
        "chat_template": None, "chat_template_sha": None, "fewshot_as_multiturn": False,
        "transformers_version": (meta.get("versions") or {}).get("transformers"),
        "longarch": {"study": meta.get("name"), "model": model.get("name"), "spec": spec,
                     "template": model.get("template"), "train_length": model.get("train_length"),
                     "cell_ids": {name: t["cells"] for name, t in tasks.items()}}}


def write(directory: Path, out: Path | None) -> list[Path]:
    """Write each model's document to `<out>/<model>/results.json` (out: DIR/lm-eval unless
    given), each file whole or not at all; return the paths."""
    docs = documents(directory)
    folder = Path(out) if out is not None else Path(directory) / FOLDER
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; --lm-eval writes a folder (one results.json per model)")
    paths = []
    for model, document in docs.items():
        path = folder / slug(model) / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".results.json.tmp")
        tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths
