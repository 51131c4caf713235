"""The progress display: a model in training shows its step out of its steps, its loss and its
time left at its own rate; a stage bar shows its count and a time left from its own average; a
narrow terminal cuts the notes short, not the counts."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import Progress

from longarch.controlled import runner
from longarch.kinds import load_study
from longarch.study.progress import progress_display, time_left
from test_runner import TINY, write_study


def rendered(progress: Progress, width: int = 120) -> list[str]:
    console = Console(record=True, width=width, file=open(os.devnull, "w"))
    console.print(progress.make_tasks_table(progress.tasks))
    return console.export_text().splitlines()


def live_bars(tmp_path, **changes) -> tuple[Progress, runner._LiveBars, list]:
    study = load_study(str(write_study(tmp_path, **changes)))
    plans = runner.plan(study)[0]
    progress = progress_display(Console(file=open(os.devnull, "w")))
    return progress, runner._LiveBars(progress, {p.model_id: p for p in plans}, None), plans


def test_a_training_models_bar_shows_its_step_loss_and_time_left(tmp_path):
    progress, bars, plans = live_bars(tmp_path)
    model = plans[0].model_id
    bars.update(model, {"step": 10, "of": 100, "loss": 2.5, "accuracy": None, "time": 1000.0})
    (line,) = [line for line in rendered(progress) if "transformer s0" in line]
    assert " 10/100 " in line and "loss 2.500" in line and "eta -:--:--" in line  # no rate yet
    bars.update(model, {"step": 30, "of": 100, "loss": 1.25, "accuracy": 0.5, "time": 1002.0})
    (line,) = [line for line in rendered(progress) if "transformer s0" in line]
    # 20 steps in 2 s: the 70 left take 7 s
    assert " 30/100 " in line and "loss 1.250" in line and "eta 0:00:07" in line and "acc@T 50%" in line


def test_each_models_time_left_is_at_its_own_rate(tmp_path):
    progress, bars, plans = live_bars(tmp_path)
    fast, slow = (p.model_id for p in plans)
    for model, steps in ((fast, 50), (slow, 5)):  # steps in 10 s
        bars.update(model, {"step": 0, "of": 1000, "loss": 1.0, "time": 0.0})
        bars.update(model, {"step": steps, "of": 1000, "loss": 1.0, "time": 10.0})
    by_name = {task.description.strip(): task for task in progress.tasks}
    assert time_left(by_name["transformer s0"]) == 950 / 5.0
    assert time_left(by_name["mamba2 s0"]) == 995 / 0.5
    # the same report polled again changes nothing; a step lower (a sweep's next rate) starts over
    bars.update(fast, {"step": 50, "of": 1000, "loss": 1.0, "time": 10.0})
    assert time_left(by_name["transformer s0"]) == 950 / 5.0
    bars.update(fast, {"step": 0, "of": 1000, "loss": None, "time": 11.0})
    assert time_left(by_name["transformer s0"]) is None


def test_the_train_bar_counts_models_with_a_time_left_from_its_average():
    clock = [0.0]
    progress = progress_display(Console(file=open(os.devnull, "w")))
    progress.get_time = lambda: clock[0]
    train = progress.add_task("train", total=4, info="")
    assert time_left(progress.tasks[0]) is None
    clock[0] = 60.0
    progress.update(train, advance=1, info="transformer s0: acc@T 100.0%")
    assert time_left(progress.tasks[0]) == 180.0  # a model a minute, three to go
    (line,) = rendered(progress)
    assert "1/4" in line and "eta 0:03:00" in line and "transformer s0: acc@T 100.0%" in line


def test_a_criterion_shows_up_to_its_steps_and_a_sweep_its_rate(tmp_path):
    until = {**TINY["train"], "until": {"accuracy": 0.9, "max_steps": 40}}
    progress, bars, plans = live_bars(tmp_path, models=[{"arch": "transformer", "lr": [0.003, 0.01]}], train=until)
    runner._LIVE_HOOK = bars.update  # as an in-process run sets it
    try:
        live = runner._Live(runner.TrainJob(plans[0], None, None))
        live.rate(1, 0.01)
        for step, loss in enumerate([2.0] * 9 + [1.0]):
            live.step(step, loss)
    finally:
        runner._LIVE_HOOK = None
    (line,) = [line for line in rendered(progress) if "transformer s0" in line]
    assert "10/up to 40" in line and "lr 0.01 (2 of 2)" in line
    assert "loss 1.900" in line  # smoothed: one low batch moves it a tenth of the way


def test_a_narrow_terminal_cuts_the_notes_not_the_counts(tmp_path):
    progress, bars, plans = live_bars(tmp_path)
    progress.add_task("train", total=2, info="a very long note about the last model stored " * 3)
    bars.update(plans[0].model_id, {"step": 30, "of": 100, "loss": 1.25, "accuracy": 0.5,
                                    "lr": "lr 0.003 (1 of 3)", "time": 1.0})
    lines = rendered(progress, width=70)
    assert len(lines) == 2 and all(len(line) <= 70 for line in lines)
    assert "0/2" in lines[0] and "eta" in lines[0] and lines[0].rstrip().endswith("…")
    assert "30/100" in lines[1] and "eta" in lines[1] and "loss 1.250" in lines[1]


def test_an_in_process_run_shows_the_loss_while_it_trains(tmp_path, monkeypatch):
    """The hook's reports, drawn as they come (the display's own refresh is too slow for a
    training this short)."""
    update = runner._LiveBars.update

    def update_and_draw(self, model_id, info):
        update(self, model_id, info)
        self.progress.refresh()

    monkeypatch.setattr(runner._LiveBars, "update", update_and_draw)
    study = load_study(str(write_study(tmp_path, models=["transformer"],
                                       eval={"max_factor": 1, "depths": [50], "samples": 2, "chunk": 8})))
    console = Console(record=True, width=120, force_terminal=True, file=open(os.devnull, "w"))
    runner.run_study(study, tmp_path / "out", console)
    text = console.export_text()
    assert any("transformer s0" in line and "/15" in line and "loss " in line and "eta " in line
               for line in text.splitlines())
