"""The one module a metalab plugin author imports: the hook marker, the spec types and the protocols.

Importing this module is cheap (no TensorFlow, no Keras): plugin registration must stay light so that the
dashboard can list plugins without loading a deep-learning framework. Plugin implementations import Keras
lazily, inside their factories.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import pluggy
import pydantic

from metalab.core.contract.factories import SpecFactory, factory_problem, wrap_factory
from metalab.core.contract.params import params_problem

__all__ = [
    "PLUGIN_API_VERSION",
    "hookimpl",
    "Params",
    "AlgorithmSpec",
    "DatasetSpec",
    "BackboneSpec",
    "TaskSpec",
    "TaskBatch",
    "Benchmark",
    "LoadedRun",
    "DataContext",
    "ClassSplit",
    "ClassificationDataset",
    "RegressionTaskFamily",
    "EnvironmentTaskFamily",
    "TASK_KINDS",
    "Algorithm",
    "ReportPanel",
    "PublishedResult",
    "MEMORY_MODELS",
    "TINY_TASK_FIELDS",
    "SPLITS",
    "DataPath",
    "DownloadURL",
    "Checksum",
    "RunRef",
    "MACHINE_KINDS",
    "machine_params",
]

#: The plugin API version this metalab provides. A plugin states the version it targets in a module attribute
#: ``METALAB_PLUGIN_API = "1.0"``; a plugin whose major differs is refused, any minor of the same major loads.
PLUGIN_API_VERSION = "1.8"

#: The marker a plugin applies to its hook implementations: ``@hookimpl def metalab_register_algorithms(): ...``.
hookimpl = pluggy.HookimplMarker("metalab")

#: The meta-splits every dataset provides (disjoint classes for classification datasets).
SPLITS = ("train", "val", "test")

#: The kinds of task a dataset provides and an algorithm declares in ``task_kinds``: labelled episodes
#: (``"classification"``), point sets of a function (``"regression"``) and, since API 1.8, environments an agent acts
#: in (``"environment"``: an :class:`EnvironmentTaskFamily`, for meta-reinforcement learning).
TASK_KINDS = ("classification", "regression", "environment")

_ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")

#: The step-memory models of the memory estimate an algorithm can name in ``AlgorithmSpec.memory_model`` (since API
#: 1.4): ``"maml"`` (an inner loop through the whole network, differentiated to second order unless the params'
#: ``first_order`` is set; MAML, Meta-SGD), ``"anil"`` (an inner loop on a linear head over the backbone's features)
#: and ``"protonet"`` (one forward and backward pass per episode, no inner loop).
MEMORY_MODELS = ("maml", "anil", "protonet")

#: The run-config fields a ``DatasetSpec.tiny_task`` may set (since API 1.4).
TINY_TASK_FIELDS = ("backbone", "backbone_params", "dataset_params", "ways", "shots", "queries")


#: The JSON-schema key that marks a parameter touching the machine (its value is one of :data:`MACHINE_KINDS`).
MACHINE_KEY = "x-metalab-machine"
#: What a machine-touching parameter names: a server path, a download URL, a file checksum, or another run.
MACHINE_KINDS = ("data_path", "download_url", "checksum", "run_ref")


def _machine(kind: str) -> Any:
    return pydantic.Field(json_schema_extra={MACHINE_KEY: kind})


#: A parameter naming a file or folder on the server (since API 1.3). Core checks it where it enters: it must
#: resolve, symlinks included, inside ``METALAB_DATA_DIR`` or the caller's upload area; it is never read from a
#: link's query parameters, and a ``demo`` dashboard hides it. Declare ``path: DataPath = Field("", ...)``.
DataPath = Annotated[str, _machine("data_path")]
#: A parameter naming a URL to download from (since API 1.3). Only ``https``/``http`` URLs are fetched, redirects
#: to other hosts are refused, files land in the cache folder only, and outside ``private`` mode only the URLs the
#: plugin declares in its spec's ``downloads`` are fetched.
DownloadURL = Annotated[str, _machine("download_url")]
#: A parameter holding a file's sha256 (since API 1.3); fixed to its default outside ``private`` mode.
Checksum = Annotated[str, _machine("checksum")]
#: A parameter naming another run by id (since API 1.3), e.g. a distillation teacher; outside ``private`` mode only
#: the caller's own runs and showcase runs may be named.
RunRef = Annotated[str | None, _machine("run_ref")]

_NAME_HINTS = {"path": "data_path", "dir": "data_path", "folder": "data_path", "file": "data_path",
               "url": "download_url", "uri": "download_url", "sha256": "checksum", "checksum": "checksum",
               "md5": "checksum"}


def machine_params(model: type[pydantic.BaseModel]) -> dict[str, str]:
    """The parameters of a plugin's model that touch the machine, ``{name: kind}``.

    A field declared with :data:`DataPath`, :data:`DownloadURL`, :data:`Checksum` or :data:`RunRef` has its kind;
    an undeclared string field whose name says it holds a path, a URL or a checksum (``path``, ``cub_path``,
    ``data_dir``, ``url``, ``sha256``, ...) is treated as one too, so a plugin written before API 1.3 is safe.

    Args:
        model: A :class:`Params` subclass.

    Returns:
        ``{field name: kind}`` with kinds from :data:`MACHINE_KINDS`.
    """
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind = extra.get(MACHINE_KEY)
        if kind is None and info.annotation in (str, str | None):
            for part in name.lower().split("_"):
                if part in _NAME_HINTS:
                    kind = _NAME_HINTS[part]
                    break
        if kind in MACHINE_KINDS:
            found[name] = kind
    return found


class Params(pydantic.BaseModel):
    """Base class for a plugin's parameter model.

    Declare each parameter as a pydantic field with a default, a range (``ge``/``gt``/``le``/``lt``), a
    ``description`` (shown by ``metalab plugins show`` and the dashboard) and, for choices, a ``Literal`` type.
    Unknown parameter names are refused. A default outside its own range, or a type without a JSON schema, fails
    the plugin when it loads.

    Example:
        class MAMLParams(Params):
            inner_lr: float = Field(0.4, gt=0, le=10, description="Inner-loop step size (alpha).")
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _check_common(spec: Any, kind: str) -> None:
    if not isinstance(spec.id, str) or not _ID_RE.match(spec.id):
        raise ValueError(
            f"{kind} id must look like '<plugin>.<name>' (lowercase letters, digits, underscores). "
            f"Received: id={spec.id!r}"
        )
    if not isinstance(spec.title, str) or not spec.title.strip():
        raise ValueError(f"{kind} {spec.id!r} needs a non-empty title. Received: title={spec.title!r}")
    if not (isinstance(spec.params, type) and issubclass(spec.params, pydantic.BaseModel)):
        raise ValueError(
            f"{kind} {spec.id!r}: params must be a pydantic model class (subclass metalab.core.contract.specs.Params). "
            f"Received: params={spec.params!r}"
        )
    problem = params_problem(spec.params, f"{kind} {spec.id!r}")  # defaults within range, a JSON schema
    if problem is not None:
        raise ValueError(problem)
    problem = factory_problem(spec.factory)
    if problem is not None:
        target = getattr(spec.factory, "target", spec.factory)
        raise ValueError(f"{kind} {spec.id!r}: factory {problem}. Received: factory={target!r}")


