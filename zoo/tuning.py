"""Hyperparameter search over a zoo model's training job, with KerasTuner.

Each model's training module declares, next to its recipe, `search_space(hp)`
(KerasTuner hyperparameters -> the training function's keyword arguments:
`architecture`, `dropout`, `learning_rate`) and `TUNING_OBJECTIVE` (a
validation metric and its direction). A trial is the model's own training
job (same data split, pipeline and schedule), run without export or figures;
its objective is read on the validation split, never on the held-out test
split the reports use. The search writes under `out/`:

    tuning/        KerasTuner's state: a rerun goes on with the trials left
    trials/<id>/   each trial's report and preset
    trials.csv     the table the command line prints
    preset/        the best trial's preset (checksummed, written atomically)
    best.json      the best trial's hyperparameters and objective
"""

import csv
import importlib
import json
import shutil
from pathlib import Path

from zoo.publishing import replaced_directory
from zoo.training_run import TrainingRun


def _objective_value(report, metric):
    history = report["history"].get(metric)
    if not history:
        raise ValueError(f"The training job logged no {metric!r}; it logged {sorted(report['history'])}.")
    return float(history[-1])


def tune(train_target, data, out, trials, epochs=None, max_train_examples=None, seed=0,
         run=None, **train_options):
    """Runs `trials` trials of the training function `train_target`
    (`"module:function"`, whose module declares `search_space` and
    `TUNING_OBJECTIVE`) and keeps the best.

    Returns:
        The rows of the results table, best first.
    """
    import keras_tuner

    if trials < 1:
        raise ValueError(f"--trials must be at least 1. Received: {trials}.")
    module_name, function_name = train_target.split(":")
    module = importlib.import_module(module_name)
    train = getattr(module, function_name)
    metric, direction = module.TUNING_OBJECTIVE
    out = Path(out)
    base_run = run or TrainingRun()
    trial_run = TrainingRun(
        strategy=base_run.strategy, precision=base_run.precision,
        jit_compile=base_run.jit_compile, attention_statistics=False,
        export=False, figures=False,
    )

    class TrainingJobTuner(keras_tuner.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            options = module.search_space(trial.hyperparameters)
            given = {k: v for k, v in (("epochs", epochs),
                                         ("max_train_examples", max_train_examples))
                     if v is not None}
            result = train(data, out / "trials" / trial.trial_id, seed=seed, verbose=0,
                            run=trial_run, **given, **{**train_options, **options})
            value = _objective_value(result.report, metric)
            print(f"trial {trial.trial_id}: {metric} {value:.4f} with "
                  f"{json.dumps(trial.hyperparameters.values)}", flush=True)
            return {metric: value}

    tuner = TrainingJobTuner(
        objective=keras_tuner.Objective(metric, direction), max_trials=trials, seed=seed,
        directory=str(out), project_name="tuning", overwrite=False,
    )
    tuner.search()
    rows = []
    for trial in tuner.oracle.get_best_trials(num_trials=trials):
        if trial.score is None:
            continue
        rows.append({"trial": trial.trial_id, metric: trial.score, **trial.hyperparameters.values})
    if not rows:
        raise ValueError("No trial finished: nothing to choose from.")
    write_table(rows, out / "trials.csv")
    best = rows[0]
    with replaced_directory(out / "preset") as staging:
        shutil.copytree(out / "trials" / best["trial"] / "preset", staging, dirs_exist_ok=True)
    (out / "best.json").write_text(json.dumps(
        {"objective": metric, "direction": direction, **best}, indent=2))
    return rows


def write_table(rows, path):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)
