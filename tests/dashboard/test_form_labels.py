"""Form labels and defaults read as people write them: the schema's titles (or a sensible label made from the
name, never pydantic's "Inner Lr"), integers as integers, lists as lists and an empty default with its meaning."""

from __future__ import annotations

import pytest

from metalab.core.engine.config import RunConfig
from metalab.dashboard.forms import EMPTY_DEFAULT, default_text, human_label, schema_fields


@pytest.mark.parametrize("name, title, label", [
    ("inner_lr", "Inner Lr", "Inner learning rate"),            # pydantic's automatic title
    ("eval_inner_steps", None, "Evaluation inner steps"),
    ("bn_momentum", "Bn Momentum", "Batch-norm momentum"),
    ("sha256", "Sha256", "SHA-256"),
    ("val_classes", "Val Classes", "Validation classes"),
    ("per_step_bn", "Per-step batch norm (MAML++)", "Per-step batch norm (MAML++)"),  # a plugin's own title
])
def test_labels_are_the_schema_titles_or_made_from_the_name(name, title, label):
    assert human_label(name, title) == label


def test_run_fields_have_human_labels_and_readable_defaults():
    fields = {ff.name: ff for ff in schema_fields(RunConfig.model_json_schema())}
    assert fields["eval_at_end"].label == "Meta-test when training ends"
    assert fields["val_every"].label == "Validate every (steps)"
    assert fields["test_episodes"].label == "Meta-test episodes" and default_text(fields["test_episodes"]) == "600"
    # An empty default reads as automatic; where the description explains it, the help does not repeat it.
    assert default_text(fields["ways"]) == EMPTY_DEFAULT
    assert default_text(fields["eval_at_end"]) == "true"
    assert "empty: the dataset's default" in fields["backbone"].help and "Default:" not in fields["backbone"].help


def test_plugin_fields_show_integers_as_integers_and_list_defaults(builtin_registry):
    mlp = builtin_registry.algorithm("metalab.mlp_classifier")
    fields = {ff.name: ff for ff in schema_fields(mlp.params.model_json_schema())}
    assert fields["batch_size"].label == "Batch size" and default_text(fields["batch_size"]) == "64"
    assert fields["hidden"].label == "Hidden layer sizes" and default_text(fields["hidden"]) == "[256, 128]"
    assert fields["lr"].label == "Learning rate" and default_text(fields["lr"]) == "0.001"
    assert "Default: 64." in fields["batch_size"].help
    maml = {ff.name: ff for ff in schema_fields(builtin_registry.algorithm("metalab.maml").params.model_json_schema())}
    assert maml["inner_lr"].label == "Inner learning rate"
    assert maml["eval_inner_steps"].label == "Inner steps at meta-test"


def test_the_plugins_page_table_shows_labels_and_readable_defaults(builtin_registry):
    from metalab.dashboard.pages import _param_table

    table = _param_table(builtin_registry.algorithm("metalab.mlp_classifier").params.model_json_schema())
    rows = table.set_index("name")
    assert rows.loc["batch_size", "default"] == "64" and rows.loc["hidden", "default"] == "[256, 128]"
    assert rows.loc["lr", "label"] == "Learning rate"
    maml = _param_table(builtin_registry.algorithm("metalab.maml").params.model_json_schema()).set_index("name")
    assert maml.loc["meta_batch_size", "default"] == "32" and maml.loc["first_order", "default"] == "false"
    assert not table["default"].isin(["None", "nan", "NaN"]).any()
