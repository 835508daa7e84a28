"""The Predict page for a meta-RL run: adapt to a chosen test task, see the returns and where the agent went."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from metalab.core.authoring import testing
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings


def _predict_script() -> None:
    from metalab.dashboard.predict import predict

    predict()


def test_an_environment_run_adapts_to_a_chosen_test_task_in_the_worker(home):
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""),
                                   strict=False)
    config = testing.tiny_config(registry, "metalab.maml_rl", "environment", steps=4,
                                 algorithm_params={"eval_steps": 2})
    run_id = testing.run_tiny(registry, config, load_settings().home, evaluate_before=False).run_id
    at = AppTest.from_function(_predict_script, default_timeout=240).run()
    assert not at.exception and at.selectbox(key="predict.run").value == run_id
    task = at.selectbox(key="predict.task")
    assert len(task.options) == config.test_episodes and task.options[2].startswith("2: goal (")
    assert not at.get("file_uploader") and not at.text_area  # no support set for an environment
    task.set_value(2).run()
    at.button(key="predict.go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.subheader[-1].value.startswith(f"Test task 2 of {config.test_episodes}: goal (")
    returns = at.dataframe[0].value
    assert list(returns["adaptation steps"]) == [0, 1, 2]
    assert at.metric[0].label == "Average return before adapting"
    assert float(at.metric[0].value) == round(float(returns["average return"][0]), 2)
    figure = at.get("plotly_chart")[0].proto.spec
    assert '"goal"' in figure and "after 2 steps" in figure
