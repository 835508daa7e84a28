"""The benchmark scripts' promises (issue 20): fixed steps, capped runs marked, every reported figure registered
with its command, commit, steps, seed and machine, and the paper-table plans printed without training."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Imports a script of benchmarks/ by name (they import ``_common`` as a sibling module)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


# ---------------------------------------------------------------------------------------------------------------
# The figures registry and the documents that quote it
# ---------------------------------------------------------------------------------------------------------------


def _registry(bench):
    return bench("reproduce").load_registry()


def test_every_registered_figure_says_how_it_was_made(bench):
    figures = _registry(bench)
    assert figures
    for f in figures:
        where = f"figure {f['name']}"
        assert re.fullmatch(r"[0-9a-f]{40}( \(with uncommitted changes\))?", f["commit"]), where
        steps = f["steps"] if isinstance(f["steps"], list) else [f["steps"]]
        assert steps and all(isinstance(s, int) and s > 0 for s in steps), where
        assert isinstance(f["seed"], int), where
        assert "core" in f["machine"] and ("GPU" in f["machine"]), where  # cores, model, ISA and GPUs
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?Z", f["date"]), where
        # The command fixes the steps; a time budget alone is what made earlier figures unrepeatable.
        assert f["command"].startswith(".venv/bin/python benchmarks/") and " --steps " in f["command"], where
        assert 0 < f["ci95"] < 50 and 0 <= f["value"] <= 100, where
        assert f.get("result", "result") == "result", where


def _tables(text: str, section: str | None = None) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables (header cells, data rows) of ``text``, or of the ``## section`` part of it only."""
    if section is not None:
        match = re.search(rf"^## {re.escape(section)}\b.*?(?=^## |\Z)", text, flags=re.M | re.S)
        text = match.group(0) if match else ""
    tables, rows, fenced = [], [], False
    for line in [*text.splitlines(), ""]:
        if line.startswith("```"):
            fenced = not fenced  # quoted program output is not a table of the document
        if line.startswith("|") and not fenced:
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(rows) >= 2:
            tables.append((rows[0], [r for r in rows[2:]]))
        rows = []
    return tables


def _figure_rows(text: str, section: str) -> list[tuple[str, str]]:
    """``(figure name, row text)`` of every table row in ``section``; fails on a table without a figure column."""
    out = []
    for header, rows in _tables(text, section):
        assert "figure" in header, f"a table in '## {section}' has no figure column: {header}"
        col = header.index("figure")
        for row in rows:
            out.append((row[col].strip("`"), " | ".join(row)))
    return out


@pytest.mark.parametrize("document, sections", [
    ("benchmarks/RESULTS.md", ["Omniglot accuracy", "MAML paper tables"]),
    ("README.md", ["Results"]),
])
def test_every_figure_in_the_headline_tables_is_registered_with_the_value_shown(bench, document, sections):
    figures = {f["name"]: f for f in _registry(bench)}
    text = (REPO / document).read_text()
    seen = []
    for section in sections:
        rows = _figure_rows(text, section)
        assert rows, f"no figure table in '## {section}' of {document}"
        for name, row in rows:
            assert name in figures, f"{document}: {name!r} is not in benchmarks/figures.json"
            f = figures[name]
            shown = f"{f['value']:.{f.get('decimals', 2)}f}%"
            assert shown in row, f"{document}: the row of {name} does not show its registered value {shown}: {row}"
            seen.append(name)
    if document == "benchmarks/RESULTS.md":
        assert set(figures) <= set(seen), f"registered but not in RESULTS.md: {set(figures) - set(seen)}"


