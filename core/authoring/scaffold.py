"""Writes a new, ready-to-install metalab plugin package (``metalab new-plugin NAME``).

The package holds a ``pyproject.toml`` declaring the plugin in the ``metalab`` entry-point group, a registration
module with one spec, the spec's implementation (imported lazily), a test that runs metalab's conformance suite
and a README. It installs with ``pip install -e metalab-NAME`` and its test passes as generated.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from metalab.core.contract.specs import PLUGIN_API_VERSION

__all__ = ["KINDS", "PluginNames", "plugin_names", "render_plugin", "new_plugin"]

#: The kinds of plugin the scaffold can write.
KINDS = ("algorithm", "dataset")

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the short name a user gives.

    Attributes:
        name: The short name with ``-`` as ``_`` (``"my_algo"``); also the entry-point and spec name.
        distribution: The pip distribution and folder name (``"metalab-my-algo"``).
        module: The import package (``"metalab_my_algo"``), which is also the plugin's namespace.
        spec_id: ``<namespace>.<name>`` (``"metalab_my_algo.my_algo"``).
        class_name: The implementation's class name (``"MyAlgo"``).
        title: A human title for the spec (``"My Algo"``).
    """

    name: str
    distribution: str
    module: str
    spec_id: str
    class_name: str
    title: str


def plugin_names(name: str) -> PluginNames:
    """Derives the distribution, module, namespace and spec id from a short plugin name.

    Args:
        name: Lowercase letters and digits, words joined by ``-`` or ``_``, starting with a letter (``"myalgo"``,
            ``"my-algo"``). A leading ``metalab-`` or ``metalab_`` is dropped, so ``metalab-myalgo`` works too.

    Returns:
        The :class:`PluginNames`.

    Raises:
        ValueError: If the name is not of that form.
    """
    short = name.strip()
    for prefix in ("metalab-", "metalab_"):
        if short.startswith(prefix):
            short = short[len(prefix):]
    if not _NAME_RE.match(short):
        raise ValueError(
            "A plugin name is lowercase letters and digits, words joined by '-' or '_', starting with a letter "
            f"(e.g. 'myalgo' or 'my-algo'). Received: name={name!r}"
        )
    words = re.split(r"[-_]", short)
    snake = "_".join(words)
    module = f"metalab_{snake}"
    return PluginNames(
        name=snake,
        distribution=f"metalab-{'-'.join(words)}",
        module=module,
        spec_id=f"{module}.{snake}",
        class_name="".join(word.capitalize() for word in words),
        title=" ".join(word.capitalize() for word in words),
    )