@dataclass(frozen=True)
class PublishedResult:
    """A score a paper reports, which the report sets beside a run's whose protocol matches (since API 1.4).

    Declared in ``DatasetSpec.published_results`` (the dataset's papers) or ``AlgorithmSpec.published_results`` (an
    algorithm's paper, on any dataset). A run matches when it is on ``dataset`` with every parameter of
    ``dataset_params`` at that value (its defaults filled in) and, unless they are ``None``, ``ways`` and ``shots``
    are the run's; the report marks the row as the run's own method when the run's algorithm is ``algorithm`` with
    every parameter of ``algorithm_params`` at that value.

    Args:
        method: The method as the paper names it, e.g. ``"first-order MAML"``.
        citation: Authors, year, title and table, e.g. ``"Finn, Abbeel and Levine 2017, ... (ICML), Table 1"``.
        value: The score as the paper gives it: accuracy in percent, or the mean squared error.
        ci95: Half-width of its 95% confidence interval, or ``None`` when the paper gives none.
        metric: ``"accuracy"`` (percent) or ``"mse"``.
        ways: The episode's classes (``None``: any, e.g. a benchmark's own fixed tasks).
        shots: Support examples per class (``None``: any).
        dataset: The dataset id; on a ``DatasetSpec`` leave it empty (the spec's own id).
        dataset_params: The dataset parameters the paper's protocol fixes, e.g. ``{"image_size": 28}``.
        algorithm: The algorithm id that produced the score, or ``""`` for a reference that is no algorithm of
            metalab (people, another paper's method).
        algorithm_params: The parameters that make this variant, e.g. ``{"first_order": True}``.
        benchmark: The named task set of ``ClassificationDataset.benchmarks`` it was measured on (``metalab eval
            RUN --benchmark NAME``), or ``None`` for the dataset's test split under the run's episode shape.
    """

    method: str
    citation: str
    value: float
    ci95: float | None = None
    metric: Literal["accuracy", "mse"] = "accuracy"
    ways: int | None = None
    shots: int | None = None
    dataset: str = ""
    dataset_params: dict[str, Any] = field(default_factory=dict)
    algorithm: str = ""
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    benchmark: str | None = None

    def validate(self) -> None:
        """Raises ``ValueError`` with a clear message if the record is malformed."""
        for name in ("method", "citation"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"PublishedResult needs a non-empty {name}. Received: {name}={value!r}")
        for name in ("value", "ci95"):
            value = getattr(self, name)
            if (value is None and name == "ci95") or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                continue
            raise ValueError(f"PublishedResult {self.method!r}: {name} must be a finite number"
                             f"{' or None' if name == 'ci95' else ''}. Received: {name}={value!r}")
        if self.metric not in ("accuracy", "mse"):
            raise ValueError(f"PublishedResult {self.method!r}: metric must be 'accuracy' or 'mse'. "
                             f"Received: metric={self.metric!r}")
        for name in ("ways", "shots"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"PublishedResult {self.method!r}: {name} must be a positive int or None. "
                                 f"Received: {name}={value!r}")
        for name in ("dataset", "algorithm"):
            value = getattr(self, name)
            if not (isinstance(value, str) and (value == "" or _ID_RE.match(value))):
                raise ValueError(f"PublishedResult {self.method!r}: {name} must be a spec id '<plugin>.<name>' or "
                                 f"''. Received: {name}={value!r}")
        for name in ("dataset_params", "algorithm_params"):
            value = getattr(self, name)
            if not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
                raise ValueError(f"PublishedResult {self.method!r}: {name} must be a dict of parameter names to "
                                 f"values. Received: {name}={value!r}")
        if self.benchmark is not None and not (isinstance(self.benchmark, str) and self.benchmark):
            raise ValueError(f"PublishedResult {self.method!r}: benchmark must be a task-set name or None. "
                             f"Received: benchmark={self.benchmark!r}")


