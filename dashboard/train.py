"""The Train page: choose dataset, algorithm and backbone, set their parameters, validate, launch a worker.

The whole setup lives in the query string (``?dataset=...&algorithm=...&algorithm.inner_lr=0.01&steps=...``,
the same qualified names as ``metalab train --set``), so a link reproduces it.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from metalab.core.engine.config import CADENCE_FIELDS, ConfigError, RunConfig
from metalab.core.services import ProbeError

from . import routes
from .datasets import dataset_panel
from .forms import FormField, decode, encode, render_fields, schema_fields
from .state import mode, services

#: What the form opens on: the app's choice of a first run, not knowledge about the plugins (their presets and
#: defaults come from their specs); when one is not loaded the form opens on the first that is.
DEFAULT_DATASET = "metalab.sinusoid"
DEFAULT_ALGORITHM = "metalab.maml"

#: Run fields shown above the fold, and in the "Schedule and evaluation" expander.
MAIN_FIELDS = ("ways", "shots", "queries", "steps", "seed")
ADVANCED_FIELDS = ("val_every", "val_episodes", "test_episodes", "checkpoint_every", "log_every", "eval_at_end",
                   "device", "precision", "jit_compile")
_PLUGIN_SECTIONS = ("dataset", "algorithm", "backbone")
#: Run fields drawn by the schema form; ``device`` has its own selector, filled from the worker's device list.
_FORM_ADVANCED_FIELDS = tuple(n for n in ADVANCED_FIELDS if n != "device")

_MEMORY = "train.memory"
_LOADED = "train.loaded"
_DEVICE = "train.device"
_ESTIMATE = "train.estimate_result"
_DATASET_SHOWN = "train.dataset_shown"
#: A config handed over by another page of this session (``open_in_train``): the only way a path, URL, checksum
#: or run reaches the form besides typing it, since links never carry those.
_HANDOFF = "train.handoff"


def starting_values(svc: Any, dataset: str, algorithm: str) -> dict[str, Any]:
    """The form's starting values for a dataset and algorithm: the recommended values ``metalab train`` starts
    from too (``Services.recommended_values``), steps shortened to this dashboard's cap. The cadences are left
    out: their fields open empty, so they scale with the steps as the run's are set.
    """
    values = {k: v for k, v in svc.recommended_values(dataset, algorithm).items() if k not in CADENCE_FIELDS}
    return _within_caps(values, svc.settings.max_steps)


def _machine_names(config: dict[str, Any], catalog: dict[str, Any] | None) -> dict[str, set[str]]:
    """``{section: names}`` of the config's plugin parameters that touch the machine."""
    catalog = catalog if catalog is not None else services().catalog()
    tables = {"dataset": catalog["datasets"], "algorithm": catalog["algorithms"], "backbone": catalog["backbones"]}
    return {section: set((tables[section].get(config.get(section) or "") or {}).get("machine") or {})
            for section in _PLUGIN_SECTIONS}