def render_plugin(name: str, kind: str = "algorithm") -> dict[str, str]:
    """Returns the files of a new plugin package as ``{relative path: text}``, without writing anything.

    Args:
        name: The short plugin name (see :func:`plugin_names`).
        kind: ``"algorithm"`` (a first-order MAML to build on) or ``"dataset"`` (a procedurally generated
            few-shot image dataset).

    Returns:
        Paths relative to the package folder ``metalab-NAME/``, with their contents.

    Raises:
        ValueError: If ``name`` or ``kind`` is invalid.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
    names = plugin_names(name)
    values = {
        "name": names.name,
        "distribution": names.distribution,
        "module": names.module,
        "spec_id": names.spec_id,
        "cls": names.class_name,
        "title": names.title,
        "api": PLUGIN_API_VERSION,
        "kind": kind,
        "impl": "algorithm" if kind == "algorithm" else "data",
        "hook": "metalab_register_algorithms" if kind == "algorithm" else "metalab_register_datasets",
    }
    templates = _ALGORITHM_FILES if kind == "algorithm" else _DATASET_FILES
    files = {"pyproject.toml": _PYPROJECT, "README.md": _README_COMMON + templates["README.md"], ".gitignore": _GITIGNORE}
    files.update({path: text for path, text in templates.items() if path != "README.md"})
    rendered = {}
    for path, text in files.items():
        rendered[string.Template(path).substitute(values)] = string.Template(text).substitute(values)
    return rendered


def new_plugin(name: str, *, kind: str = "algorithm", dest: str | Path = ".") -> Path:
    """Writes a new plugin package ``metalab-NAME/`` under ``dest``.

    Args:
        name: The short plugin name (see :func:`plugin_names`).
        kind: ``"algorithm"`` or ``"dataset"``.
        dest: The folder to create the package folder in (created if missing).

    Returns:
        The path of the new package folder.

    Raises:
        ValueError: If ``name`` or ``kind`` is invalid.
        FileExistsError: If the package folder already exists (nothing is overwritten).
    """
    files = render_plugin(name, kind)
    root = Path(dest) / plugin_names(name).distribution
    if root.exists():
        raise FileExistsError(
            f"{root} already exists; choose another name or --dest, or remove it. Received: dest={str(dest)!r}"
        )
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------------------
# Templates (string.Template: $name placeholders; a literal dollar sign would be $$).

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "$title: a metalab $kind plugin."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["metalab"]

[project.optional-dependencies]
test = ["pytest>=8"]

# metalab finds the plugin through this entry point. The distribution name fixes the plugin's namespace:
# every spec id must start with "$module." (the distribution name, lowercased, "-" as "_").
[project.entry-points.metalab]
$name = "$module"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
dist/
.pytest_cache/
'''

_README_COMMON = '''\
# $distribution

A metalab $kind plugin providing `$spec_id`, written by `metalab new-plugin $name --kind $kind`.
The plugin authors' guide is metalab's `docs/plugins.md`.

## Install and check

```bash
pip install -e .                  # into the environment where metalab is installed
metalab plugins list              # lists $spec_id (a failed plugin is listed with its error)
pytest                            # metalab's conformance suite on this plugin
```

Set `METALAB_STRICT_PLUGINS=1` while developing: a plugin that fails to load then stops metalab with the error
instead of being skipped.

## Layout

| file | what |
| --- | --- |
| `pyproject.toml` | the distribution `$distribution` and its entry point in the group `metalab` |
| `src/$module/__init__.py` | the registration: `METALAB_PLUGIN_API`, the parameter model, the spec, the hook. Imports no deep-learning framework, so listing plugins stays fast. |
| `src/$module/$impl.py` | the implementation, imported only by the spec's factory |
| `tests/test_$name.py` | tests using `metalab.core.authoring.testing` |

## Publish

```bash
python -m pip install build twine && python -m build && python -m twine upload dist/*
```

Users then `pip install $distribution` and the $kind appears in `metalab plugins list` and on the dashboard.
'''

# -- algorithm ---------------------------------------------------------------------------------------------

_ALGORITHM_INIT = '''\
"""$title, a metalab algorithm plugin (registration only: importing this module loads no TensorFlow or Keras).

metalab imports this module through the entry point in pyproject.toml and calls the hook at the bottom. The
implementation in algorithm.py imports Keras; the spec's factory imports it when a run builds the algorithm.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from metalab.core.contract.specs import AlgorithmSpec, Params, TaskSpec, hookimpl

#: The plugin API version this plugin is written for; metalab loads it under any version of the same major.
METALAB_PLUGIN_API = "$api"


class ${cls}Params(Params):
    """The parameters users set with ``--set name=value`` or the dashboard's form; each needs a default."""

    inner_lr: float = Field(0.1, gt=0, le=10, description="Step size of the inner gradient steps.")
    inner_steps: int = Field(1, ge=1, le=100, description="Inner steps on each task's support set in meta-training.")
    eval_inner_steps: int = Field(5, ge=0, le=1000, description="Inner steps when adapting at test time.")
    meta_batch_size: int = Field(4, ge=1, le=1024, description="Tasks per meta-update.")
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the meta-update.")


def _make(params: ${cls}Params, task: TaskSpec) -> Any:
    from metalab.core.algorithm import $cls

    return $cls(params, task)


