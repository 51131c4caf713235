"""Plugins: a mixer or an architecture from outside the package, named by import path in a study
or with --plugin, registered like a built-in, recorded in the study, with its source hash in its
models' ids; and the registry that finds the built-ins in their own files."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from longarch import mixers, models
from longarch.cli import app
from longarch.controlled import runner
from longarch.kinds import load_study, stored_study
from longarch.mixers import plugins
from longarch.study.schema import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ema.py"
LONGARCH = str(Path(sys.executable).parent / "longarch")
cli = CliRunner()

STUDY = {"name": "plugged", "task": {"name": "needle"}, "train": {"length": 32, "steps": 4, "batch_size": 2,
                                                                  "eval_samples": 4},
         "eval": {"lengths": [32], "samples": 4, "depths": [0.5]}}


@pytest.fixture(autouse=True)
def registry():
    """Each test starts from the built-ins and leaves them as they were."""
    saved = (dict(mixers.MIXERS), dict(mixers.LETTERS), dict(mixers.ARCHITECTURES), dict(plugins._LOADED))
    yield
    for live, before in zip((mixers.MIXERS, mixers.LETTERS, mixers.ARCHITECTURES, plugins._LOADED), saved):
        live.clear()
        live.update(before)


def _write_study(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def _copy_example(folder: Path, name: str = "ema.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(EXAMPLE, folder / name))


# ---------------------------------------------------------------- the built-in registry


def test_every_mixer_file_declares_what_the_registry_holds():
    """Adding a built-in is one file: each module's MIXERS and ARCHITECTURES lists are all the
    registry holds, and nothing else names them."""
    declared_mixers, declared_archs = [], []
    for info in pkgutil.iter_modules(mixers.__path__):
        if info.name in mixers._NOT_MIXER_MODULES:
            continue
        module = importlib.import_module(f"longarch.mixers.{info.name}")
        declared_mixers += [spec.name for spec in getattr(module, "MIXERS", ())]
        declared_archs += [spec.name for spec in getattr(module, "ARCHITECTURES", ())]
    assert sorted(declared_mixers) == sorted(mixers.MIXERS) and len(mixers.MIXERS) == 11
    assert sorted(declared_archs) == sorted(models.names()) and len(models.names()) == 19
    assert all(spec.source is None and spec.letter for spec in mixers.MIXERS.values())


def test_architectures_are_listed_family_by_family_and_each_family_is_its_mixers():
    families = [models.family(name) for name in models.names()]
    order = [mixers.base.FAMILIES.index(f) for f in families]
    assert order == sorted(order)
    assert models.family("griffin") == "hybrid" and models.family("hawk") == "linear-recurrent"
    assert models.family("sliding-window") == "attention" and models.family("s4d") == "state-space"


# ---------------------------------------------------------------- loading a plugin


def test_a_plugin_file_registers_its_mixer_and_an_architecture_of_it_alone(tmp_path):
    path = _copy_example(tmp_path)
    loaded = plugins.load(str(path))
    assert loaded.mixers == ("ema",) and loaded.architectures == ()
    spec = mixers.get("ema")
    assert spec.family == "linear-recurrent" and spec.letter is None and spec.origin == str(path)
    assert spec.config.__name__ == "EMAConfig" and spec.mixer.__name__ == "EMAMixer"
    assert len(spec.source) == 16 and plugins.load(str(path)) is loaded  # loading again is a no-op
    arch = models.spec("ema")
    assert mixers.layers(arch.pattern) == ("ema",) and arch.n_layers == 2 and arch.mlp_ratio == 4.0
    model = models.build("ema", vocab_size=11, d_model=8)
    assert [type(b.mixer).__name__ for b in model.blocks] == ["EMAMixer", "EMAMixer"]
    assert models.config("ema").pattern == ["ema"]  # no letter: the pattern keeps the name


def test_a_plugin_can_declare_an_architecture_and_name_mixers_in_its_pattern(tmp_path):
    path = tmp_path / "hybrid_plugin.py"
    path.write_text(EXAMPLE.read_text() + '''

from longarch.mixers.base import ArchSpec

EMA_HYBRID = ArchSpec("ema-hybrid", "EMA layers with one attention layer in three", n_layers=3,
                      pattern=["ema", "ema", "attention"], mixer={"n_heads": 2})
''')
    loaded = plugins.load(str(path))
    assert loaded.architectures == ("ema-hybrid",)
    assert plugins.resolve(f"{path}:EMA_HYBRID") == "ema-hybrid"
    assert plugins.resolve(f"{path}:EMAMixer") == "ema"
    config = models.config("ema-hybrid")
    assert config.layers == ("ema", "ema", "attention") and models.family("ema-hybrid") == "hybrid"


def test_a_module_plugin_is_imported_by_its_name(tmp_path, monkeypatch):
    _copy_example(tmp_path / "mypkg", "ema_module.py")
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.resolve("mypkg.ema_module:EMAMixer") == "ema"
    assert mixers.get("ema").origin == "mypkg.ema_module"
    with pytest.raises(plugins.PluginError, match="cannot be imported: not installed"):
        plugins.load("mypkg.missing_module")


@pytest.mark.parametrize("edit,message", [
    (lambda text: text + "\nraise RuntimeError('broken on purpose')\n", "failed to import: RuntimeError: broken on purpose"),
    (lambda text: text.replace("def __init__(self, config: EMAConfig)", "def __init__(self, config)"),
     "cannot tell its config"),
    (lambda text: text.replace("    @staticmethod\n    def state_floats", "    def state_floats"), "must be a @staticmethod"),
    (lambda text: text.replace("class EMAMixer", "class Mamba2Mixer").replace("EMAMixer(", "Mamba2Mixer("),
     "clashes with the one from longarch"),
])
def test_a_bad_plugin_is_one_line(tmp_path, edit, message):
    path = tmp_path / "bad.py"
    path.write_text(edit(EXAMPLE.read_text()))
    with pytest.raises(plugins.PluginError, match=message) as info:
        plugins.load(str(path))
    assert "\n" not in str(info.value)
    assert "mamba2" in mixers.MIXERS and mixers.get("mamba2").origin is None  # a built-in is never replaced


def test_a_reference_to_a_missing_file_or_object_is_one_line(tmp_path):
    with pytest.raises(plugins.PluginError, match="does not exist"):
        plugins.load(str(tmp_path / "nowhere.py"))
    path = _copy_example(tmp_path)
    with pytest.raises(plugins.PluginError, match="has no 'Nope'"):
        plugins.resolve(f"{path}:Nope")
    with pytest.raises(plugins.PluginError, match="is not a mixer class"):
        plugins.resolve(f"{path}:ema_reference")


# ---------------------------------------------------------------- a plugin in a study


def test_plugins_are_read_relative_to_the_study_file_and_recorded_absolute(tmp_path, monkeypatch):
    path = _copy_example(tmp_path / "plugins")
    study_file = _write_study(tmp_path / "study.yaml", plugins=["plugins/ema.py"], models=["ema", "mamba2"])
    monkeypatch.chdir(tmp_path.parent)  # the study file's folder, not the working directory
    study = load_study(str(study_file))
    assert study.plugins == [str(path)] and [m.arch for m in study.models] == ["ema", "mamba2"]
    stored = study.model_dump(mode="json")
    plugins._LOADED.clear()
    del mixers.MIXERS["ema"], mixers.ARCHITECTURES["ema"]
    assert stored_study(stored).models[0].arch == "ema"  # a stored study imports its plugins again
    assert "ema" in mixers.MIXERS


def test_an_import_path_in_a_model_entry_and_the_plugin_option(tmp_path, monkeypatch):
    path = _copy_example(tmp_path / "lib")
    monkeypatch.chdir(tmp_path)
    study_file = _write_study(tmp_path / "study.yaml", models=[{"arch": "lib/ema.py:EMAMixer", "name": "mine"}])
    study = load_study(str(study_file))
    assert study.plugins == [str(path)] and study.models[0].arch == "ema" and study.models[0].label == "mine"
    by_option = load_study(str(_write_study(tmp_path / "other.yaml", models=["ema"])), plugin=["lib/ema.py"])
    assert by_option.plugins == [str(path)]


def test_a_mixer_entry_is_that_mixer_alone_and_family_can_be_declared(tmp_path):
    study = load_study(str(_write_study(tmp_path / "s.yaml", models=[
        {"mixer": "attention", "name": "attn"}, {"arch": "mamba2", "name": "m2a", "overrides": {"pattern": "MA"}},
        {"arch": "mamba2", "name": "mine", "family": "my-family"}])))
    plans, _ = runner.plan(study)
    assert [(p.label, p.arch, p.family) for p in plans] == [
        ("attn", "attention", "attention"), ("m2a", "mamba2", "hybrid"), ("mine", "mamba2", "my-family")]
    assert plans[0].config.layers == ("attention", "attention")


def test_a_plugin_mixer_without_a_family_needs_one_on_its_entry(tmp_path):
    path = tmp_path / "nofamily.py"
    path.write_text(EXAMPLE.read_text().replace('    family = "linear-recurrent"', '    pass'))
    with pytest.raises(ConfigError, match="mixer 'ema' declares no family; give the model entry a family:"):
        load_study(str(_write_study(tmp_path / "s.yaml", plugins=[str(path)], models=["ema"])))
    study = load_study(str(_write_study(tmp_path / "s.yaml", plugins=[str(path)],
                                        models=[{"arch": "ema", "family": "moving-average"}])))
    assert runner.plan(study)[0][0].family == "moving-average"


@pytest.mark.parametrize("models_, message", [
    (["nowhere/ema.py:EMAMixer"], "plugin file .*nowhere/ema.py does not exist"),
    ([{"mixer": "mamba3"}], "unknown mixer 'mamba3'"),
    ([{"mixer": "mamba2", "arch": "mamba2"}], "an arch or a mixer, not both"),
])
def test_a_bad_reference_in_a_study_is_one_line(tmp_path, models_, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_study(str(_write_study(tmp_path / "s.yaml", models=models_)))
    assert "\n" not in str(info.value)


def test_editing_a_plugin_changes_its_models_ids_and_no_other(tmp_path):
    path = _copy_example(tmp_path)
    study_file = _write_study(tmp_path / "s.yaml", plugins=[str(path)], models=["ema", "mamba2"])
    before = [p.model_id for p in runner.plan(load_study(str(study_file)))[0]]
    again = [p.model_id for p in runner.plan(load_study(str(study_file)))[0]]
    path.write_text(path.read_text().replace("torch.linspace(-2.0, 4.0, D)", "torch.linspace(-1.0, 4.0, D)"))
    after = [p.model_id for p in runner.plan(load_study(str(study_file)))[0]]
    assert before == again
    assert after[0] != before[0] and after[1] == before[1]
    assert mixers.get("ema").source == plugins._digest(path)


# ---------------------------------------------------------------- the command line


@pytest.mark.slow  # five commands, one with a worker process: about 20 s
def test_status_plan_and_report_of_a_plugin_study_from_another_directory(tmp_path):
    """The plugin is recorded in the study, so commands run elsewhere import it again (each in a
    process of its own, which knows nothing of it beforehand); the run uses worker processes."""
    path = _copy_example(tmp_path / "code")
    study_file = _write_study(tmp_path / "code" / "study.yaml", plugins=["ema.py"], models=["ema"])
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()

    def longarch(*args, cwd):
        return subprocess.run([LONGARCH, *args], capture_output=True, text=True, cwd=cwd, timeout=300)

    done = longarch("run", str(study_file), "--out", str(out), "--workers", "1", cwd=tmp_path / "code")
    assert done.returncode == 0, done.stderr
    status = longarch("status", str(out), cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert "1 of 1 trained" in status.stdout and "1 of 1 stored" in status.stdout
    planned = longarch("plan", str(study_file), "--out", str(out), cwd=elsewhere)
    assert planned.returncode == 0 and "remaining: 0 training tokens, 0 evaluation tokens" in planned.stdout
    (out / "report.md").unlink()
    reported = longarch("report", str(out), cwd=elsewhere)
    assert reported.returncode == 0, reported.stderr
    assert "| ema | linear-recurrent |" in (out / "report.md").read_text()
    path.rename(path.with_suffix(".moved"))  # the original is gone: the study directory's copy is read
    kept = longarch("status", str(out), cwd=elsewhere)
    assert kept.returncode == 0 and "1 of 1 trained" in kept.stdout, kept.stderr
    for copy in (out / "inputs").rglob("ema.py"):
        copy.unlink()  # the copy gone too: one line, exit 2
    gone = longarch("status", str(out), cwd=elsewhere)
    assert gone.returncode == 2 and "plugin file" in gone.stderr and "does not exist" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_models_lists_a_plugin(tmp_path):
    path = _copy_example(tmp_path)
    result = cli.invoke(app, ["models", "--plugin", str(path)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ ema "))
    assert "linear-recurrent" in row and "ema ema" in row and "EMA:" in row  # family, its two layers, its docstring
    missing = cli.invoke(app, ["models", "--plugin", str(tmp_path / "none.py")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_plugin_option_on_a_pretrained_study_is_refused(tmp_path):
    result = cli.invoke(app, ["plan", "paper", "--plugin", str(EXAMPLE)])
    assert result.exit_code == 2 and "--plugin is for controlled studies" in result.output


@pytest.mark.slow
def test_the_example_plugin_runs_on_a_process_pool_and_on_ray_alike(tmp_path):
    """Workers of both backends start knowing no plugin; each imports it from the study."""
    pytest.importorskip("ray")
    study_file = _write_study(tmp_path / "study.yaml", models=["ema", {"arch": "ema", "name": "ema-hybrid",
                                                                       "overrides": {"pattern": ["ema", "attention"]}}])
    summaries = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        done = subprocess.run([LONGARCH, "run", str(study_file), "--out", str(out), "--plugin", str(EXAMPLE),
                               "--backend", backend, "--workers", "2"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        summaries[backend] = yaml.safe_load((out / "summary.json").read_text())
    for local, ray in zip(summaries["local"]["models"], summaries["ray"]["models"]):
        assert (local["name"], local["family"]) == (ray["name"], ray["family"])
        assert local["scores"] == ray["scores"] and local["scores"]
    assert [m["family"] for m in summaries["local"]["models"]] == ["linear-recurrent", "hybrid"]


# ---------------------------------------------------------------- longarch check


def test_check_passes_the_example_and_a_built_in_architecture():
    result = cli.invoke(app, ["check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output.count("│ pass ") == 7 and "every check passed (1 mixer)" in result.output
    hawk = cli.invoke(app, ["check", "griffin", "--option", "chunk_size=5"])
    assert hawk.exit_code == 0, hawk.output
    assert "rglru" in hawk.output and "local-attention" in hawk.output and "2 mixers" in hawk.output
    one = cli.invoke(app, ["check", "M", "--only", "causal"])
    assert one.exit_code == 0 and one.output.count("│ pass ") == 1 and "1 of 7 checks passed (1 mixer)" in one.output


@pytest.mark.parametrize("old,new,failing", [
    # a causality leak: the chunk's mask dropped, so an output sees later inputs of its chunk
    ("powers = powers.masked_fill((lags < 0)[..., None], 0.0)", "pass", "causal"),
    # a state that is not carried: every call starts from zero
    ("h0 = u.new_zeros(u.shape[0], u.shape[2]) if state is None else state",
     "h0 = u.new_zeros(u.shape[0], u.shape[2])", "streaming"),
])
def test_check_fails_a_broken_copy_with_a_clear_line(tmp_path, old, new, failing):
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "broken.py"
    path.write_text(text.replace(old, new))
    result = cli.invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("FAIL ")]
    assert any(line.startswith(f"FAIL ema {failing}: ") for line in lines), result.output
    assert "batch" not in {line.split()[2].rstrip(":") for line in lines}  # what is not broken still passes


@pytest.mark.parametrize("args,message", [
    (["check", "nosuch"], "'nosuch' is neither a mixer"),
    (["check", "nowhere.py"], "plugin file"),
    (["check", "mamba2", "--option", "chunk_size"], "--option expects KEY=VALUE"),
    (["check", "mamba2", "--option", "head_dim=-1"], "head_dim must be positive and finite, not -1"),
    (["check", "mamba2", "--option", "windw=3"], "--option windw: no mixer checked has it"),
    (["check", "mamba2", "--only", "speed"], "--only speed: no such check; the checks are paths, streaming"),
])
def test_check_of_bad_input_is_one_line(args, message):
    result = cli.invoke(app, args)
    assert result.exit_code == 2 and message in result.output


def test_the_example_study_is_the_quick_study_with_the_plugin():
    """examples/quick-ema.yaml trains and evaluates as the quick preset does, so that `longarch
    compare` reads the two side by side like for like."""
    mine = load_study(str(EXAMPLE.parent / "quick-ema.yaml")).model_dump(mode="json")
    quick = load_study("quick").model_dump(mode="json")
    assert mine["plugins"] == [str(EXAMPLE)] and [m["arch"] for m in mine["models"]] == ["ema"]
    different = {key for key in quick if mine[key] != quick[key]}
    # `analysis` only judges (the quick study states the paper's claims; one model cannot)
    assert different == {"name", "description", "models", "plugins", "analysis"}