def test_reproduce_lists_and_dry_runs_without_training(bench, capsys):
    reproduce = bench("reproduce")
    assert reproduce.main(["--list"]) == 0
    listed = capsys.readouterr().out
    figures = reproduce.load_registry()
    assert all(f["name"] in listed for f in figures)
    assert reproduce.main([figures[0]["name"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"command: {figures[0]['command']}" in out and "seed" in out and "machine" in out
    with pytest.raises(SystemExit):
        reproduce.main(["no-such-figure", "--dry-run"])


def test_reproduce_picks_the_figure_and_compares_intervals(bench, tmp_path):
    reproduce = bench("reproduce")
    text = "\n".join([
        "progress line",
        'RESULT {"benchmark": "omniglot_fewshot", "ways": 5, "shots": 1, "accuracy": 0.97, "ci95": 0.003}',
        'RESULT {"benchmark": "omniglot_fewshot", "ways": 20, "shots": 1, "accuracy": 0.93, "ci95": 0.002}',
        'RESULT {"benchmark": "omniglot_fewshot", "settings": []}',
    ])
    results = reproduce.parse_results(text)
    assert reproduce.pick(results, {"benchmark": "omniglot_fewshot", "ways": 20, "shots": 1})["accuracy"] == 0.93
    assert reproduce.pick(results, {"benchmark": "omniglot_fewshot", "ways": 20, "shots": 5}) is None
    assert reproduce.overlap(97.0, 0.3, 97.5, 0.3) and not reproduce.overlap(97.0, 0.2, 97.5, 0.2)
    argv, env = reproduce.command_argv("KERAS_BACKEND=jax .venv/bin/python benchmarks/x.py --steps 3")
    assert argv == [sys.executable, "benchmarks/x.py", "--steps", "3"] and env == {"KERAS_BACKEND": "jax"}

    bad = tmp_path / "figures.json"
    bad.write_text(json.dumps({"figures": [{"name": "x", "command": "python b.py --steps 1"}]}))
    with pytest.raises(ValueError, match="lacks"):
        reproduce.load_registry(bad)


def test_reproduce_reruns_the_command_and_compares(bench, tmp_path, capsys):
    reproduce = bench("reproduce")
    script = tmp_path / "bench.py"
    script.write_text("import json, sys\n"
                      "acc = float(sys.argv[sys.argv.index('--accuracy') + 1])\n"
                      "print('training...')\n"
                      "print('RESULT ' + json.dumps({'benchmark': 'toy', 'ways': 5, 'accuracy': acc, 'ci95': 0.01, "
                      "'steps': 1, 'seed': 0}))\n")
    figure = {"name": "toy-5w", "title": "a toy", "commit": "a" * 40, "steps": 1, "seed": 0,
              "machine": "2-core x, no GPU", "value": 97.0, "ci95": 1.0, "unit": "%", "date": "2026-12-03T18:00Z",
              "metric": "accuracy", "select": {"benchmark": "toy", "ways": 5}}
    registry = tmp_path / "figures.json"
    registry.write_text(json.dumps({"figures": [
        {**figure, "command": f".venv/bin/python {script} --accuracy 0.975"},
        {**figure, "name": "toy-far", "command": f".venv/bin/python {script} --accuracy 0.90"}]}))
    assert reproduce.main(["toy-5w", "--registry", str(registry), "--log", str(tmp_path / "run.log")]) == 0
    out = capsys.readouterr().out
    assert "new: 97.50% ± 1.00" in out and "intervals overlap: yes" in out and "training..." in out
    assert "RESULT" in (tmp_path / "run.log").read_text()
    assert reproduce.main(["toy-far", "--registry", str(registry)]) == 1
    assert "intervals overlap: NO" in capsys.readouterr().out


def test_a_finished_log_is_recorded_and_a_capped_one_refused(bench, tmp_path):
    reproduce = bench("reproduce")
    row = {"benchmark": "omniglot_fewshot", "ways": 5, "shots": 1, "accuracy": 0.98, "ci95": 0.0027,
           "episodes": 600, "paper_accuracy": 0.988, "train_ways": 20, "steps": 1909, "seed": 0, "capped": False}
    final = {"benchmark": "omniglot_fewshot", "settings": [row], "command": ".venv/bin/python "
             "benchmarks/omniglot_fewshot.py --steps 1909", "commit": "a" * 40, "date": "2026-12-03T18:40:12Z",
             "machine_line": "2-core AMD EPYC (AVX2, no AVX-512), no GPU; Python 3.11.7", "total_s": 500.0}
    log = tmp_path / "fewshot.log"
    log.write_text(f"RESULT {json.dumps(row)}\nRESULT {json.dumps(final)}\n")
    registry = tmp_path / "figures.json"
    assert reproduce.record(log, registry) == ["fewshot-5w1s"]
    (entry,) = reproduce.load_registry(registry)
    assert entry["value"] == 98.0 and entry["ci95"] == 0.27 and entry["steps"] == 1909
    assert entry["date"] == "2026-12-03T18:40Z" and entry["select"] == {"benchmark": "omniglot_fewshot", "ways": 5,
                                                                          "shots": 1}
    log.write_text(f"RESULT {json.dumps({**row, 'capped': True})}\nRESULT {json.dumps(final)}\n")
    with pytest.raises(ValueError, match="capped"):
        reproduce.record(log, registry)


# ---------------------------------------------------------------------------------------------------------------
# Fixed steps: a time budget alone is refused, a capped run is marked
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script, budget", [
    ("omniglot_fewshot", ["--budget-minutes", "7"]),
    ("omniglot_oneshot", ["--train-minutes", "6"]),
    ("paper_tables", ["--max-minutes", "5"]),
])
def test_a_time_budget_without_steps_is_refused(bench, capsys, script, budget):
    module = bench(script)
    with pytest.raises(SystemExit) as exc:
        module.parse_args(budget)
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err
    # With fixed steps the same flag is only a cap.
    args = module.parse_args([*budget, "--steps", "10"])
    assert args.max_minutes == float(budget[1])


def test_without_flags_the_scripts_run_fixed_default_steps(bench):
    fewshot = bench("omniglot_fewshot").parse_args([])
    assert fewshot.steps_by_shot == {1: 500, 5: 250} and fewshot.max_minutes is None
    assert bench("omniglot_fewshot").parse_args(["--steps", "1909", "826"]).steps_by_shot == {1: 1909, 5: 826}
    oneshot = bench("omniglot_oneshot").parse_args([])
    assert oneshot.steps == 500 and oneshot.conditions == ["minimal1", "minimal2", "background"]
    with pytest.raises(SystemExit):
        bench("omniglot_fewshot").parse_args(["--steps", "1", "2", "3"])


class _FakeServices:
    """Just enough of the service facade for ``_common.train``: a run that takes ``total`` steps, honouring cancel."""

    def __init__(self, total: int):
        self.total, self.cancelled, self.step = total, False, 0

    def resolve(self, raw):
        return SimpleNamespace(steps=raw["steps"])

    def create_run(self, config, name=""):
        return "run-1"

    def cancel(self, run_id):
        self.cancelled = True

    def train(self, run_id, progress=None):
        for step in range(1, self.total + 1):
            self.step = step
            progress(step, self.total, {"train/loss": 1.0})
            if self.cancelled:
                return "cancelled"
        return "completed"

    def run(self, run_id):
        return SimpleNamespace(step=self.step, config={}, error=None, traceback=None)

    def metrics(self, run_id):
        return {}


def test_a_run_stopped_by_its_cap_is_marked_not_a_result(bench, capsys):
    common = bench("_common")
    capped = common.train(_FakeServices(50), {"steps": 50}, label="t", max_minutes=0.0)
    out = capsys.readouterr().out
    assert capped["capped"] and capped["steps"] < capped["steps_requested"] == 50
    assert common.CAPPED in out and "CAPPED at step" in out
    assert common.result_status(capped["capped"]) == "capped: not a result"

    done = common.train(_FakeServices(5), {"steps": 5}, label="t", max_minutes=60.0)
    assert not done["capped"] and done["steps"] == 5 and common.result_status(False) == "result"


# ---------------------------------------------------------------------------------------------------------------
# paper_tables: the plans
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["cpu", "gpu"])
def test_paper_tables_prints_its_plan_without_importing_a_backend(plan, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import paper_tables; "
            f"rc = paper_tables.main(['--plan', {plan!r}, '--data-dir', {str(tmp_path)!r}]); "
            "assert rc == 0; assert not {'tensorflow', 'keras', 'jax'} & set(sys.modules), 'a backend was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "omniglot-5w1s" in out and "--steps" in out and "Predicted" in out
    assert "data not available: needs mini-imagenet-cache-train.pkl" in out
    assert "partial schedule" in out


def test_paper_tables_plans_fit_their_budgets(bench):
    pt = bench("paper_tables")
    assert pt.CPU_PLAN and all(s > 0 for s in pt.CPU_PLAN.values()) and set(pt.CPU_PLAN) <= set(pt.CPU_MEASURED)
    assert pt.CPU_OVERHEAD_S + sum(pt.cpu_predicted_s(n, s) for n, s in pt.CPU_PLAN.items()) <= pt.CPU_BUDGET_S
    rows = sum(s * pt.gpu_seconds_per_step(pt.ROWS[n]) + pt.GPU_MEASURED["first_step_s"] + pt.GPU_EVAL_S
               for n, s in pt.GPU_PLAN.items())
    assert pt.GPU_OVERHEAD_S + rows <= pt.GPU_BUDGET_S and rows <= 600  # one device call runs at most 600 s
    # The paper's figures (Finn et al. 2017, Table 1).
    assert {n: r.paper for n, r in pt.ROWS.items()} == {
        "omniglot-5w1s": (98.7, 0.4), "omniglot-5w5s": (99.9, 0.1), "omniglot-20w1s": (95.8, 0.3),
        "omniglot-20w5s": (98.9, 0.2), "miniimagenet-5w1s": (48.70, 1.84), "miniimagenet-5w5s": (63.11, 0.92)}


def test_paper_tables_row_configs_are_valid_run_configs(bench, builtin_registry):
    from metalab.core.engine.config import resolve_config

    pt = bench("paper_tables")
    for row in pt.ROWS.values():
        config = resolve_config(builtin_registry, row.config(steps=10, seed=0))
        assert config.algorithm_params["meta_batch_size"] == row.meta_batch_size
        assert config.algorithm_params["inner_steps"] == row.inner_steps and config.ways == row.ways


@pytest.mark.slow
def test_the_data_line_counts_what_was_loaded(bench, shared_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALAB_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("METALAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    common = bench("_common")
    data = common.describe_data(common.make_services(), "metalab.omniglot",
                                {"split": "minimal1", "rotations": False, "val_alphabets": 1}, "minimal1")
    out = capsys.readouterr().out
    # images_background_small1: 136 characters of 5 alphabets, one alphabet held out for validation.
    assert data["train"]["alphabets"] == 4 and data["val"]["alphabets"] == 1
    assert data["train"]["characters"] + data["val"]["characters"] == 136
    assert data["test"] == {"classes": 659, "characters": 659, "alphabets": 20}
    assert f"train {data['train']['characters']} characters of 4 alphabets" in out


# ---------------------------------------------------------------------------------------------------------------
# scale.py (issue 17 pt 6): the plan, the figures' definitions, the timings registry
# ---------------------------------------------------------------------------------------------------------------


def test_scale_prints_its_plan_without_starting_ray_or_a_backend(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import scale; "
            f"rc = scale.main(['--plan', '--data-dir', {str(tmp_path)!r}]); assert rc == 0; "
            "assert not {'tensorflow', 'keras', 'jax', 'ray'} & set(sys.modules), 'a backend or Ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # The same sweep at each concurrency, fixed steps and seeds, in a fresh home; every trial trains its steps.
    for c in (1, 2):
        assert ("metalab.core.cli sweep -d metalab.omniglot -a metalab.protonet --steps 30 " in out
                and f"--seeds 0-3 --max-concurrent {c} --num-cpus {c} --scheduler none --json" in out)
    assert out.count("METALAB_HOME='<fresh>'") == 2
    # devices=1 on the CPU as it is, devices=2 on two logical CPU devices, each in its own process.
    assert ".venv/bin/python benchmarks/scale.py --child 1 --device-steps 12" in out
    assert "METALAB_CPU_DEVICES=2 .venv/bin/python benchmarks/scale.py --child 2 --device-steps 12" in out
    assert "Predicted total" in out and "nothing was run" in out


def test_scale_refuses_a_devices_run_without_a_step_to_time(bench, capsys):
    scale = bench("scale")
    with pytest.raises(SystemExit):
        scale.parse_args(["--device-steps", "1"])  # the only step would be the excluded first one
    assert "Received: --trials=4 --steps=30 --device-steps=1" in capsys.readouterr().err
    args = scale.parse_args(["--steps", "7"])
    assert "--steps 7 " in " ".join(scale.sweep_command(args, 1)) and "--scheduler none" in " ".join(
        scale.sweep_command(args, 1))  # every trial trains its steps: ASHA would stop some
    config = scale.devices_config(scale.parse_args(["--device-steps", "5"]), "2")
    assert config["devices"] == "2" and config["steps"] == 5 and config["algorithm_params"]["meta_batch_size"] == 8


def test_scale_overhead_splits_the_sweeps_wall_time_exactly(bench):
    scale = bench("scale")
    # Launch at 100; start-up 12 s; runs of 5 s back to back with gaps of 0.5 and 1.5 s; exit 3 s after the last.
    trials = [{"own_start": 112.0, "own_end": 117.0, "started": 110.0, "finished": 117.2},
              {"own_start": 117.5, "own_end": 122.5, "started": 117.3, "finished": 122.7},
              {"own_start": 124.0, "own_end": 129.0, "started": 123.0, "finished": 129.5}]
    f = scale.sweep_figures(100.0, 132.0, list(reversed(trials)), 1)  # any order: sorted by the runs' starts
    assert f["wall_s"] == 32.0 and f["trials_per_hour"] == pytest.approx(3 * 3600 / 32)
    assert f["steady_trials_per_hour"] == pytest.approx(3 * 3600 / 17)
    assert f["startup_s"] == 12.0 and f["shutdown_s"] == 3.0
    assert f["gap_s"] == pytest.approx([12.0, 0.5, 1.5]) and f["between_s"] == pytest.approx([0.5, 1.5])
    # start-up + gaps + own times + shutdown = wall; the amortized overhead is everything but the runs.
    assert f["startup_s"] + sum(f["between_s"]) + sum(f["own_s"]) + f["shutdown_s"] == pytest.approx(f["wall_s"])
    assert f["amortized_s"] == pytest.approx((32 - 15) / 3)
    assert f["tune_overhead_s"] == pytest.approx([2.2, 0.4, 1.5])
    # Two at once: no gaps (the trials overlap), the rest as before.
    two = scale.sweep_figures(100.0, 125.0, trials[:2], 2)
    assert "gap_s" not in two and two["trials_per_hour"] == pytest.approx(2 * 3600 / 25)
    # Meta-iterations/s: the training phases only, the first (compiling) step and validation excluded.
    phases = [{"name": "loading", "started": 0, "finished": 1}, {"name": "compiling", "started": 1, "finished": 9},
              {"name": "training", "started": 9, "finished": 14}, {"name": "validating", "started": 14,
                                                                    "finished": 16},
              {"name": "training", "started": 16, "finished": 16.5}]
    assert scale.iterations_per_s(phases, 12) == {"iters_per_s": 2.0, "training_s": 5.5, "first_step_s": 8.0}


def _scale_log(**final):
    sweep = {"benchmark": "scale", "figure": "sweep", "concurrency": 1, "scheduler": "none", "steps": 30, "seed": 0,
             "trials": 4, "trials_per_hour": 200.0, "between_s": [0.4, 0.6], "amortized_s": 6.0, "capped": False,
             "command": "METALAB_HOME='<fresh>' .venv/bin/python -m metalab.core.cli sweep --steps 30",
             "date": "2026-12-04T10:00:00Z", "load_avg": [0.5, 0.4, 0.3], "load_avg_end": [1.2, 0.5, 0.3]}
    runs = [{"benchmark": "scale", "figure": "devices", "devices": d, "device": "/device:CPU:0", "steps": 12,
             "seed": 0, "meta_batch_size": 8, "iters_per_s": v, "capped": False, "command": "x --child " + d,
             "date": "2026-12-04T10:05:00Z", "load_avg": [0.9], "load_avg_end": [0.8]}
            for d, v in (("1", 0.5), ("2", 0.6), ("1", 0.7), ("2", 0.8))]
    ratio = {"benchmark": "scale", "figure": "devices-ratio", "devices": "2", "reference": "1", "ratio": 7 / 6,
             "steps": 12, "seed": 0}
    last = {"benchmark": "scale", "command": ".venv/bin/python benchmarks/scale.py --steps 30", "commit": "a" * 40,
            "date": "2026-12-04T09:59:00Z", "machine_line": "2-core AMD EPYC (AVX2, no AVX-512), no GPU",
            "capped": False, **final}
    return "\n".join("RESULT " + json.dumps(r) for r in [sweep, *runs, ratio, last]) + "\n"


def test_scale_records_its_timings_and_refuses_a_capped_run(bench, tmp_path):
    scale = bench("scale")
    log = tmp_path / "scale.log"
    log.write_text(_scale_log())
    registry = tmp_path / "figures.json"
    registry.write_text(json.dumps({"figures": []}))
    names = scale.record(log, registry)
    assert names == ["scale-sweep-c1-trials-per-hour-cpu", "scale-sweep-overhead-between-trials-cpu",
                     "scale-sweep-overhead-amortized-cpu", "scale-devices-1-iters-per-s-cpu",
                     "scale-devices-2-iters-per-s-cpu", "scale-devices-2-vs-1-cpu"]
    timings = {t["name"]: t for t in json.loads(registry.read_text())["timings"]}
    between = timings["scale-sweep-overhead-between-trials-cpu"]
    assert between["value"] == 0.5 and between["unit"] == "s" and between["loaded"]  # load 1.2 at its end
    assert between["command"].endswith("scale.py --steps 30") and "sweep --steps 30" in between["part_command"]
    one = timings["scale-devices-1-iters-per-s-cpu"]
    assert one["value"] == 0.6 and not one["loaded"] and one["steps"] == 12  # the median of the rounds
    assert timings["scale-devices-2-vs-1-cpu"]["value"] == pytest.approx(7 / 6, abs=1e-4)
    assert json.loads(registry.read_text())["figures"] == []  # reproduce.py's accuracies are left alone
    log.write_text(_scale_log(capped=True))
    with pytest.raises(ValueError, match="capped"):
        scale.record(log, registry)


def test_every_registered_timing_says_how_it_was_made_and_results_shows_it():
    timings = json.loads((BENCHMARKS / "figures.json").read_text()).get("timings", [])
    assert timings, "no timings in benchmarks/figures.json"
    rows = dict(_figure_rows((BENCHMARKS / "RESULTS.md").read_text(), "Scale"))
    assert rows, "no figure table in '## Scale (issue 17 ...)' of benchmarks/RESULTS.md"
    for t in timings:
        where = f"timing {t['name']}"
        assert re.fullmatch(r"[0-9a-f]{40}( \(with uncommitted changes\))?", t["commit"]), where
        assert t["command"].startswith(".venv/bin/python benchmarks/scale.py") and " --steps " in t["command"], where
        assert isinstance(t["steps"], int) and t["steps"] > 0 and isinstance(t["seed"], int), where
        assert "core" in t["machine"] and "GPU" in t["machine"], where
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z", t["date"]), where
        assert t["loaded"] == (max(t["load_avg"]) > 1), where
        assert t["name"] in rows, f"{where} is not in RESULTS.md's scale section"
        assert f"{t['value']:.2f}" in rows[t["name"]] or f"{t['value']:.0f}" in rows[t["name"]], where