SPEC = AlgorithmSpec(
    id="$spec_id",
    title="$title",
    description=(
        "First-order MAML: adapts the weights to each task's support set with a few gradient steps, then moves "
        "the initialisation along the query-loss gradient at the adapted weights."
    ),
    params=${cls}Params,
    factory=_make,
    paper="Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)",
    # The code also handles regression; declare "regression" once defaults that learn it are chosen, since
    # metalab's conformance suite checks every task kind a spec declares.
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]
'''

_ALGORITHM_IMPL = '''\
"""$title: first-order MAML (Finn et al. 2017, section 5.2), a starting point for your own algorithm.

For each task of a meta-batch the weights are adapted to its support set by a few gradient steps whose
gradients are treated as constants (first order); the meta-gradient is the query-loss gradient at the adapted
weights, averaged over the tasks, and Adam applies it. metalab's runner owns the loop, compilation, logging,
checkpoints and evaluation: an algorithm only computes meta-gradients and adapts to tasks. Differentiate with
``metalab.core.engine.functional.value_and_grad`` and call the model with explicit weights through ``FunctionalModel``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.core.engine import functional
from metalab.core.contract.specs import TaskBatch, TaskSpec


class $cls:
    """First-order MAML on the run's backbone with a linear head.

    Args:
        params: A validated ``${cls}Params``.
        task: What the tasks look like: kind, input shape, output size, episode shape, and ``make_backbone``.
    """

    def __init__(self, params: Any, task: TaskSpec):
        self.config = params
        self.task = task
        self.meta_batch_size = int(params.meta_batch_size)
        self.model = keras.Sequential(
            [keras.Input(tuple(task.input_shape)), task.make_backbone(), keras.layers.Dense(task.output_dim)]
        )
        self.fmodel = functional.FunctionalModel(self.model)

    @property
    def trainable_variables(self) -> list[Any]:
        return self.fmodel.trainable_variables

    @property
    def variables(self) -> list[Any]:
        return list(self.model.variables)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns the outer-loop optimizer; the runner builds it and applies the meta-gradients."""
        return keras.optimizers.Adam(learning_rate=self.config.outer_lr)

    def score(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any, Any]:
        """Returns ``(loss, metric, outputs)`` on one task: cross-entropy and accuracy, or the MSE twice."""
        outputs = self.fmodel(weights, x, training=True)
        if self.task.kind == "classification":
            labels = ops.cast(y, "int32")
            loss = ops.mean(ops.sparse_categorical_crossentropy(labels, outputs, from_logits=True))
            hits = ops.equal(ops.cast(ops.argmax(outputs, axis=-1), "int32"), labels)
            return loss, ops.mean(ops.cast(hits, outputs.dtype)), outputs
        loss = ops.mean(ops.square(outputs - ops.cast(y, outputs.dtype)))
        return loss, loss, outputs

    def adapt(self, weights: list[Any], x: Any, y: Any, steps: int) -> list[Any]:
        """Returns the weights after ``steps`` gradient steps on one task's support set ``(x, y)``."""
        for _ in range(steps):
            _, grads = functional.value_and_grad(lambda w: self.score(w, x, y)[0], weights)
            # First order: no second derivatives through the inner steps (drop this line for full MAML).
            grads = functional.stop_gradient(grads)
            weights = [w - ops.cast(self.config.inner_lr, w.dtype) * g for w, g in zip(weights, grads)]
        return weights

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns gradients aligned with ``trainable_variables`` and the metrics (``loss``, ``accuracy``)."""
        sx, sy, qx, qy = self._tensors(batch)

        def meta_loss(theta: list[Any]) -> tuple[Any, Any]:
            losses, metrics = [], []
            for t in range(sx.shape[0]):
                fast = self.adapt(theta, sx[t], sy[t], self.config.inner_steps)
                loss, metric, _ = self.score(fast, qx[t], qy[t])
                losses.append(loss)
                metrics.append(metric)
            return ops.mean(ops.stack(losses)), ops.mean(ops.stack(metrics))

        (loss, metric), grads = functional.value_and_grad(meta_loss, self.fmodel.params(), has_aux=True)
        metrics = {"loss": loss}
        if self.task.kind == "classification":
            metrics["accuracy"] = metric
        return grads, metrics

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts to each task's support set and scores its query set.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, eval_inner_steps + 1]`` (the
            query accuracy or MSE after 0, 1, ... inner steps) and ``predictions`` (query outputs).
        """
        sx, sy, qx, qy = self._tensors(batch)
        theta = functional.stop_gradient(self.fmodel.params())
        losses, metrics, curves, predictions = [], [], [], []
        for t in range(sx.shape[0]):
            weights, curve = theta, []
            for step in range(self.config.eval_inner_steps + 1):
                loss, metric, outputs = self.score(weights, qx[t], qy[t])
                curve.append(metric)
                if step < self.config.eval_inner_steps:
                    weights = self.adapt(weights, sx[t], sy[t], 1)
            losses.append(loss)
            metrics.append(metric)
            curves.append(ops.stack(curve))
            predictions.append(outputs)
        result = {"loss": ops.stack(losses), "curve": ops.stack(curves), "predictions": ops.stack(predictions)}
        if self.task.kind == "classification":
            result["accuracy"] = ops.stack(metrics)
        return result

    def _tensors(self, batch: TaskBatch) -> tuple[Any, Any, Any, Any]:
        dtype = self.model.compute_dtype
        label_dtype = "int32" if self.task.kind == "classification" else dtype
        return (
            ops.convert_to_tensor(batch.support_x, dtype=dtype),
            ops.convert_to_tensor(batch.support_y, dtype=label_dtype),
            ops.convert_to_tensor(batch.query_x, dtype=dtype),
            ops.convert_to_tensor(batch.query_y, dtype=label_dtype),
        )
