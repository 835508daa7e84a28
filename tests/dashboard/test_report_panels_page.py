"""The Run report page shows the panels plugins contribute through the metalab_report_panels hook."""

from __future__ import annotations

import json

from .conftest import SINUSOID_CONFIG, make_completed_run


def test_meta_sgd_run_shows_the_learned_rates_panel(page, store, figures):
    config = {**SINUSOID_CONFIG, "algorithm": "metalab.metasgd", "algorithm_params": {"inner_lr_init": 0.01}}
    run_id = make_completed_run(store, config=config)
    path = store.run_dir(run_id) / "report_data.json"
    data = json.loads(path.read_text())
    data["metalab.metasgd"] = {"init": 0.01, "layers": [{
        "name": "metasgd/head/kernel", "shape": [40, 1], "count": 40, "mean": 0.02, "std": 0.01, "min": -0.01,
        "median": 0.02, "max": 0.05, "negative": 0.05, "edges": [-0.01, 0.02, 0.05], "counts": [10, 30]}]}
    path.write_text(json.dumps(data))
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert "Learned inner learning rates" in [h.value for h in at.subheader]
    rates = next(s for s in figures(at) if (s["layout"].get("title") or {}).get("text", "").startswith("Meta-SGD"))
    assert [t["y"] for t in rates["data"] if t["type"] == "bar"] == [[10, 30]]
    assert any("`metasgd/head/kernel`" in m.value for m in at.markdown)
    assert not at.warning