def _check_published(spec: Any, kind: str) -> None:
    """Checks a spec's ``published_results``: a list or tuple of valid :class:`PublishedResult` records."""
    records = spec.published_results
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, PublishedResult) for r in records):
        raise ValueError(f"{kind} {spec.id!r}: published_results must be a tuple of PublishedResult. "
                         f"Received: published_results={records!r}")
    for record in records:
        record.validate()
        if kind == "DatasetSpec" and record.dataset not in ("", spec.id):
            raise ValueError(f"DatasetSpec {spec.id!r}: a published result on another dataset belongs to that "
                             f"dataset's spec (or an algorithm's). Received: dataset={record.dataset!r}")
        if kind == "AlgorithmSpec" and not record.dataset:
            raise ValueError(f"AlgorithmSpec {spec.id!r}: each published result names the dataset it was measured "
                             f"on. Received: dataset={record.dataset!r} (method {record.method!r})")


@dataclass(frozen=True)
class AlgorithmSpec:
    """Declares a meta-learning algorithm.

    Args:
        id: ``<plugin>.<name>``, e.g. ``metalab_foo.foo``.
        title: Short human name, e.g. ``"MAML"``.
        description: One paragraph, shown by ``metalab plugins show`` and the Plugins page.
        params: The pydantic parameter model (a :class:`Params` subclass); defaults follow the paper.
        factory: ``factory(params, task) -> Algorithm``, called in the training process with the validated
            params instance and a :class:`TaskSpec`, or the string ``"package.module:Attribute"`` naming it
            (e.g. the implementation class), imported on first use so that registration imports no Keras (since
            API 1.4). A task whose kind is not in ``task_kinds`` is refused before the factory runs.
        paper: Citation of the paper the algorithm implements.
        task_kinds: Which dataset kinds it supports, among :data:`TASK_KINDS` (``"environment"`` since API 1.8: the
            algorithm then implements the environment methods of :class:`Algorithm`).
        published_results: Scores the algorithm's paper reports, each a :class:`PublishedResult` naming its
            dataset; the report shows those whose protocol matches a run's (since API 1.4).
        batch_norm_mode: ``batch_norm_mode(params) -> str``: how the algorithm uses batch-norm statistics at
            meta-test time under the validated ``params``, completing "Meta-test batch norm: ...", e.g.
            ``"transductive (query batch statistics)"``. Every report on a backbone with batch norm prints it,
            since the choice moves published numbers by points; ``None`` says nothing (since API 1.4).
        memory_model: Which of :data:`MEMORY_MODELS` the step-memory estimate uses for the algorithm (its
            params' ``inner_steps``, ``first_order`` and ``task_window`` are read where present); ``None``: not
            estimated (since API 1.4).
    """

    id: str
    title: str
    description: str
    params: type[pydantic.BaseModel]
    factory: Callable[..., "Algorithm"] | str
    paper: str = ""
    task_kinds: tuple[str, ...] = ("classification", "regression")
    published_results: tuple[PublishedResult, ...] = ()
    batch_norm_mode: Callable[[Any], str] | None = None
    memory_model: str | None = None

    def __post_init__(self) -> None:
        # One door for every caller: a "module:Attribute" factory is imported on first use, and a task of a kind
        # missing from task_kinds is refused before any implementation runs.
        kinds = self.task_kinds if isinstance(self.task_kinds, tuple) else None
        object.__setattr__(self, "factory", wrap_factory(self.factory, f"AlgorithmSpec {self.id!r}", kinds))

    def validate(self) -> None:
        """Raises ``ValueError`` with a clear message if the spec is malformed."""
        _check_common(self, "AlgorithmSpec")
        bad = set(self.task_kinds) - set(TASK_KINDS)
        if not self.task_kinds or bad:
            raise ValueError(f"AlgorithmSpec {self.id!r}: unknown task kinds. Received: task_kinds={self.task_kinds!r}")
        _check_published(self, "AlgorithmSpec")
        if self.batch_norm_mode is not None and not callable(self.batch_norm_mode):
            raise ValueError(f"AlgorithmSpec {self.id!r}: batch_norm_mode must be None or a function params -> str. "
                             f"Received: batch_norm_mode={self.batch_norm_mode!r}")
        if self.memory_model is not None and self.memory_model not in MEMORY_MODELS:
            raise ValueError(f"AlgorithmSpec {self.id!r}: memory_model must be None or one of "
                             f"{', '.join(MEMORY_MODELS)}. Received: memory_model={self.memory_model!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """Declares a dataset (a class-indexed image set or a regression task family).

    Args:
        id: ``<plugin>.<name>``, e.g. ``metalab_foo.foo``.
        title, description, paper: As for :class:`AlgorithmSpec`.
        params: The pydantic parameter model (a :class:`Params` subclass).
        factory: ``factory(params, context) -> ClassificationDataset | RegressionTaskFamily |
            EnvironmentTaskFamily`` with a :class:`DataContext`. Raise ``FileNotFoundError`` with a message naming
            the missing files and where to put them when data is absent and cannot be downloaded (an environment
            family whose optional package is missing raises ``ImportError`` naming the extra to install).
        kind: ``"classification"``, ``"regression"`` or ``"environment"`` (since API 1.8).
        default_backbone: Backbone id used when the run config names none.
        episode_defaults: Defaults for the run's episode shape, e.g. ``{"ways": 5, "shots": 1, "queries": 15}``.
        algorithm_defaults: The parameters the papers used on this dataset, per algorithm id, applied before the
            user's own values, e.g. ``{"metalab_foo.foo": {"inner_lr": 0.01}}`` (since API 1.1).
        downloads: The files the plugin may download, ``{url: sha256}`` (since API 1.3). Outside ``private`` mode
            a :data:`DownloadURL` parameter may name only these, and every download is checked against its pinned
            sha256.
        split_sizes: Optional, classification only: ``split_sizes(params) -> {split: {"classes": int,
            "min_per_class": int}}``, the number of classes of each split and the image count of its smallest class
            for the validated ``params``, computed WITHOUT reading the data (from the split definitions). With it a
            run config whose ``ways`` exceeds a split's classes, or whose ``shots + queries`` exceeds a class's
            images, is refused before the run is created; without it the check happens when training starts.
            Raise ``ValueError`` for parameters the dataset cannot serve. Left out by datasets whose sizes depend
            on their files.
        published_results: Scores the dataset's papers report, as :class:`PublishedResult` records (``dataset``
            left empty); the report shows those whose protocol matches a run's (since API 1.4).
        presets: The recommended starting values of a quick first run on this dataset, per algorithm id, with
            ``"*"`` for every algorithm (an algorithm's own entry goes over it), e.g. ``{"*": {"steps": 300},
            "metalab_foo.foo": {"algorithm.inner_lr": 0.01}}``. Keys are run fields or qualified plugin
            parameters, as ``metalab train --set`` takes them (since API 1.4). The dashboard's Train form and
            ``metalab train`` both start from them; ``val_every``, ``checkpoint_every`` and ``log_every`` here are
            meant for the preset's ``steps`` and scale down in proportion for a shorter run.
        tiny_task: Marks the dataset as a tiny task of the conformance kit (``metalab.api.testing``): the
            run-config fields of a run that takes seconds on a CPU with no download, e.g. ``{"backbone":
            "metalab_foo.mlp", "backbone_params": {"hidden": [32, 32]}, "ways": 3, "shots": 5, "queries": 5}``,
            keys among :data:`TINY_TASK_FIELDS`. Per task kind the kit takes the first such dataset in plugin load
            order (metalab's built-ins load first); ``None``: not a tiny task (since API 1.4).
    """

    id: str
    title: str
    description: str
    params: type[pydantic.BaseModel]
    factory: Callable[..., Any] | str
    kind: Literal["classification", "regression", "environment"] = "classification"
    paper: str = ""
    default_backbone: str | None = None
    episode_defaults: dict[str, int] = field(default_factory=dict)
    algorithm_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    downloads: dict[str, str] = field(default_factory=dict)
    split_sizes: Callable[[Any], dict[str, dict[str, int]]] | None = None
    published_results: tuple[PublishedResult, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tiny_task: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.factory, (str, SpecFactory)):  # "module:Attribute", imported on first use
            object.__setattr__(self, "factory", wrap_factory(self.factory, f"DatasetSpec {self.id!r}"))

    def validate(self) -> None:
        """Raises ``ValueError`` with a clear message if the spec is malformed."""
        _check_common(self, "DatasetSpec")
        _check_published(self, "DatasetSpec")
        if not isinstance(self.presets, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and all(isinstance(n, str) for n in v)
            for k, v in self.presets.items()
        ):
            raise ValueError(
                f"DatasetSpec {self.id!r}: presets must map algorithm ids (or '*') to dicts of run fields and "
                f"qualified parameters. Received: presets={self.presets!r}"
            )
        if self.tiny_task is not None and not (
            isinstance(self.tiny_task, dict) and set(self.tiny_task) <= set(TINY_TASK_FIELDS)
        ):
            raise ValueError(
                f"DatasetSpec {self.id!r}: tiny_task must be None or a dict with keys among "
                f"{', '.join(TINY_TASK_FIELDS)}. Received: tiny_task={self.tiny_task!r}"
            )
        if self.split_sizes is not None and not callable(self.split_sizes):
            raise ValueError(
                f"DatasetSpec {self.id!r}: split_sizes must be None or a function params -> "
                f"{{split: {{'classes': int, 'min_per_class': int}}}}. Received: split_sizes={self.split_sizes!r}"
            )
        for url, digest in (self.downloads or {}).items() if isinstance(self.downloads, dict) else [(None, None)]:
            if not (isinstance(url, str) and url.startswith(("https://", "http://")) and isinstance(digest, str)
                    and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise ValueError(
                    f"DatasetSpec {self.id!r}: downloads must map https/http URLs to their sha256 (64 lowercase hex "
                    f"digits). Received: downloads={self.downloads!r}"
                )
        if not isinstance(self.algorithm_defaults, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in self.algorithm_defaults.items()
        ):
            raise ValueError(
                f"DatasetSpec {self.id!r}: algorithm_defaults must map algorithm ids to parameter dicts. "
                f"Received: algorithm_defaults={self.algorithm_defaults!r}"
            )
        if self.kind not in TASK_KINDS:
            raise ValueError(f"DatasetSpec {self.id!r}: kind must be one of {', '.join(TASK_KINDS)}. "
                             f"Received: kind={self.kind!r}")
        unknown = set(self.episode_defaults) - {"ways", "shots", "queries"}
        if unknown:
            raise ValueError(
                f"DatasetSpec {self.id!r}: episode_defaults keys must be ways/shots/queries. "
                f"Received: episode_defaults={self.episode_defaults!r}"
            )


@dataclass(frozen=True)
class BackboneSpec:
    """Declares a feature extractor (a Keras model without a classification head).

    Args:
        id, title, description, paper, params: As for :class:`AlgorithmSpec`.
        factory: ``factory(params, input_shape) -> keras.Model`` mapping a batch of inputs of
            ``input_shape`` (no batch axis) to a batch of flat feature vectors. Each call returns a new, unbuilt
            or freshly built model. Batch normalisation inside must give exact second derivatives
            (use :class:`metalab.core.engine.layers.MetaBatchNorm`, not ``keras.layers.BatchNormalization``).
        input_kinds: ``"image"`` (H, W, C inputs) and/or ``"vector"`` (flat inputs).
        has_batch_norm: Whether the model normalises with batch statistics: ``True`` or ``False``, or ``None``
            when not declared. The report prints the algorithm's ``batch_norm_mode`` only for a backbone that may
            have batch norm, and says there is none for one that declares ``False`` (since API 1.4).
        feature_maps: ``True`` when the factory also takes ``feature_maps=True`` and then returns a model whose
            output is its last feature map ``[N, h, w, c]`` instead of the flat vector (for relation modules and
            other spatial heads; an algorithm asks with ``task.make_backbone(feature_maps=True)``). Default
            ``False``: the factory is called with ``(params, input_shape)`` only (since API 1.4).
    """

    id: str
    title: str
    description: str
    params: type[pydantic.BaseModel]
    factory: Callable[..., Any] | str
    paper: str = ""
    input_kinds: tuple[str, ...] = ("image", "vector")
    has_batch_norm: bool | None = None
    feature_maps: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.factory, (str, SpecFactory)):  # "module:Attribute", imported on first use
            object.__setattr__(self, "factory", wrap_factory(self.factory, f"BackboneSpec {self.id!r}"))

    def validate(self) -> None:
        """Raises ``ValueError`` with a clear message if the spec is malformed."""
        _check_common(self, "BackboneSpec")
        if not isinstance(self.feature_maps, bool):
            raise ValueError(f"BackboneSpec {self.id!r}: feature_maps must be True or False. "
                             f"Received: feature_maps={self.feature_maps!r}")
        if not isinstance(self.has_batch_norm, (bool, type(None))):
            raise ValueError(f"BackboneSpec {self.id!r}: has_batch_norm must be True, False or None. "
                             f"Received: has_batch_norm={self.has_batch_norm!r}")


@dataclass(frozen=True)
class DataContext:
    """Where a dataset factory reads and caches files.

    Attributes:
        data_dir: ``METALAB_DATA_DIR`` (or the default under the user's cache dir). A dataset looks for its
            files in ``data_dir/<dataset name>/``; downloads land in :meth:`download_dir` (the cache), never here.
        cache_dir: Where decoded arrays may be cached (``data_dir/.cache`` by default).
        allow_download: False disables any network access (tests and CI set it through
            ``METALAB_OFFLINE=1``).
    """

    data_dir: str
    cache_dir: str
    allow_download: bool = True

    def download_dir(self, dataset: str) -> Path:
        """Where downloads of ``dataset`` land: ``cache_dir/downloads/<dataset>/`` (since API 1.3).

        :func:`metalab.core.data.files.download` writes nowhere else, so a URL can never place a file in the data
        folder, the code's folders or anywhere a later process would run it.
        """
        name = str(dataset)
        if not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"download_dir takes a plain folder name. Received: dataset={dataset!r}")
        return Path(self.cache_dir) / "downloads" / name


@dataclass
class ClassSplit:
    """The images of one meta-split, indexed by class.

    Attributes:
        images: ``uint8`` array ``[n, H, W, C]`` (or ``[n, D]`` for vector data).
        labels: ``int`` array ``[n]`` of class indices into ``class_names``.
        class_names: Names of the classes of this split (e.g. ``"Greek/character03/rot90"``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"ClassSplit: images and labels differ in length. Received: len(images)={len(self.images)}, "
                f"len(labels)={len(self.labels)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class ClassificationDataset:
    """A class-indexed dataset: three splits with disjoint classes (or, when ``supervised``, the same classes).

    Attributes:
        splits: ``{"train": ClassSplit, "val": ClassSplit, "test": ClassSplit}``.
        input_shape: Shape of one input after :meth:`to_float`, e.g. ``(28, 28, 1)``.
        scale: Divide ``uint8`` pixels by this to get ``float32`` inputs (255 for images).
        info: Free-form facts for reports (source files, split name, counts).
        benchmarks: Named fixed task sets that the dataset's own papers score on, each a :class:`Benchmark`
            (since API 1.5; it declares the classes it evaluates on, so a run that trained on them is refused) or,
            as in API 1.2-1.4, a bare callable returning a :class:`TaskBatch` (scored with a note that leaks
            were not checked), e.g. Omniglot's ``"lake20"``: Lake et al.'s 20 one-shot runs.
            ``metalab eval RUN --benchmark NAME`` scores a run on one (since API 1.2).
        describe: Turns model inputs (rows of :meth:`to_float`'s output) back into what a person reads, one string
            per input, e.g. a text dataset's sentences; the report's episode gallery then shows them where it shows
            pictures for images. ``None`` (the default): inputs are pictures, or have no readable form (since API
            1.6).
        encode: Turns raw texts into stored rows (what ``splits[...].images`` hold, before :meth:`to_float`), one
            row per text, with the dataset's own tokenizer and the run's parameters: ``metalab predict`` and the
            Predict page then take texts for a run on this dataset (since API 1.7). ``None`` (the default): the
            inputs are not texts.
        supervised: ``True`` when the splits divide the images rather than the classes (a supervised
            train/validation/test division, e.g. MNIST's official test images as ``test``): every split then
            holds every class, with the same ``class_names`` in the same order. A ``"supervised"`` algorithm is
            handed the ``test`` split to report its plain test accuracy (``set_supervised_test``); episodic
            evaluation still runs, on classes seen in training. Default ``False`` (since API 1.2).
    """

    splits: dict[str, ClassSplit]
    input_shape: tuple[int, ...]
    scale: float = 255.0
    info: dict[str, Any] = field(default_factory=dict)
    benchmarks: dict[str, "Benchmark | Callable[[], TaskBatch]"] = field(default_factory=dict)
    supervised: bool = False
    describe: Callable[[np.ndarray], list[str]] | None = None
    encode: Callable[[list[str]], np.ndarray] | None = None
    kind: str = dataclasses.field(default="classification", init=False)

    def to_float(self, images: np.ndarray) -> np.ndarray:
        """Converts stored ``uint8`` images to the ``float32`` model inputs."""
        return images.astype(np.float32) / np.float32(self.scale)


@runtime_checkable
class RegressionTaskFamily(Protocol):
    """A family of regression tasks (e.g. sinusoids); the sampler draws tasks and points from it.

    Attributes:
        kind: Always ``"regression"``.
        input_shape: Shape of one input, e.g. ``(1,)``.
        output_dim: Number of regression targets.
    """

    kind: str
    input_shape: tuple[int, ...]
    output_dim: int

    def sample_task(self, rng: np.random.Generator) -> Any:
        """Draws one task's parameters (e.g. amplitude and phase)."""

    def sample_points(self, task: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``n`` points ``(x [n, *input_shape] float32, y [n, output_dim] float32)`` of ``task``."""

    def evaluate(self, task: Any, x: np.ndarray) -> np.ndarray:
        """The true function of ``task`` at ``x`` (for reports)."""


@runtime_checkable
class EnvironmentTaskFamily(Protocol):
    """A family of reinforcement-learning tasks, one Gymnasium environment per task (since API 1.8).

    A task is whatever parameter tells the tasks apart (a goal position, a target velocity, a direction), drawn per
    meta-split by :meth:`sample_tasks`; :meth:`make_env` builds the ``gymnasium.Env`` an agent acts in for it. Core
    runs the episodes (:class:`metalab.api.rl.Rollouts`): it resets each environment with a seed of the run's stream,
    steps it with the policy's actions until it terminates, is truncated or reaches :attr:`horizon` steps, and hands
    the algorithm the observations, actions and rewards.

    Attributes:
        kind: Always ``"environment"``.
        input_shape: Shape of one observation, a flat vector ``(D,)``.
        action_kind: ``"continuous"`` (a ``Box`` of :attr:`action_dim` numbers, which the environment clips) or
            ``"discrete"`` (one of :attr:`action_dim` actions).
        action_dim: Length of a continuous action, or the number of discrete actions.
        horizon: The most steps of one episode.
        info: Free-form facts for reports (source, reward, the paper's settings).

    Optional methods (looked up with ``getattr``):
        ``set_task(env, task)``: points an environment made for another task at ``task``, so that core reuses
        environments that are slow to build (MuJoCo) instead of making one per episode.
        ``plot_xy(task, observations) -> (goal_xy | None, path_xy [H, 2])``: where the agent went, for the report's
        trajectory plots (2D navigation).
    """

    kind: str
    input_shape: tuple[int, ...]
    action_kind: str
    action_dim: int
    horizon: int

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[Any]:
        """Draws ``n`` tasks of meta-split ``split`` (``"train"``, ``"val"`` or ``"test"``) with ``rng``."""

    def make_env(self, task: Any) -> Any:
        """A new ``gymnasium.Env`` for ``task``."""

    def describe_task(self, task: Any) -> str:
        """One short line naming the task, e.g. ``"goal (0.31, -0.12)"``."""


@dataclass(frozen=True)
class TaskSpec:
    """What an algorithm is told about the tasks it will meet, at construction time.

    Attributes:
        kind: One of :data:`TASK_KINDS`.
        input_shape: Shape of one input (an environment's observation).
        output_dim: Number of classes per episode (``ways``), regression targets, or an environment's
            ``action_dim``.
        ways, shots, queries: The episode shape (``ways`` is 1 for regression and environments). For an
            environment, ``shots`` is the episodes run per adaptation step and ``queries`` the episodes that score
            the adapted policy.
        total_steps: Meta-training steps planned for the run (for schedules).
        make_backbone: ``make_backbone() -> keras.Model``: a new backbone of the run's choice for this input shape.
            ``make_backbone(feature_maps=True)`` returns its last feature map ``[N, h, w, c]`` instead of the flat
            vector when the backbone declares ``BackboneSpec.feature_maps`` (else ``ValueError``; since API 1.4).
        num_train_classes: Classes of the training split (classification; 0 for regression): the output size
            of a pre-training head over all base classes (since API 1.2).
        load_run: A store-free way to load another run's model (since API 1.4): ``load_run(run_ref) ->
            LoadedRun`` takes a run id (or a unique prefix of it), e.g. a :data:`RunRef` parameter, and returns the
            completed run rebuilt with its checkpoint loaded. It raises ``ValueError`` (no such run, several, not
            completed, an unusable checkpoint) or ``FileNotFoundError`` (no run store, no checkpoint), each naming
            the run. The engine sets it; ``None`` where no run can be loaded (a task built by hand).
        action_kind: For an environment: ``"continuous"`` or ``"discrete"``; ``""`` otherwise (since API 1.8).
        horizon: For an environment: the most steps of one episode; 0 otherwise (since API 1.8).
    """

    kind: str
    input_shape: tuple[int, ...]
    output_dim: int
    ways: int
    shots: int
    queries: int
    total_steps: int
    make_backbone: Callable[..., Any]
    num_train_classes: int = 0
    load_run: Callable[[str], LoadedRun] | None = None
    action_kind: str = ""
    horizon: int = 0


@dataclass
class TaskBatch:
    """A batch of tasks with a leading task axis ``T``.

    Classification: ``support_x [T, ways*shots, *input_shape]``, ``support_y [T, ways*shots]`` (int32 labels
    0..ways-1), ``query_x [T, ways*queries, ...]``, ``query_y [T, ways*queries]``.
    Regression: ``support_y``/``query_y`` are ``float32 [T, n, output_dim]``.
    ``extras`` (since API 1.2) is ``None`` or a dict of further arrays with the same leading task axis, e.g.
    ``"class_attributes"`` ``float32 [T, ways, A]`` when the dataset's ``info`` holds class attributes.
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any
    extras: dict[str, Any] | None = None

    def as_tuple(self) -> tuple[Any, Any, Any, Any]:
        return (self.support_x, self.support_y, self.query_x, self.query_y)

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])


@dataclass(frozen=True)
class Benchmark:
    """A named fixed task set of a dataset, and the classes it evaluates on (since API 1.5).

    Before scoring a run on it, core intersects :attr:`classes` with the run's training and validation classes and
    refuses the run when they share one: a benchmark class ``b`` matches a split class named ``b`` or
    ``b/<variant>`` (e.g. the rotated copies ``b/rot90``).

    Attributes:
        tasks: Returns the :class:`TaskBatch` (loaded on demand).
        classes: Returns the names of the classes the tasks are drawn from, in the dataset's class naming
            (``ClassSplit.class_names`` without variant suffixes), e.g. ``"Atemayar_Qelisayer/character01"``.
        title: One line for listings, e.g. ``"Lake et al.'s 20 within-alphabet 20-way one-shot runs"``.
        advice: What to train on instead when a run overlaps, e.g. ``"train with split=background_evaluation"``.
    """

    tasks: Callable[[], "TaskBatch"]
    classes: Callable[[], Sequence[str]]
    title: str = ""
    advice: str = ""


@dataclass(frozen=True)
class LoadedRun:
    """Another completed run with its trained weights, as :attr:`TaskSpec.load_run` returns it (since API 1.4).

    A plugin that builds on another run (a distillation student on its teacher, say) gets it from the task it
    is given and never opens the run store: the engine resolves the id, requires a completed run with a
    checkpoint, rebuilds the run's dataset and algorithm through the plugins and loads its newest usable
    checkpoint.

    Attributes:
        id: The run's full id.
        config: The run's config as stored: the run-config fields (``dataset``, ``algorithm``, ``backbone``,
            ``ways``, ``shots``, ``queries``, ``seed``, ``dataset_params``, ``algorithm_params``, ...).
        algorithm_id: The run's algorithm id, e.g. ``"metalab_foo.foo"``.
        dataset_id: The run's dataset id.
        algorithm: The run's algorithm object, holding the weights of its checkpoint.
        dataset: The run's dataset (a :class:`ClassificationDataset` or a :class:`RegressionTaskFamily`).
        task: The :class:`TaskSpec` the run's algorithm was built with.
        evaluations: The run's recorded evaluations, newest first (dicts with ``split``, ``episodes``, ``seed``,
            ``accuracy`` or ``mse``, ``ci95``, ...), as the run store lists them.
        score: The run's headline evaluation: the newest under its canonical protocol (``test`` split, its own
            ``test_episodes`` fixed episodes, the engine's evaluation seed), or ``None`` (since API 1.5).
        episode_maker: What :meth:`fixed_episodes` calls, set by the engine; ``None`` when there is none.
    """

    id: str
    config: dict[str, Any]
    algorithm_id: str
    dataset_id: str
    algorithm: Any
    dataset: Any
    task: TaskSpec
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    score: dict[str, Any] | None = None
    episode_maker: Callable[[str, int | None, int, int, int], TaskBatch] | None = field(default=None, repr=False)

    def fixed_episodes(self, split: str, ways: int | None, shots: int, queries: int, count: int) -> TaskBatch:
        """The engine's fixed evaluation episodes of the run's dataset: ``count`` tasks of ``split`` in this shape.

        They are the episodes every run on that dataset is scored on (the engine's evaluation seed), so two
        models compared on them meet the same tasks.

        Raises:
            ValueError: The split cannot serve episodes of this shape, or the run came without an episode maker.
        """
        if self.episode_maker is None:
            raise ValueError(f"Run {self.id!r} was loaded without an episode maker, so it has no fixed episodes. "
                             f"Received: episode_maker=None")
        return self.episode_maker(split, ways, shots, queries, count)


@runtime_checkable
class Algorithm(Protocol):
    """What an algorithm object (made by ``AlgorithmSpec.factory``) provides to the runner.

    The runner owns the loop, compilation, logging, checkpoints and cancellation. An algorithm only says how
    to compute meta-gradients for a batch of tasks and how to adapt to and score one task. Differentiate with
    :func:`metalab.core.engine.functional.value_and_grad` and call models with explicit weights through
    :class:`metalab.core.engine.functional.FunctionalModel`; use ``keras.ops`` for the maths.

    Attributes:
        meta_batch_size: Tasks per meta-training step.
        trainable_variables: The meta-parameters the outer optimizer updates (list of Keras variables).
        variables: Every variable to checkpoint (includes ``trainable_variables``).
        batch_kind: Optional (since API 1.2): ``"episodic"`` (the default when absent) trains on episodes;
            ``"supervised"`` trains on ordinary mini-batches of the training split with global class labels
            (see :class:`metalab.core.engine.sampling.SupervisedSampler`): ``meta_gradients`` then gets a batch whose
            ``support_*`` and ``query_*`` are the two halves of ``meta_batch_size`` mini-batches, labels in
            ``0..task.num_train_classes-1``. Evaluation stays episodic either way.
        batch_size: Required when ``batch_kind == "supervised"``: examples per mini-batch (at least 2).
        supervised_holdout_fraction: Optional, supervised only: the runner holds out this fraction of each
            training class's images (never drawn for training) and hands them to the algorithm's optional
            ``set_supervised_holdout(images, labels, to_float)`` method, e.g. to report plain supervised accuracy.
            On a dataset with ``supervised=True`` nothing is held out (its ``val`` split is that share already);
            the runner hands the ``test`` split to the optional ``set_supervised_test(images, labels, to_float)``
            method instead (labels are the training split's class indices there too).
    """

    meta_batch_size: int

    @property
    def trainable_variables(self) -> list[Any]: ...

    @property
    def variables(self) -> list[Any]: ...

    def make_optimizer(self) -> Any:
        """Returns the outer-loop Keras optimizer (built by the runner on ``trainable_variables``)."""

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns gradients aligned with ``trainable_variables`` and scalar metrics (must include ``loss``;
        classification also ``accuracy`` on the query sets). Traced once by the runner into a compiled graph."""

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts to each task of ``batch`` (support set) and scores it on its query set.

        Returns ``loss`` ``[T]`` and, for classification, ``accuracy`` ``[T]`` after adaptation; gradient-based
        algorithms also return ``curve`` ``[T, steps+1]``: the query accuracy (classification) or MSE
        (regression) after 0, 1, ..., steps inner steps. Optionally ``predictions`` (query logits or outputs).

        An algorithm of the ``"environment"`` kind is not handed episodes (its data depends on its own policy) and
        implements :meth:`gather` and :meth:`adaptation_returns` instead; this method is not called for it.
        """

    # The environment kind (since API 1.8); only algorithms declaring "environment" in task_kinds implement these.
    #
    # gather(tasks, rollouts) -> TaskBatch
    #     Runs the episodes of one meta-training step on ``tasks`` (a list from the family's ``sample_tasks``) through
    #     ``rollouts`` (a :class:`metalab.api.rl.Rollouts`: ``rollouts.run(tasks, policy, episodes)``) and returns
    #     the arrays ``meta_gradients`` takes, as a :class:`TaskBatch` of fixed shapes (the runner compiles the step
    #     once). Its metrics should include ``return_before`` and ``return_after`` (mean episode returns before and
    #     after adaptation). An optional attribute ``updates_per_batch`` (default 1) is how many optimizer steps
    #     the runner takes on one gathered batch (PPO epochs).
    #
    # adaptation_returns(tasks, rollouts, steps) -> np.ndarray [T, steps + 1]
    #     The mean episode return of each task's policy after 0, 1, ..., ``steps`` adaptation steps, each step
    #     adapting on ``task.shots`` new episodes and each return measured on ``task.queries`` episodes. Core turns
    #     it into the evaluation's ``return`` (after the last step), its 95% interval and the ``curve``.
    #
    # adapted_trajectories(task, rollouts, steps) -> list[Trajectories]   (optional)
    #     One task's episodes after 0..``steps`` adaptation steps; with a family's ``plot_xy`` the report and RL
    #     Predict draw the agent's paths from them.


@dataclass(frozen=True)
class ReportPanel:
    """One panel a plugin adds to a run's report (returned by the ``metalab_report_panels`` hook; since API 1.2).

    Give a figure, a Markdown text, or both (the text is shown under the figure).

    Args:
        title: The panel's heading, e.g. ``"Learned inner learning rates"``.
        figure: A Plotly figure as plain JSON (``json.loads(fig.to_json())``), or ``None``.
        markdown: Markdown text, or ``None``.
    """

    title: str
    figure: dict[str, Any] | None = None
    markdown: str | None = None

    def validate(self) -> None:
        """Raises ``ValueError`` with a clear message if the panel is malformed."""
        if not isinstance(self.title, str) or not self.title.strip():
            raise ValueError(f"ReportPanel needs a non-empty title. Received: title={self.title!r}")
        if self.figure is None and self.markdown is None:
            raise ValueError(f"ReportPanel {self.title!r} needs a figure or markdown. Received: figure=None, markdown=None")
        if self.figure is not None and not (isinstance(self.figure, dict) and isinstance(self.figure.get("data", []), list)):
            raise ValueError(
                f"ReportPanel {self.title!r}: figure must be a Plotly figure as a JSON dict (json.loads(fig.to_json())). "
                f"Received: figure of type {type(self.figure).__name__}"
            )
        if self.markdown is not None and not isinstance(self.markdown, str):
            raise ValueError(
                f"ReportPanel {self.title!r}: markdown must be a string. Received: markdown of type "
                f"{type(self.markdown).__name__}"
            )