'''

_ALGORITHM_TEST = '''\
"""metalab's conformance suite on $spec_id: it learns, resumes exactly from a checkpoint, and is deterministic.

Each check trains a tiny model on metalab's embedded datasets (digits for classification, sinusoids for
regression) on the CPU, for every task kind the spec declares; run ``pytest``.
"""

import pytest

from metalab.core.authoring import testing
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

DISTRIBUTION = "$distribution"
ALGORITHM = "$spec_id"


def make_registry():
    """metalab's built-ins (the tiny datasets and backbones) and this plugin, whatever else is installed."""
    registry = make_plugin_manager(
        distributions={"metalab", DISTRIBUTION}, settings=load_settings(disable_plugins=""), strict=False
    )
    mine = [record for record in registry.plugins if record.package == DISTRIBUTION]
    assert mine, f"{DISTRIBUTION} is not installed: run `pip install -e .` in its folder"
    for record in mine:
        assert record.status == "loaded", f"{record.name} did not load: {record.error}\\n{record.traceback}"
    return registry


@pytest.fixture(scope="module")
def registry():
    return make_registry()


def test_learns(registry, tmp_path):
    for kind in testing.supported_kinds(registry, ALGORITHM):
        testing.check_learns(ALGORITHM, tmp_path / kind, registry=registry, kind=kind)


def test_resumes_exactly(registry, tmp_path):
    testing.check_resume(ALGORITHM, tmp_path, registry=registry)


def test_same_seed_same_numbers(registry, tmp_path):
    testing.check_deterministic(ALGORITHM, tmp_path, registry=registry)
'''

_ALGORITHM_README = '''
## The algorithm

