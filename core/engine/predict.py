"""Few-shot prediction on new images: a finished run adapts to a labelled support set and classifies query images.

Images are preprocessed as the run's dataset stored its training images (:func:`prepare_images`):

- size and channels come from the dataset's ``input_shape`` ``(H, W, C)``: ``C=1`` is grey (Pillow's luma),
  ``C=3`` RGB; transparency is composited onto white; resizing uses a Lanczos filter;
- ``dataset.info["fit"]`` (``"stretch"`` by default, or ``"crop"``) says how the aspect ratio is handled;
- ``dataset.info["invert"]`` true means the dataset's loader inverted its source images (Omniglot: dark strokes on
  white became bright strokes on black), so support and query images are inverted too. A caller may override it
  (e.g. dark-on-light photos of digits for an MNIST run, whose source images are already light-on-dark);
- pixels go through the dataset's own ``to_float`` after mapping 0..255 to its stored range ``0..scale``.

Texts (a dataset that declares ``ClassificationDataset.encode``, since plugin API 1.7: the text datasets) are
encoded by the run's dataset itself, with the run's own parameters (its tokenizer): the support set is a folder with
one ``<class>.txt`` per class or one ``.txt`` file of ``class: example`` lines, the queries a ``.txt`` file (or a
folder of them) with one text a line (:func:`list_text_support`, :func:`read_text_queries`).

The algorithm's ``evaluate`` on a one-task batch does the adaptation; its ``predictions`` are read as logits.
Importing this module is cheap; :func:`predict` imports Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metalab.core.data.images import IMAGE_EXTENSIONS, UnreadableImageError, decode_image, is_hidden

__all__ = ["PredictionError", "SessionCache", "list_support_set", "list_query_images", "prepare_images",
           "MAX_TEXT_LINES", "MAX_TEXT_BYTES", "is_text_input", "parse_labelled_lines", "list_text_support",
           "read_text_queries", "prepare_texts", "predict"]

#: The most non-blank lines read in a text prediction: all the support examples together, and all the queries.
MAX_TEXT_LINES = 2000
#: The largest text file read in a text prediction (bytes).
MAX_TEXT_BYTES = 2 << 20


class PredictionError(ValueError):
    """The support or query images, or the run, cannot be used for prediction; the message says why."""


def _image_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (any depth, sorted), hidden ones left out."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not is_hidden(p.relative_to(folder).as_posix())
    )


def list_support_set(support_dir: str | Path) -> dict[str, list[Path]]:
    """Lists a support set: one sub-folder per class, a few images each.

    Args:
        support_dir: The folder.

    Returns:
        ``{class name: [image files]}`` with classes sorted by name (class ``i`` of the episode is the ``i``-th).

    Raises:
        FileNotFoundError: ``support_dir`` is not a folder.
        PredictionError: Fewer than 2 class folders, or a class folder without files.
    """
    folder = Path(support_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The support set must be a folder with one sub-folder per class, each holding a few labelled images "
            f"(e.g. support/cat/1.jpg, support/dog/1.jpg). Received: support_dir={str(support_dir)!r}"
        )
    classes = {
        d.name: _image_files(d) for d in sorted(folder.iterdir()) if d.is_dir() and not is_hidden(d.name)
    }
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise PredictionError(
            f"Every class folder of the support set needs at least one image; these have none: {', '.join(empty)}. "
            f"Received: support_dir={str(support_dir)!r}"
        )
    if len(classes) < 2:
        raise PredictionError(
            f"The support set needs at least 2 class folders (one sub-folder per class) to classify between. "
            f"Received: {len(classes)} class folders in support_dir={str(support_dir)!r}"
        )
    return classes


def list_query_images(query_dir: str | Path) -> list[Path]:
    """Lists the query images: every file under a folder (sorted), or one image file.

    Raises:
        FileNotFoundError: Nothing is there.
        PredictionError: The folder holds no files.
    """
    path = Path(query_dir).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"The query images must be a folder of images or one image file. Received: query_dir={str(query_dir)!r}"
        )
    files = _image_files(path)
    if not files:
        raise PredictionError(f"The query folder holds no images. Received: query_dir={str(query_dir)!r}")
    return files


def prepare_images(files: list[Path], dataset: Any, *, invert: bool | None = None,
                   skip_non_images: bool = False) -> tuple[np.ndarray, list[Path]]:
    """Reads image files into the float inputs the run's model takes, preprocessed as the dataset's images.

    Args:
        files: Image files.
        dataset: The run's :class:`~metalab.core.contract.specs.ClassificationDataset` (its ``input_shape``, ``scale``,
            ``to_float`` and ``info["invert"]``/``info["fit"]``).
        invert: Override the dataset's inversion; ``None`` follows ``dataset.info["invert"]`` (default false).
        skip_non_images: Leave out files that cannot be decoded and have no image suffix (a README among the
            queries) instead of failing on them.

    Returns:
        ``(float32 [n, H, W, C], the files used)``.

    Raises:
        PredictionError: The dataset's inputs are not images ``(H, W, 1 or 3)``, or files cannot be read (all named).
    """
    shape = tuple(int(s) for s in dataset.input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise PredictionError(
            f"Prediction on image files needs a dataset of images shaped (height, width, 1 or 3). "
            f"Received: input_shape={shape}"
        )
    info = getattr(dataset, "info", {}) or {}
    do_invert = bool(info.get("invert", False)) if invert is None else bool(invert)
    fit = str(info.get("fit", "stretch"))
    scale = float(getattr(dataset, "scale", 255.0))
    arrays, used, bad = [], [], []
    for path in files:
        try:
            arrays.append(decode_image(path, size=shape[:2], channels=shape[2], fit=fit, invert=do_invert))
            used.append(path)
        except UnreadableImageError as exc:
            if skip_non_images and path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            bad.append(str(exc))
    if bad:
        raise PredictionError(f"{len(bad)} files cannot be read as images: " + "; ".join(bad[:10])
                              + (" ..." if len(bad) > 10 else "") + f" Received: files={len(files)}")
    if not arrays:
        raise PredictionError(f"No readable image among the files given. Received: files={[str(f) for f in files[:5]]}")
    stacked = np.stack(arrays)
    if scale != 255.0:
        # Bring 0..255 to the dataset's stored range so that its own to_float applies unchanged.
        stacked = np.clip(np.rint(stacked.astype(np.float64) * (scale / 255.0)), 0, 255).astype(np.uint8)
    return np.asarray(dataset.to_float(stacked), dtype=np.float32), used


# -- texts ------------------------------------------------------------------------------------------------------


def is_text_input(support: str | Path) -> bool:
    """Whether a support path holds texts: a ``.txt`` file, or a folder of ``.txt`` files without class sub-folders."""
    path = Path(support).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".txt"
    if not path.is_dir():
        return False
    entries = [e for e in path.iterdir() if not is_hidden(e.name)]
    return not any(e.is_dir() for e in entries) and any(e.is_file() and e.suffix.lower() == ".txt" for e in entries)


def _read_lines(path: Path, field: str) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file, ``(line number from 1, stripped text)``."""
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise PredictionError(f"A text file may hold at most {MAX_TEXT_BYTES} bytes. Received: {field}={str(path)!r} "
                              f"({size} bytes)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PredictionError(f"Texts must be UTF-8 text files, one example a line; this file is not (byte "
                              f"{exc.start} is not UTF-8). Received: {field}={str(path)!r}") from None
    if "\x00" in text:
        raise PredictionError(f"Texts must be UTF-8 text files, one example a line; this file holds NUL bytes (a "
                              f"binary file?). Received: {field}={str(path)!r}")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_line_count(count: int, field: str) -> None:
    if count > MAX_TEXT_LINES:
        raise PredictionError(f"A text prediction reads at most {MAX_TEXT_LINES} lines of {field} texts. "
                              f"Received: {field}_lines={count}")


def _check_classes(classes: dict[str, list[str]], source: str) -> dict[str, list[str]]:
    empty = [name for name, texts in classes.items() if not texts]
    if empty:
        raise PredictionError(f"Every class of the support set needs at least one example text; these have none: "
                              f"{', '.join(empty)}. Received: support={source!r}")
    if len(classes) < 2:
        raise PredictionError(f"The support set needs at least 2 classes to classify between. Received: "
                              f"{len(classes)} class(es) ({', '.join(classes) or 'none'}) in support={source!r}")
    _check_line_count(sum(len(t) for t in classes.values()), "support")
    return {name: classes[name] for name in sorted(classes)}


def parse_labelled_lines(lines: list[tuple[int, str]] | str, source: str = "support") -> dict[str, list[str]]:
    """Reads ``class: example`` lines into ``{class: [examples]}`` (classes sorted by name).

    Args:
        lines: The text (blank lines are skipped), or its ``(line number, line)`` pairs.
        source: What the lines came from, for messages.

    Raises:
        PredictionError: A line without ``:`` or with an empty class or example, fewer than 2 classes, or more
            than :data:`MAX_TEXT_LINES` examples.
    """
    if isinstance(lines, str):
        lines = [(i, line.strip()) for i, line in enumerate(lines.splitlines(), start=1) if line.strip()]
    classes: dict[str, list[str]] = {}
    for number, line in lines:
        name, sep, example = line.partition(":")
        if not sep or not name.strip() or not example.strip():
            raise PredictionError(f"Each support line must read 'class: example text' (class name, a colon, then "
                                  f"the example). Received: line {number}={line[:80]!r} of support={source!r}")
        classes.setdefault(name.strip(), []).append(example.strip())
    return _check_classes(classes, source)


def list_text_support(support: str | Path) -> dict[str, list[str]]:
    """Reads a text support set: a folder with one ``<class>.txt`` per class (one example a line; the file name
    without ``.txt`` is the class), or one ``.txt`` file of ``class: example`` lines.

    Returns:
        ``{class name: [texts]}``, classes sorted by name (class ``i`` of the episode is the ``i``-th).

    Raises:
        FileNotFoundError: Nothing is there.
        PredictionError: A file that is not UTF-8 text or is too large, a class without examples, fewer than 2
            classes, other files in the folder, or more than :data:`MAX_TEXT_LINES` examples.
    """
    path = Path(support).expanduser()
    if path.is_file():
        return parse_labelled_lines(_read_lines(path, "support"), str(support))
    if not path.is_dir():
        raise FileNotFoundError(
            f"The text support set must be a folder with one <class>.txt per class (one example a line), or one "
            f".txt file of 'class: example' lines. Received: support={str(support)!r}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not is_hidden(p.name))
    others = [p.name for p in files if p.suffix.lower() != ".txt"]
    if others:
        raise PredictionError(f"A text support folder holds one <class>.txt per class and nothing else. Received: "
                              f"files={others[:5]} in support={str(support)!r}")
    classes = {p.stem: [text for _, text in _read_lines(p, "support")] for p in files}
    return _check_classes(classes, str(support))


def read_text_queries(query: str | Path) -> list[tuple[str, int, str]]:
    """Reads the query texts: a ``.txt`` file with one text a line, or a folder of such files (sorted).

    Returns:
        ``(file name or path relative to the folder, line number, text)`` for each non-blank line.

    Raises:
        FileNotFoundError: Nothing is there.
        PredictionError: No text, a file that is not UTF-8 text or too large, or more than :data:`MAX_TEXT_LINES`.
    """
    path = Path(query).expanduser()
    if path.is_file():
        files, base = [path], None
    elif path.is_dir():
        files, base = [p for p in _image_files(path) if p.suffix.lower() == ".txt"], path
    else:
        raise FileNotFoundError(f"The query texts must be a .txt file with one text a line, or a folder of them. "
                                f"Received: query={str(query)!r}")
    out = []
    for file in files:
        name = file.name if base is None else file.relative_to(base).as_posix()
        out += [(name, number, text) for number, text in _read_lines(file, "query")]
        _check_line_count(len(out), "query")
    if not out:
        raise PredictionError(f"The query texts hold no non-blank line to classify. Received: query={str(query)!r}")
    return out


def prepare_texts(texts: list[str], dataset: Any) -> np.ndarray:
    """Encodes texts with the run's dataset's own ``encode`` (its tokenizer, as the run's params set it) into the
    float inputs its model takes.

    Raises:
        PredictionError: The dataset declares no ``encode``, or its rows do not have the dataset's ``input_shape``.
    """
    encode = getattr(dataset, "encode", None)
    if encode is None:
        raise PredictionError("The run's dataset takes no texts (it declares no ClassificationDataset.encode). "
                              "Received: encode=None")
    rows = np.asarray(encode(list(texts)))
    x = np.asarray(dataset.to_float(rows), dtype=np.float32)
    shape = tuple(int(s) for s in dataset.input_shape)
    if x.shape != (len(texts), *shape):
        raise PredictionError(f"The dataset's encode returned inputs of another shape than its input_shape "
                              f"{shape}. Received: shape={tuple(x.shape)}")
    return x


def _check_checkpoint_fits(path: Path, algorithm: Any, run: Any, config: Any, num_classes: int) -> None:
    with np.load(path) as data:
        import json

        meta = json.loads(bytes(data["meta"]).decode())
        shapes = [tuple(data[f"var_{i}"].shape) for i in range(int(meta["n_vars"]))]
    variables = list(algorithm.variables)
    mine = [tuple(int(d) for d in v.shape) for v in variables]
    if shapes == mine:
        return
    if num_classes != int(config.ways):
        raise PredictionError(
            f"Run {run.id} ({config.algorithm}) was trained on {config.ways}-way episodes and its model has a "
            f"{config.ways}-way output layer, so it classifies exactly {config.ways} classes; the support set has "
            f"{num_classes}. Give a support set with {config.ways} class folders, or use a run of an algorithm "
            f"without a fixed output layer (a metric-based one such as Prototypical Networks). "
            f"Received: classes={num_classes}"
        )
    raise PredictionError(
        f"Run {run.id}'s checkpoint does not fit the model built from its config (the plugin or its version "
        f"changed). Received: checkpoint={str(path)!r}"
    )


class SessionCache:
    """The last few runs' models, built and loaded, for a process that predicts many times (the warm worker).

    An entry is keyed by run, checkpoint file (its modification time and size: a resumed run's new checkpoint is a
    new entry), number of support classes and device; it holds the session and the variable values just after the
    checkpoint was loaded, which are put back before each reuse, so every prediction starts from the checkpoint
    exactly as a fresh process would.

    Args:
        max_entries: Models kept; the least recently used is dropped first.
    """

    def __init__(self, max_entries: int = 3):
        from collections import OrderedDict

        self.max_entries = int(max_entries)
        self._entries: OrderedDict[tuple, tuple[Any, list[np.ndarray]]] = OrderedDict()
        #: Sessions built (a reuse builds none): how often the cache missed.
        self.built = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Any | None:
        """The session of ``key`` with its checkpoint's values put back, or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        session, values = entry
        for variable, value in zip(session.algorithm.variables, values):
            variable.assign(value)
        return session

    def put(self, key: tuple, session: Any) -> None:
        """Keeps ``session`` (its checkpoint just loaded) under ``key``, dropping the oldest beyond ``max_entries``."""
        from metalab.core.engine import functional

        values = [np.array(functional.to_numpy(v)) for v in session.algorithm.variables]
        self._entries[key] = (session, values)
        self._entries.move_to_end(key)
        self.built += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _check_input_kind(dataset: Any, texts: bool, run: Any, config: Any, support: Any) -> None:
    """Refuses texts for a run whose dataset takes images, and images for a text run."""
    takes_texts = getattr(dataset, "encode", None) is not None
    if texts and not takes_texts:
        raise PredictionError(
            f"Run {run.id} is on {config.dataset!r}, whose inputs are not texts (the dataset declares no encode), so "
            f"it cannot classify texts: give a support folder with one sub-folder of images per class and query "
            f"images. Received: support={str(support)!r}")
    if not texts and takes_texts:
        raise PredictionError(
            f"Run {run.id} is on the text dataset {config.dataset!r}: give texts, not images: a support folder with "
            f"one <class>.txt per class (one example a line) or one .txt file of 'class: example' lines, and a "
            f"query .txt file with one text a line. Received: support={str(support)!r}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predict(store: Any, run_id: str, registry: Any, support_dir: str | Path, query_dir: str | Path, *,
            settings: Any = None, invert: bool | None = None,
            sessions: SessionCache | None = None) -> list[dict[str, Any]]:
    """Adapts a run to a support set and classifies query images, or query texts for a text run.

    The run's checkpoint is loaded into the algorithm built from its config, with the episode's ``ways`` set to
    the number of support classes: an algorithm whose weights do not depend on it (ProtoNet) accepts any
    number; one with a ``ways``-unit output layer (MAML, Reptile) is refused unless the numbers match. Shots may
    differ from the run's and from class to class.

    Args:
        store: The :class:`~metalab.core.store.RunStore`.
        run_id: The run (a unique prefix of its id works where the store accepts one).
        registry: The plugin registry (it must know the run's dataset, algorithm and backbone).
        support_dir: A folder with one sub-folder per class (the class names), a few images each. For a text run
            (its dataset declares ``encode``): a folder with one ``<class>.txt`` per class, one example a line, or
            one ``.txt`` file of ``class: example`` lines (:func:`list_text_support`).
        query_dir: A folder of images (any depth), or one image file; for a text run, a ``.txt`` file with one
            text a line, or a folder of them.
        settings: :class:`~metalab.core.settings.Settings` (data folders); read from the environment if omitted.
        invert: Override the dataset's ``info["invert"]`` (see the module docstring).
        sessions: Models kept between calls (a long-lived process); ``None`` builds the model every time.

    Returns:
        One dict per query file, in sorted order: ``{"file": path relative to query_dir (or the name),
        "path": absolute path, "predicted": class name, "probabilities": {class name: float}}``; the
        probabilities are the softmax of the algorithm's ``predictions`` and sum to 1. For texts, one dict per
        non-blank query line: ``{"file": "<file>:<line>", "line", "text", "predicted", "probabilities"}``.

    Raises:
        FileNotFoundError: The run has no checkpoint, or a folder does not exist.
        PredictionError: Unusable images or texts, a support set whose class count the model cannot take, texts
            for a run whose dataset takes images or images for a text run, a dataset that is neither, or an
            algorithm whose ``evaluate`` returns no ``predictions``.
    """
    from metalab.core.engine import functional
    from metalab.core.engine.config import RunConfig
    from metalab.core.contract.specs import TaskBatch
    from metalab.core.engine.checkpoints import checkpoint_path, load_checkpoint
    from metalab.core.engine.devices import device_scope
    from metalab.core.engine.session import build_session

    run = store.get_run(run_id)
    config = RunConfig(**run.config)
    ckpt = checkpoint_path(store, run.id)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"Run {run.id} has no checkpoint yet (status {run.status}); train it first. Received: run={run_id!r}"
        )
    spec = registry.dataset(config.dataset)
    if spec.kind != "classification":
        raise PredictionError(
            f"Prediction classifies images or texts; run {run.id} is on the {spec.kind} dataset {config.dataset!r}. "
            f"Received: dataset={config.dataset!r}"
        )
    texts = is_text_input(support_dir)
    if texts:
        support: dict[str, list[Any]] = list_text_support(support_dir)
        text_queries = read_text_queries(query_dir)
    else:
        support = list_support_set(support_dir)
        queries = list_query_images(query_dir)
    class_names = list(support)

    stat = ckpt.stat()
    key = (run.id, stat.st_mtime_ns, stat.st_size, len(class_names), config.device)
    with device_scope(config.device):
        session = sessions.get(key) if sessions is not None else None
        if session is None:
            session = build_session(registry, config.model_copy(update={"ways": len(class_names)}), settings)
            _check_checkpoint_fits(ckpt, session.algorithm, run, config, len(class_names))
            load_checkpoint(ckpt, session.algorithm)
            if sessions is not None:
                sessions.put(key, session)
        else:
            import keras

            keras.utils.set_random_seed(config.seed)  # as build_session seeds a fresh model
        dataset = session.dataset
        _check_input_kind(dataset, texts, run, config, support_dir)
        support_x, support_y = [], []
        for label, name in enumerate(class_names):
            x = prepare_texts(support[name], dataset) if texts else prepare_images(support[name], dataset,
                                                                                    invert=invert)[0]
            support_x.append(x)
            support_y.append(np.full(len(x), label, dtype=np.int32))
        if texts:
            query_x = prepare_texts([text for _, _, text in text_queries], dataset)
        else:
            query_x, used = prepare_images(queries, dataset, invert=invert, skip_non_images=True)
        batch = TaskBatch(
            support_x=np.concatenate(support_x)[None],
            support_y=np.concatenate(support_y)[None],
            query_x=query_x[None],
            # Query labels are unknown; evaluate's loss and accuracy are ignored.
            query_y=np.zeros((1, len(query_x)), dtype=np.int32),
        )
        out = session.algorithm.evaluate(batch)
    if "predictions" not in out:
        raise PredictionError(
            f"Algorithm {config.algorithm!r} returns no 'predictions' from evaluate(), so it cannot classify new "
            f"images. Received: keys={sorted(out)}"
        )
    logits = np.asarray(functional.to_numpy(out["predictions"]), dtype=np.float64)
    logits = logits.reshape(len(query_x), -1)
    if logits.shape[-1] != len(class_names):
        raise PredictionError(
            f"Algorithm {config.algorithm!r} returned {logits.shape[-1]} scores per query for {len(class_names)} "
            f"support classes. Received: predictions.shape={tuple(logits.shape)}"
        )
    probabilities = _softmax(logits)
    if texts:
        return [{"file": f"{name}:{number}", "line": number, "text": text,
                 "predicted": class_names[int(np.argmax(probs))],
                 "probabilities": {c: float(p) for c, p in zip(class_names, probs)}}
                for (name, number, text), probs in zip(text_queries, probabilities)]
    base = Path(query_dir).expanduser()
    results = []
    for path, probs in zip(used, probabilities):
        relative = path.name if base.is_file() else path.relative_to(base).as_posix()
        results.append({
            "file": relative,
            "path": str(path.resolve()),
            "predicted": class_names[int(np.argmax(probs))],
            "probabilities": {name: float(p) for name, p in zip(class_names, probs)},
        })
    return results


def adapt_to_task(store: Any, run_id: str, registry: Any, task: int, *, settings: Any = None,
                  steps: int | None = None, episodes_shown: int = 3) -> dict[str, Any]:
    """Adapts a finished environment run to one of its fixed test tasks and returns what happened (RL Predict).

    The task is ``task``-th of the run's fixed test tasks (the ones its meta-test scored, in order). The policy
    adapts with the algorithm's own steps (``eval_steps`` unless ``steps`` is given), each on fresh episodes, as
    at meta-test time. Where the paths can be drawn (a family with ``plot_xy``, an algorithm with
    ``adapted_trajectories``) the returns are those of the very episodes drawn.

    Returns:
        ``{"run", "task", "index", "tasks", "returns": [after 0..steps steps], "steps", "trajectories"}``;
        ``trajectories`` (a family with ``plot_xy``) is ``{"task", "goal", "paths": [[path per episode] per
        step]}`` or ``None``.

    Raises:
        PredictionError: The run is not on an environment dataset, or ``task`` is not one of its test tasks.
        FileNotFoundError: The run has no checkpoint yet.
    """
    from metalab.core.engine.checkpoints import checkpoint_path, load_checkpoint
    from metalab.core.engine.config import RunConfig
    from metalab.core.engine.devices import device_scope
    from metalab.core.engine.evaluation import eval_steps
    from metalab.core.engine.fixed_tasks import EVAL_SEED
    from metalab.core.engine.rollouts import Rollouts, fixed_environment_tasks, trajectory_paths
    from metalab.core.engine.session import build_session

    run = store.get_run(run_id)
    config = RunConfig(**run.config)
    spec = registry.dataset(config.dataset)
    if spec.kind != "environment":
        raise PredictionError(
            f"Adapting to a task is for runs on environment datasets; run {run.id} is on the {spec.kind} dataset "
            f"{config.dataset!r}: give it a support set and queries instead. Received: task={task!r}")
    count = int(config.test_episodes)
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < count:
        raise PredictionError(f"task: run {run.id} was scored on {count} test tasks, numbered 0 to {count - 1}. "
                              f"Received: task={task!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 20):
        raise PredictionError(f"steps: adaptation steps must be an integer from 0 to 20. Received: steps={steps!r}")
    ckpt = checkpoint_path(store, run.id)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"Run {run.id} has no checkpoint yet (status {run.status}); train it first. Received: run={run_id!r}")
    with device_scope(config.device):
        session = build_session(registry, config, settings)
        load_checkpoint(ckpt, session.algorithm)
        family, algorithm = session.dataset, session.algorithm
        fixed = fixed_environment_tasks(family, "test", count, EVAL_SEED)
        chosen = fixed.tasks[task]
        steps = eval_steps(algorithm) if steps is None else steps
        rollouts = Rollouts(family, np.random.default_rng([EVAL_SEED, 5, task]))
        trajectories = None
        replay = getattr(algorithm, "adapted_trajectories", None)
        if callable(getattr(family, "plot_xy", None)) and callable(replay):
            # One adaptation gives both the returns and the paths drawn, so the two always agree.
            runs = replay(chosen, rollouts, steps)
            returns = [float(traj.returns()[0]) for traj in runs]
            goal, paths = trajectory_paths(family, chosen, runs, episodes_shown)
            trajectories = {"task": family.describe_task(chosen), "goal": goal, "paths": paths}
        else:
            returns = algorithm.adaptation_returns([chosen], rollouts, steps)[0]
    return {"run": run.id, "task": family.describe_task(chosen), "index": task, "tasks": count,
            "returns": [float(v) for v in returns], "steps": int(steps), "trajectories": trajectories}