def _within_caps(values: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """Starting values shortened to this dashboard's step cap (a demo's launch as they are; the cadences, left
    empty, scale with the steps)."""
    steps = int(values.get("steps", 0) or 0)
    return values if steps <= max_steps else dict(values, steps=max_steps)


def config_query_params(config: dict[str, Any], catalog: dict[str, Any] | None = None) -> dict[str, str]:
    """The query string of a run config (what the Train page reads back). Parameters that name a server path,
    URL, checksum or run are left out: a link never carries them."""
    flat = {"dataset": config["dataset"], "algorithm": config["algorithm"]}
    if config.get("backbone"):
        flat["backbone"] = config["backbone"]
    for name in MAIN_FIELDS + ADVANCED_FIELDS:
        if config.get(name) is not None:
            flat[name] = encode(config[name])
    machine = _machine_names(config, catalog)
    for section in _PLUGIN_SECTIONS:
        for name, value in (config.get(f"{section}_params") or {}).items():
            if name not in machine[section]:
                flat[f"{section}.{name}"] = encode(value)
    return flat


def open_in_train(config: dict[str, Any]) -> None:
    """Switches to the Train page set up with ``config`` (its query string wins over remembered values; its
    machine-touching parameters travel in this session's state, never in the link)."""
    st.session_state.pop(_LOADED, None)
    st.session_state.pop(_MEMORY, None)
    st.session_state[_HANDOFF] = {section: dict(config.get(f"{section}_params") or {}) for section in _PLUGIN_SECTIONS}
    st.switch_page(routes.train_page(), query_params=config_query_params(config))


class _Initial:
    """Starting values of widgets: remembered this session, else from the link, else preset, else default."""

    def __init__(self, query: dict[str, str], first_load: bool, presets: dict[str, Any]):
        self.query = query if first_load else {}
        self.presets = presets
        self.memory: dict[str, Any] = st.session_state.setdefault(_MEMORY, {})
        self.handoff: dict[str, dict[str, Any]] = st.session_state.get(_HANDOFF) or {}
        self.problems: list[str] = []

    def value(self, widget_key: str, query_key: str, ff: FormField, fallback: Any = None) -> Any:
        if widget_key in self.memory:
            return self.memory[widget_key]
        section, _, name = query_key.rpartition(".")
        if ff.machine:
            # Never from a link: only this session's own hand-over (e.g. its upload) or the default.
            handed = self.handoff.get(section, {})
            if name in handed:
                return handed[name]
            if query_key in self.query:
                self.problems.append(f"Link parameter ignored: {query_key} names a server path, URL, checksum or "
                                     "run, which a link cannot set.")
        elif query_key in self.query:
            try:
                return decode(ff, self.query[query_key])
            except ValueError as exc:
                self.problems.append(f"Link parameter ignored: {exc}")
        if query_key in self.presets:
            return self.presets[query_key]
        return ff.default if ff.default is not None else fallback

    def for_fields(self, prefix: str, section: str | None, fallbacks: dict[str, Any] | None = None):
        def initial(ff: FormField) -> Any:
            query_key = f"{section}.{ff.name}" if section else ff.name
            return self.value(f"{prefix}.{ff.name}", query_key, ff, (fallbacks or {}).get(ff.name))

        return initial


def _choose(label: str, options: list[str], key: str, query_key: str, default: str | None, init: _Initial,
            titles: dict[str, str], help: str = "", takes: str = "") -> str:
    """A selectbox of ``options``; ``titles`` names every plugin of the kind. With ``takes`` (what the options
    take, e.g. ``"environment tasks (<dataset id>)"``) a loaded plugin left out is named as not taking it."""
    if not options:
        st.error(f"No {label.lower()} plugin is loaded{' that takes ' + takes if takes else ''}; see the Plugins page.")
        st.stop()
    if st.session_state.get(key) not in (None, *options):  # chosen for another dataset, which it fitted
        held = st.session_state.pop(key)
        st.info(f"{titles.get(held, held)} ({held}) does not take {takes}: chose "
                f"{titles.get(options[0], options[0])} instead." if takes else f"{held} is not offered here.")
    if key not in st.session_state:
        choice = init.memory.get(key) or init.query.get(query_key) or default
        if choice not in options:
            if query_key in init.query and init.query[query_key] in titles and takes:
                init.problems.append(f"Link parameter ignored: {query_key}={init.query[query_key]!r} does not "
                                     f"take {takes} (it offers: {', '.join(options)}).")
            elif query_key in init.query:
                init.problems.append(f"Link parameter ignored: {query_key}={init.query[query_key]!r} is not loaded "
                                     f"(loaded: {', '.join(options)}).")
            choice = default if default in options else options[0]
        st.session_state[key] = choice

    def fmt(option: str) -> str:
        return f"{titles.get(option, option)} ({option})"

    return st.selectbox(label, options, key=key, format_func=fmt, help=help)


def _remember(init: _Initial, prefix: str, fields: list[FormField]) -> None:
    # Widget state is dropped when the page is left; this copy brings the form back as it was.
    for ff in fields:
        key = f"{prefix}.{ff.name}"
        if key in st.session_state:
            init.memory[key] = st.session_state[key]


def _gib(n: int | float | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def _size(n: int | float | None) -> str:
    """``"850 KB"``, ``"61.4 MB"`` or ``"1.6 GiB"`` (``"unknown"`` for ``None``)."""
    if n is None:
        return "unknown"
    if n < 2**20:
        return f"{n / 2**10:.0f} KB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**30:.2f} GiB"


def _inner_steps(n: int) -> str:
    return f"{n} inner step" + ("" if n == 1 else "s")


def memory_estimate_rows(estimate: dict[str, Any]) -> list[tuple[str, str]]:
    """The analytic memory estimate of a probe result as ``(item, size)`` rows (empty when not modelled)."""
    if not estimate or not estimate.get("modelled"):
        return []
    order = "second order" if estimate.get("second_order") else "first order"
    steps = _inner_steps(estimate["inner_steps"])
    rows = [
        (f"Weights ({int(estimate['parameters']):,} parameters)", _size(estimate["parameter_bytes"])),
        ("Optimizer slots", _size(estimate["optimizer_bytes"])),
        ("Meta-gradient and update", _size(estimate["gradient_bytes"])),
        (f"Batch ({estimate['meta_batch']} tasks)", _size(estimate["batch_bytes"])),
        ("Gradients in flight (backward pass)", _size(estimate.get("transient_bytes", 0))),
        ("Per task: query pass", _size(estimate["query_pass_bytes"])),
        ("Per task: support pass, per inner step", _size(estimate["support_pass_bytes"])),
        (f"Per task, kept for the backward pass ({steps}, {order})",
         _size(estimate["per_task_activation_bytes"])),
        (f"Activations: {estimate['tasks_alive']} of {estimate['meta_batch']} tasks alive at once",
         _size(estimate["activation_bytes"])),
        ("Step", _size(estimate["step_bytes"])),
        ("Step if every task were alive at once", _size(estimate["all_tasks_bytes"])),
        ("Runtime before the step (measured)", _size(estimate["baseline_bytes"])),
        ("Total", _size(estimate["total_bytes"])),
    ]
    return rows


def _memory_estimate_view(estimate: dict[str, Any] | None) -> None:
    """The analytic estimate beside the measured peak: a one-line summary and the breakdown in an expander."""
    if not estimate:
        return
    if not estimate.get("modelled"):
        st.caption(f"Memory estimate: not modelled. {estimate.get('reason', '')}")
        return
    st.caption(
        f"Memory estimate (from the layer shapes, before any step): {_size(estimate['total_bytes'])} in all, "
        f"{_size(estimate['step_bytes'])} for the step: {_size(estimate['per_task_activation_bytes'])} per task "
        f"x {estimate['tasks_alive']} of {estimate['meta_batch']} tasks alive, "
        f"{_inner_steps(estimate['inner_steps'])}. On CPU the measured peak also holds the compiled graph, which the estimate leaves out."
    )
    with st.expander("Memory estimate: breakdown"):
        st.table({"item": [r[0] for r in memory_estimate_rows(estimate)],
                  "size": [r[1] for r in memory_estimate_rows(estimate)]})
        if estimate.get("unmodelled_layers"):
            st.caption("Layer kinds counted as keeping input, output and gradient (not in the model's table): "
                       + ", ".join(estimate["unmodelled_layers"]))


def _duration(seconds: float) -> str:
    """``"850 ms"``, ``"12.3 s"``, ``"4 min 05 s"`` or ``"2 h 03 min"``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def device_label(row: dict[str, Any]) -> str:
    """How a device of ``Services.devices()`` reads in the selector, e.g. ``"GPU:0 — NVIDIA H100, 79.1 GiB"``."""
    text = f"{row['id']} — {row.get('description') or row.get('type', '')}"
    total, free = row.get("memory_bytes"), row.get("memory_available_bytes")
    if total is not None and free is not None and free != total:
        text += f", {_gib(total)} ({_gib(free)} free)"
    elif total is not None or free is not None:
        text += f", {_gib(total if total is not None else free)}"
    return text


def _match_device(value: str, options: list[str]) -> str | None:
    """The option a linked device names ("gpu", "GPU:0", "/device:CPU:0"), or ``None``."""
    name = value.strip().upper().lstrip("/").removeprefix("DEVICE:")
    if name in ("", "AUTO"):
        return "auto"
    if ":" not in name:
        name += ":0"
    return name if name in options else None


#: Seconds between the Train page's checks for the worker's device list while it is being made.
DEVICE_POLL_SECONDS = 2.0


@st.fragment(run_every=DEVICE_POLL_SECONDS)
def _await_devices(svc: Any) -> None:
    """While the device list is being made: a note, and a whole-page rerun once the probe has answered."""
    try:
        ready = svc.devices_listed() is not None
    except ProbeError:
        ready = True
    if ready:
        st.rerun()
    st.caption("Listing the worker's devices (its first TensorFlow import takes a while); "
               "auto and the CPU are offered meanwhile.")


def _device_selector(svc: Any, init: _Initial) -> str:
    """The device select box (the worker's devices, "auto" first); returns the chosen ``RunConfig.device``.

    Never waits for the device probe: until it answers, the box offers auto and the CPU, keeps a linked device
    unchecked, and a fragment reruns the page when the list arrives.
    """
    try:
        rows = svc.devices_listed()
        error = None
    except ProbeError as exc:
        rows, error = [], exc
    pending = rows is None
    unchecked = "not checked yet (listing devices)" if pending else "not checked (the device list is unavailable)"
    labels = {"auto": "auto — TensorFlow's choice (the first GPU if there is one, else the CPU)"}
    labels.update({row["id"]: device_label(row) for row in rows or []})
    if error is not None or pending:
        labels.setdefault("CPU:0", "CPU:0 — the host CPU")
    known = error is None and not pending
    options = list(labels)
    if _DEVICE not in st.session_state:
        choice = init.memory.get(_DEVICE)
        linked = init.query.get("device")
        if choice is None and linked is not None:
            choice = _match_device(linked, options)
            if choice is None and not known:
                # The list is unknown: keep the link's device; the worker checks it and says if it is absent.
                choice = linked
                options.append(linked)
                labels[linked] = f"{linked} — {unchecked}"
            elif choice is None:
                init.problems.append(f"Link parameter ignored: device={linked!r} is not available to the worker "
                                     f"(available: {', '.join(options)}).")
        st.session_state[_DEVICE] = choice if choice in options else "auto"
    elif st.session_state[_DEVICE] not in options:
        kept = st.session_state[_DEVICE]
        matched = _match_device(kept, options)
        if matched is not None:
            st.session_state[_DEVICE] = matched
        elif known:
            init.problems.append(f"Device {kept!r} is not available to the worker (available: "
                                 f"{', '.join(options)}); using auto.")
            st.session_state[_DEVICE] = "auto"
        else:
            options.append(kept)
            labels.setdefault(kept, f"{kept} — {unchecked}")
    choice = st.selectbox("Device", options, key=_DEVICE, format_func=lambda o: labels.get(o, o),
                          help="Where the worker process trains: the devices TensorFlow sees in a worker.")
    if pending:
        _await_devices(svc)
    if error is not None:
        st.warning(f"Could not list the devices; offering auto and the CPU. {str(error).splitlines()[0]}")
        with st.expander("Device probe output"):
            st.code(str(error))
        if st.button("List devices again", key="train.devices_retry"):
            try:
                svc.devices(refresh=True)
            except ProbeError:
                pass
            st.rerun()
    return choice


def _estimate_section(svc: Any, config: RunConfig | None) -> None:
    """The "Estimate" button and the last estimate: parameters, compile, time per step and run, memory, hint."""
    from .pending import await_estimate

    clicked = st.button("Estimate", key="train.estimate", disabled=config is None,
                        help="Runs a few train steps of this setup in a worker process (takes seconds to a minute; "
                             "the same setup again answers at once).")
    if clicked and config is not None:
        # In the background: the page stays usable, and a fragment picks the answer up.
        st.session_state[_ESTIMATE] = {"config": config.model_dump(mode="json"),
                                       "ticket": svc.start_estimate(config)}
    stored = st.session_state.get(_ESTIMATE)
    if not stored:
        return
    if "result" not in stored:
        try:
            answer = svc.estimate_result(stored["ticket"])
        except KeyError:  # forgotten after many newer estimates
            answer = {"ok": False, "error": "This estimate was forgotten; press Estimate again.", "traceback": ""}
        if answer is None:
            await_estimate(svc, stored["ticket"])
            return
        stored["result"] = answer
    result = stored["result"]
    if not result.get("ok"):
        st.error(f"Estimate failed: {result.get('error')}")
        if result.get("traceback"):
            with st.expander("Probe traceback"):
                st.code(result["traceback"])
        return
    steps = config.steps if config is not None else int(result["run_steps"])
    per_step = float(result["seconds_per_step"])
    compile_s = float(result["compile_seconds"])
    memory = result.get("memory") or {}
    estimate = result.get("memory_estimate") or {}
    cols = st.columns(6)
    cols[0].metric("Parameters", f"{int(result['parameters']):,}",
                   help=f"Trainable parameters; every weight: {int(result.get('weights', 0)):,}.")
    cols[1].metric("Compile (first step)", _duration(compile_s))
    cols[2].metric("Per step", _duration(per_step), help=f"{result['meta_batch_size']} tasks per step.")
    cols[3].metric(f"Run, {steps:,} steps", _duration(compile_s + max(steps - 1, 0) * per_step),
                   help="Training steps only: validation and the final meta-test add to this.")
    cols[4].metric("Peak memory", _gib(memory.get("peak_bytes")),
                   help=f"{memory.get('kind', '')}; {_gib(memory.get('available_bytes'))} available.")
    cols[5].metric("Estimated peak", _gib(estimate.get("total_bytes")) if estimate.get("modelled") else "not modelled",
                   help="Analytic: the runtime before the step plus weights, optimizer slots and the activations "
                        "the tasks keep for the backward pass (breakdown below).")
    basis = (f"{result.get('timed_steps', 0)} timed steps after the compile" if not result.get("extrapolated")
             else "one single-task step scaled to the meta-batch (the full step was not tried)")
    st.caption(f"Measured on {result['device']} from {basis}; {_gib(memory.get('available_bytes'))} available.")
    if memory.get("xla_plan_bytes"):
        st.caption(f"XLA's plan for one step (JAX: arguments, outputs and temporaries, exact): "
                   f"{_size(memory['xla_plan_bytes'])}. On JAX the analytic estimate counts every task alive and "
                   "is a guide; this plan is the step's own figure.")
    _memory_estimate_view(estimate)
    if result.get("hint"):
        st.warning(result["hint"])
    elif result.get("second_order") and result.get("fits"):
        st.caption("Second-order MAML fits this device's memory.")
    current = config.model_dump(mode="json") if config is not None else None
    # The steps (and the cadences that scale with them) change the run's length, not a step's time or memory.
    same = {"steps": 0, **{name: 0 for name in CADENCE_FIELDS}}
    if current is None or {**current, **same} != {**stored["config"], **same}:
        st.caption("The setup changed since this estimate: press Estimate again for numbers that match it.")


def _dataset_expander(dataset: str, ds: dict[str, Any], params: dict[str, Any], run_values: dict[str, Any],
                      invalid: bool) -> None:
    """The collapsed "Dataset: sizes and samples" expander: the Datasets page's panel, loaded when asked.

    Loading reads (and may download) the dataset's files, so nothing is loaded until the button is pressed;
    the panel stays until the dataset or its parameters change.
    """
    with st.expander("Dataset: sizes and samples"):
        shown = json.dumps({"id": dataset, "params": params}, sort_keys=True, default=str)
        if st.button("Load and summarise", key="train.dataset_load", disabled=invalid,
                     help="Reads the dataset's files: its size, classes per split and a few images of each."):
            st.session_state[_DATASET_SHOWN] = shown
        if st.session_state.get(_DATASET_SHOWN) != shown:
            st.caption("Press the button to see this dataset's size, classes per split and sample images.")
            return
        episode = None
        if ds["kind"] == "classification":
            defaults = {"ways": 5, "shots": 1, "queries": 15, **(ds.get("episode_defaults") or {})}
            # The form's episode, so a warning says when this dataset cannot serve it.
            episode = tuple(int(run_values.get(n) or defaults[n]) for n in ("ways", "shots", "queries"))
        dataset_panel(dataset, params, episode)


def train() -> None:
    """The Train page."""
    st.title("Train")
    svc = services()
    # The device list costs the worker a TensorFlow import: start it now, while the form is drawn.
    svc.prefetch_devices()
    catalog = svc.catalog()
    datasets, algorithms, backbones = catalog["datasets"], catalog["algorithms"], catalog["backbones"]
    first_load = not st.session_state.get(_LOADED, False)
    query = {k: st.query_params[k] for k in st.query_params}

    init = _Initial(query, first_load, {})
    top = st.columns(3)
    with top[0]:
        dataset = _choose("Dataset", list(datasets), "train.dataset", "dataset", DEFAULT_DATASET, init,
                          {k: v["title"] for k, v in datasets.items()},
                          help="The tasks to meta-learn from (see the Plugins page for details).")
    ds = datasets[dataset]
    with top[1]:
        # Only the algorithms that take the dataset's kind of task (an environment needs a meta-RL algorithm).
        fitting = [a for a in algorithms if ds["kind"] in algorithms[a]["task_kinds"]]
        algorithm = _choose(
            "Algorithm", fitting, "train.algorithm", "algorithm",
            DEFAULT_ALGORITHM if DEFAULT_ALGORITHM in fitting else (fitting or [None])[0], init,
            {k: v["title"] for k, v in algorithms.items()}, help="The meta-learning algorithm (those that take "
            f"{ds['kind']} tasks).", takes=f"{ds['kind']} tasks ({dataset})",
        )
    with top[2]:
        backbone = _choose("Backbone", list(backbones), f"train.backbone.{dataset}", "backbone",
                           ds.get("default_backbone"), init, {k: v["title"] for k, v in backbones.items()},
                           help="The network under the algorithm (default: the dataset's).")
    init.presets = starting_values(svc, dataset, algorithm)
    st.caption(ds["description"])

    run_schema = RunConfig.model_json_schema()
    run_fields = {ff.name: ff for ff in schema_fields(run_schema)}
    episode = {"ways": 5, "shots": 1, "queries": 15, **ds.get("episode_defaults", {})}
    run_prefix = f"train.run.{dataset}.{algorithm}"
    main = [run_fields[n] for n in MAIN_FIELDS if not (n == "ways" and ds["kind"] in ("regression", "environment"))]
    st.subheader("Run")
    run_values, form_errors = render_fields(main, run_prefix, init.for_fields(run_prefix, None, episode), columns=5)
    with st.expander("Schedule and evaluation"):
        advanced, errors = render_fields([run_fields[n] for n in _FORM_ADVANCED_FIELDS], run_prefix,
                                         init.for_fields(run_prefix, None))
        if "train.name" not in st.session_state:
            st.session_state["train.name"] = init.query.get("name", "")
        name = st.text_input("Run name (optional)", key="train.name")
    run_values.update(advanced)
    form_errors += errors

    params: dict[str, dict[str, Any]] = {}
    for section, spec_id, spec in (("algorithm", algorithm, algorithms[algorithm]),
                                   ("dataset", dataset, ds), ("backbone", backbone, backbones[backbone])):
        prefix = f"train.{section}.{dataset}.{spec_id}"
        fields = schema_fields(spec["params"], spec.get("machine"))
        st.subheader(f"{section.capitalize()}: {spec['title']}")
        if spec.get("paper"):
            st.caption(spec["paper"])
        if not fields:
            st.caption("No parameters.")
        params[section], errors = render_fields(fields, prefix,
                                                init.for_fields(prefix, section, spec.get("defaults")),
                                                hide_machine=mode() == "demo")
        form_errors += errors
        if section == "dataset":
            _dataset_expander(dataset, ds, params[section], run_values, invalid=bool(errors))
        _remember(init, prefix, fields)
    _remember(init, run_prefix, main + [run_fields[n] for n in _FORM_ADVANCED_FIELDS])

    st.subheader("Device")
    device = _device_selector(svc, init)
    for key in ("train.dataset", "train.algorithm", f"train.backbone.{dataset}", _DEVICE):
        init.memory[key] = st.session_state[key]
    st.session_state[_LOADED] = True

    raw = {"dataset": dataset, "algorithm": algorithm, "backbone": backbone,
           **{k: v for k, v in run_values.items()}, "device": device,
           **{f"{section}_params": values for section, values in params.items()}}
    flat = config_query_params(raw, catalog)
    if name:
        flat["name"] = name
    st.query_params.from_dict(flat)

    config = None
    for problem in init.problems:
        st.warning(problem)
    st.subheader("Check and launch")
    # Every problem at once: the form's own (text that did not parse) and the configuration's, checked together.
    problems = list(form_errors)
    try:
        # As `metalab train` resolves it: the same recommended values fill what the form leaves empty.
        resolved = svc.resolve(raw, recommended=True)
    except ConfigError as exc:
        problems += str(exc).splitlines()
    except PermissionError as exc:  # AccessError, CapError: the message is the whole explanation
        problems.append(str(exc))
    else:
        config = None if form_errors else resolved
    for line in problems:
        st.error(line)
    if config is not None:
        shape = (f"{config.shots}-shot regression, {config.queries} query points" if ds["kind"] == "regression"
                 else f"{config.ways}-way {config.shots}-shot, {config.queries} queries per class")
        st.success(f"Valid: {algorithms[algorithm]['title']} on {ds['title']}, {shape}, {config.steps} steps, "
                   f"seed {config.seed}; validates every {config.val_every} steps, checkpoints every "
                   f"{config.checkpoint_every}, logs every {config.log_every}.")
        for warning in svc.config_warnings(config):
            st.warning(warning)
    st.caption("The address bar holds this whole setup: share the link to reproduce it.")
    _estimate_section(svc, config)

    active = svc.active_runs()
    limit = svc.settings.max_workers
    full = len(active) >= limit
    if full:
        st.warning(f"{len(active)} of {limit} allowed runs are queued or running (METALAB_MAX_WORKERS); "
                   "wait for one to finish or cancel one.")
    shown = [r for r in active if svc.policy.can_see(svc.actor, r.owner)]
    if shown:
        st.caption("Active runs: " + ", ".join(f"{r.id} ({r.status}, step {r.step}/{r.total_steps})" for r in shown))
    if mode() != "private":
        caps = svc.settings
        st.caption(f"Caps here ({mode()} mode): {caps.max_steps:,} steps per run, {caps.max_runs_per_owner} of your "
                   f"runs at once, " + (f"{caps.max_run_seconds // 60} minutes of training per run (resumable)"
                                        if caps.max_run_seconds else "no time limit") + ".")
    if config is None or full:
        why = (f"fix the {len(problems)} problem{'s' if len(problems) != 1 else ''} listed under Check and launch"
               if config is None else f"{len(active)} of {limit} allowed runs are active")
        st.caption(f"Launch is disabled: {why}.")
    if st.button("Launch", type="primary", disabled=config is None or full, key="train.launch"):
        try:
            run_id = svc.submit(config, name=name or "")
        except PermissionError as exc:  # a cap or a refusal: the message names it
            st.error(str(exc))
        else:
            st.session_state["train.last_run"] = run_id
            st.switch_page(routes.report_page(), query_params={"run": run_id})
    # Lists and tables are left out: a sweep's values are written comma-separated.
    sweepable = {f"run.{n}": v for n, v in run_values.items() if n != "seed" and not isinstance(v, (list, dict))}
    for section, spec_id, spec in (("algorithm", algorithm, algorithms[algorithm]), ("dataset", dataset, ds),
                                   ("backbone", backbone, backbones[backbone])):
        machine = set(spec.get("machine") or {})
        sweepable.update({f"{section}.{n}": v for n, v in params[section].items()
                          if n not in machine and not isinstance(v, (list, dict))})
    _sweep_section(svc, raw, sweepable, disabled=bool(form_errors))


def _sweep_section(svc: Any, raw: dict[str, Any], sweepable: dict[str, Any], disabled: bool) -> None:
    """"Sweep instead": values to try for some of the form's fields and seeds, launched as a sweep (every trial an
    ordinary run, on Ray Tune in a driver process) and watched on the Sweeps page."""
    from metalab.core.services.sweeps import SweepError

    with st.expander("Sweep instead: try several values of some fields, over several seeds"):
        refusal = svc.sweep_refusal()
        if refusal:
            st.caption(refusal)
            return
        chosen = st.multiselect("Fields to sweep", list(sweepable), key="train.sweep.fields",
                                help="Every combination of the values below is a trial (a grid), crossed with the "
                                     "seeds; the form's other values are fixed.")
        grid = {}
        for name in chosen:
            key = f"train.sweep.values.{name}"
            if key not in st.session_state:
                current = sweepable.get(name)
                st.session_state[key] = "" if current is None else encode(current)
            grid[name] = st.text_input(f"{name}: values, comma-separated", key=key)
        cols = st.columns(3)
        seeds = cols[0].text_input("Seeds", value="0-2", key="train.sweep.seeds",
                                   help="Each setting is trained once per seed: 0-4 or 0,3,7. The Sweeps page reports "
                                        "each setting's mean and 95% interval over them.")
        trials = cols[1].number_input("Trials (0: every combination once)", min_value=0, value=0, step=1,
                                      key="train.sweep.trials")
        concurrent = cols[2].number_input("Trials at once (0: as the CPUs allow)", min_value=0, value=0, step=1,
                                          key="train.sweep.concurrent")
        if st.button("Launch sweep", key="train.sweep.launch", disabled=disabled,
                     help="Every combination is checked first; nothing starts if one is invalid."):
            try:
                spec = svc.build_sweep(raw, grid=grid, seeds=seeds.strip() or None, trials=int(trials) or None,
                                       max_concurrent=int(concurrent) or None)
                sweep_id = svc.launch_sweep(spec)
            except (SweepError, PermissionError, ValueError) as exc:  # the message names the field and value
                st.error(svc.redact(str(exc)))
            else:
                st.switch_page(routes.sweeps_page(), query_params={"sweep": sweep_id})