`src/$module/algorithm.py` is first-order MAML, a working starting point: replace `adapt`, `meta_gradients`
and `evaluate` with your algorithm, and the parameter model in `__init__.py` with its parameters.
`meta_gradients(batch)` returns gradients aligned with `trainable_variables` and metrics (`loss`, and
`accuracy` for classification); `evaluate(batch)` returns per-task `loss` and `accuracy` (and a `curve` for
gradient-based algorithms). Write the maths with `keras.ops`, differentiate with
`metalab.core.engine.functional.value_and_grad`, and call models with explicit weights through
`metalab.core.engine.functional.FunctionalModel`.

The spec declares classification only: the code handles regression too, but metalab's conformance suite
checks every declared task kind, and these defaults are tuned for classification. Add `"regression"` to
`task_kinds` once `pytest` passes with it.

```bash
metalab train -d metalab.digits -a $spec_id --steps 500
metalab train -d metalab.omniglot -a $spec_id --set inner_lr=0.4 --set ways=5 --set shots=1
```
'''

_ALGORITHM_FILES = {
    "src/$module/__init__.py": _ALGORITHM_INIT,
    "src/$module/algorithm.py": _ALGORITHM_IMPL,
    "tests/test_$name.py": _ALGORITHM_TEST,
    "README.md": _ALGORITHM_README,
}

# -- dataset -----------------------------------------------------------------------------------------------

_DATASET_INIT = '''\
"""$title, a metalab dataset plugin (registration only: importing this module reads no files).

metalab imports this module through the entry point in pyproject.toml and calls the hook at the bottom. The
spec's factory, not the hook, builds the data (here: generates it; a real dataset reads its files there).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from metalab.core.contract.specs import DataContext, DatasetSpec, Params, hookimpl

#: The plugin API version this plugin is written for; metalab loads it under any version of the same major.
METALAB_PLUGIN_API = "$api"


class ${cls}Params(Params):
    """The parameters users set with ``--set dataset.name=value`` or the dashboard's form."""

    train_classes: int = Field(32, ge=1, le=10_000, description="Classes in the meta-training split.")
    val_classes: int = Field(8, ge=1, le=10_000, description="Classes in the validation split.")
    test_classes: int = Field(16, ge=1, le=10_000, description="Classes in the meta-test split.")
    samples_per_class: int = Field(20, ge=2, le=1000, description="Images per class.")
    size: int = Field(8, ge=2, le=64, description="Height and width of the images, in pixels.")
    noise: float = Field(0.1, ge=0, le=0.5, description="Chance that a pixel of an image differs from its class's pattern.")
    seed: int = Field(0, ge=0, description="Seed of the generator: the same seed gives the same dataset.")


def _make(params: ${cls}Params, context: DataContext) -> Any:
    from metalab.core.data import make_dataset

    return make_dataset(params)


SPEC = DatasetSpec(
    id="$spec_id",
    title="$title",
    description=(
        "Procedurally generated few-shot images: each class is a random binary pattern, each image a copy of "
        "its class's pattern with some pixels flipped. Disjoint classes in train, val and test; no files."
    ),
    params=${cls}Params,
    factory=_make,
    kind="classification",
    default_backbone="metalab.mlp",
    episode_defaults={"ways": 5, "shots": 1, "queries": 5},
)


@hookimpl
def metalab_register_datasets() -> list[DatasetSpec]:
    return [SPEC]
'''

_DATASET_IMPL = '''\
"""Generates the $title dataset: random binary patterns, one per class, observed through pixel-flip noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from metalab.core.contract.specs import ClassificationDataset, ClassSplit


def make_dataset(params: Any) -> ClassificationDataset:
    """Builds the three splits from ``params`` (a ``${cls}Params``).

    Returns:
        A ``ClassificationDataset`` of ``uint8 [n, size, size, 1]`` images (0 or 255, ``scale=255``) whose
        splits have disjoint classes.
    """
    rng = np.random.default_rng(params.seed)
    shape = (params.size, params.size)
    splits = {}
    for split, count in (("train", params.train_classes), ("val", params.val_classes), ("test", params.test_classes)):
        patterns = rng.random((count, *shape)) < 0.5
        flips = rng.random((count, params.samples_per_class, *shape)) < params.noise
        images = (patterns[:, None] ^ flips).astype(np.uint8) * np.uint8(255)
        splits[split] = ClassSplit(
            images=images.reshape(count * params.samples_per_class, *shape, 1),
            labels=np.repeat(np.arange(count), params.samples_per_class),
            class_names=[f"{split}/pattern{i:04d}" for i in range(count)],
        )
    return ClassificationDataset(
        splits=splits,
        input_shape=(*shape, 1),
        scale=255.0,
        info={"generator": "$spec_id", "seed": int(params.seed), "noise": float(params.noise)},
    )
'''

_DATASET_TEST = '''\
"""Tests of $spec_id: the splits are well formed, and an algorithm trained on it learns.

