"""The Sweeps page: every sweep, and one (``?sweep=<id>``) with its trials by objective, a parallel-coordinates
plot, the best configuration (train it longer, its test-split score) and a seeds view (mean and 95% interval).

Everything comes from the sweep's record and the run store; while a sweep runs, a fragment polls them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import streamlit as st

from metalab.core.reports.sweeps import sweep_parcoords_figure
from metalab.core.services.sweeps import SweepError

from . import routes
from .report import POLL_SECONDS
from .state import services

_STATUS_ICONS = {"created": ":material/hourglass_empty:", "running": ":material/directions_run:",
                 "completed": ":material/check_circle:", "failed": ":material/error:",
                 "interrupted": ":material/warning:"}


def _value(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def sweeps() -> None:
    """The Sweeps page."""
    svc = services()
    ref = st.query_params.get("sweep")
    if ref:
        _sweep(svc, ref)
        return
    st.title("Sweeps")
    rows = svc.sweeps()
    if not rows:
        st.info("No sweeps yet: launch one from the Train page (its \"Sweep instead\" section) or with "
                "`metalab sweep`.")
        return
    records = [{"open": f"sweeps?sweep={r['id']}", "id": r["id"], "status": r["status"], "algorithm": r["algorithm"],
                "dataset": r["dataset"],
                "trials": f"{r['states'].get('completed', 0)} of {r['trials']} completed",
                "objective": f"{r['metric']} ({r['mode']})", "best": r["best"], "best run": r["best_run"],
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))} for r in rows]
    st.dataframe(pd.DataFrame(records), hide_index=True, key="sweeps.table", column_config={
        "open": st.column_config.LinkColumn("open", display_text="open", width=60, pinned=True)})
    st.caption("From a terminal: `metalab sweep list`, `metalab sweep show ID`, `metalab sweep resume ID`.")


def _sweep(svc: Any, ref: str) -> None:
    try:
        status = svc.sweep_status(ref)
    except SweepError as exc:
        st.title("Sweeps")
        st.error(str(exc))
        st.page_link(routes.sweeps_page(), label="All sweeps", icon=":material/arrow_back:")
        return
    sweep_id = status["id"]
    st.title(f"{_STATUS_ICONS.get(status['status'], '')} Sweep {sweep_id}")
    swept = ", ".join(status["swept"]) or "nothing"
    st.caption(f"{status['algorithm']} on {status['dataset']} · objective {status['metric']} ({status['mode']}) · "
               f"{status['trials']} trials · swept: {swept} · {status['status']}")
    st.page_link(routes.sweeps_page(), label="All sweeps", icon=":material/arrow_back:")
    if status["launch_error"]:
        st.error(status["launch_error"])
    if status["status"] in ("created", "running") and not status["launch_error"]:
        _live(sweep_id)
    else:
        if status["status"] == "interrupted":
            st.warning(f"The sweep's driver stopped before every trial ended; `metalab sweep resume {sweep_id}` "
                       "continues it (finished trials are not run again).")
        _trials(svc, sweep_id, status)
    _best(svc, sweep_id, status)
    _seeds(svc, sweep_id, status)


@st.fragment(run_every=POLL_SECONDS)
def _live(sweep_id: str) -> None:
    """While the sweep runs: its progress, trials and plot, polled from its record; reruns the page when it ends."""
    svc = services()
    status = svc.sweep_status(sweep_id)
    if status["status"] not in ("created", "running") or status["launch_error"]:
        st.rerun()
    done = sum(n for state, n in status["states"].items() if state in ("completed", "failed", "stopped"))
    total = max(int(status["trials"]), 1)
    text = ("Starting the sweep's driver (Ray and the first trials take a while)" if status["status"] == "created"
            else f"{done} of {total} trials finished · " + ", ".join(
                f"{n} {state}" for state, n in sorted(status["states"].items())))
    st.progress(min(1.0, done / total), text=text)
    _trials(svc, sweep_id, status)
    st.caption(f"Updated {time.strftime('%H:%M:%S')}; polling the sweep's record every {POLL_SECONDS:g} s.")


def _trials(svc: Any, sweep_id: str, status: dict[str, Any]) -> None:
    trials = svc.sweep_trials(sweep_id)
    st.subheader("Trials by objective")
    if not trials:
        st.info("No trial has started yet.")
        return
    metric = status["metric"]
    records = [{"rank": i, "report": f"report?run={t['run']}" if t["run"] else None, "trial": t["trial"],
                "state": t["state"], metric: t["objective"],
                **{name: json.dumps(v) if isinstance(v, (list, dict)) else v for name, v in t["params"].items()},
                "test": t["test"], "test ci95": t["test_ci95"], "step": t["step"], "run": t["run"]}
               for i, t in enumerate(trials, 1)]
    st.dataframe(pd.DataFrame(records), hide_index=True, key=f"sweep.trials.{len(trials)}", column_config={
        "report": st.column_config.LinkColumn("report", display_text="open", width=60, pinned=True)})
    st.caption(f"Best {metric} first ({status['mode']}); `test` is the run's meta-test score on the test split "
               "(its canonical protocol), once the run has one.")
    if any(t["objective"] is not None for t in trials):
        fig = sweep_parcoords_figure(trials, status["swept"], metric, status["mode"])
        st.plotly_chart(fig, key="sweep-parcoords")


def _best(svc: Any, sweep_id: str, status: dict[str, Any]) -> None:
    st.subheader("Best configuration")
    best = svc.sweep_best(sweep_id)
    if best is None:
        st.info("No trial has completed yet.")
        return
    st.write(f"Trial {best['slot']}, run `{best['run']}`: {status['metric']} {_value(best['objective'])}"
             + ("" if status["status"] in ("completed", "interrupted", "failed") else " (best so far)"))
    st.code(", ".join(f"{k}={json.dumps(v)}" for k, v in best["params"].items()) or "(the fixed values)")
    cols = st.columns(2)
    with cols[0]:
        steps = int(best["config"].get("steps") or 1)
        longer = st.number_input("Steps", min_value=steps + 1, value=max(steps + 1, min(steps * 4, _cap(svc))),
                                 step=max(1, steps), key="sweeps.more_steps",
                                 help="The best configuration as an ordinary run with more meta-training steps "
                                      "(validation and checkpoint cadences scale with them).")
        if st.button("Train this with more steps", type="primary", key="sweeps.train_longer"):
            try:
                run_id = svc.train_best_longer(sweep_id, int(longer))
            except (PermissionError, ValueError, SweepError) as exc:  # a cap, a refusal, a bad value: all named
                st.error(svc.redact(str(exc)))
            else:
                st.switch_page(routes.report_page(), query_params={"run": run_id})
    with cols[1]:
        # Every trial is an ordinary run: it was meta-tested on the test split when it ended (eval_at_end).
        if best["test"] is not None:
            st.metric("Meta-test score (test split)", f"{best['test']:.4g} ± {best['test_ci95']:.2g}",
                      help="Its run's canonical protocol: mean and 95% CI over the test split's fixed episodes.")
        else:
            st.info(f"Run {best['run']} has no test-split score (it ran with eval_at_end off). From a terminal: "
                    f"`metalab eval {best['run']}`.")
        st.page_link(routes.report_page(), label="Evaluate on the test split: the best run's report",
                     query_params={"run": best["run"]}, icon=":material/description:")


def _cap(svc: Any) -> int:
    return int(svc.settings.max_steps) if not svc.actor.on_machine else 10_000_000


def _seeds(svc: Any, sweep_id: str, status: dict[str, Any]) -> None:
    st.subheader("Seeds")
    options = {"objective": f"{status['metric']} (the objective)", "test": "meta-test score (test split)"}
    key = st.segmented_control("Score", list(options), default="objective", format_func=options.get,
                               key="sweeps.seeds_key") or "objective"
    rows = svc.sweep_seeds(sweep_id, key)
    if not rows:
        st.info("No completed trial has this score yet.")
        return
    table = pd.DataFrame([{"setting": r["label"], "n": r["n"], "mean": r["mean"], "95% interval": _interval(r),
                           "± (95%)": r["ci95"], "std": r["std"],
                           "seeds": ", ".join(map(str, r["seeds"]))} for r in rows])
    st.dataframe(table, hide_index=True, key=f"sweeps.seeds.{key}")
    st.caption("Completed trials grouped by every swept value except run.seed: each setting's mean over its seeds "
               "and the 95% interval mean ± t(0.975, n−1)·s/√n (Student's t, s the sample standard deviation). "
               "A setting with one seed has no interval: sweep with several seeds (e.g. 0-4) for a paper's table.")


def _interval(row: dict[str, Any]) -> str:
    if row["ci95"] is None:
        return "– (one seed)"
    return f"[{row['low']:.4g}, {row['high']:.4g}]"