The training check uses metalab's conformance helpers (``metalab.core.authoring.testing``) on the CPU; run ``pytest``.
"""

import numpy as np

from metalab.core.authoring import testing
from metalab.core.engine.config import resolve_config
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

DISTRIBUTION = "$distribution"
DATASET = "$spec_id"


def make_registry():
    """metalab's built-ins (algorithms and backbones) and this plugin, whatever else is installed."""
    registry = make_plugin_manager(
        distributions={"metalab", DISTRIBUTION}, settings=load_settings(disable_plugins=""), strict=False
    )
    mine = [record for record in registry.plugins if record.package == DISTRIBUTION]
    assert mine, f"{DISTRIBUTION} is not installed: run `pip install -e .` in its folder"
    for record in mine:
        assert record.status == "loaded", f"{record.name} did not load: {record.error}\\n{record.traceback}"
    return registry


def test_splits_have_disjoint_classes_and_the_declared_shape():
    spec = make_registry().dataset(DATASET)
    params = spec.params()
    dataset = spec.factory(params, load_settings().data_context())
    assert set(dataset.splits) == {"train", "val", "test"}
    names = [name for split in dataset.splits.values() for name in split.class_names]
    assert len(names) == len(set(names))
    for split in dataset.splits.values():
        assert split.images.shape[1:] == tuple(dataset.input_shape) and split.images.dtype == np.uint8
        counts = np.bincount(split.labels, minlength=split.num_classes)
        assert (counts == params.samples_per_class).all()
    again = spec.factory(params, load_settings().data_context())
    np.testing.assert_array_equal(again.splits["test"].images, dataset.splits["test"].images)


def test_an_algorithm_learns_on_it(tmp_path):
    registry = make_registry()
    config = resolve_config(registry, {
        "dataset": DATASET, "algorithm": "metalab.protonet", "ways": 5, "shots": 1, "queries": 5, "steps": 40,
        "val_every": 40, "val_episodes": 10, "test_episodes": 40, "checkpoint_every": 40, "log_every": 5,
    })
    result = testing.run_tiny(registry, config, tmp_path)
    assert result.last_loss < result.first_loss
    assert result.after["accuracy"] > 1 / config.ways + 0.15
'''

_DATASET_README = '''
## The dataset

`src/$module/data.py` generates the data: replace it with your loader. The factory gets the validated
parameters and a `DataContext`: read your files from `context.data_dir` (metalab's `METALAB_DATA_DIR`), cache
decoded arrays in `context.cache_dir`, download only when `context.allow_download` is true, and when files are
missing raise `FileNotFoundError` naming them and where to put them. Return a `ClassificationDataset` (three
splits of `uint8` images with disjoint classes) or, for regression, a `RegressionTaskFamily`.

```bash
metalab train -d $spec_id -a metalab.protonet --steps 500
metalab train -d $spec_id -a metalab.maml --set ways=5 --set shots=5 --set dataset.noise=0.2
```
'''

_DATASET_FILES = {
    "src/$module/__init__.py": _DATASET_INIT,
    "src/$module/data.py": _DATASET_IMPL,
    "tests/test_$name.py": _DATASET_TEST,
    "README.md": _DATASET_README,
}
