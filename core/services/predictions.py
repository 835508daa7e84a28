"""The Services section that classifies new images or texts with a finished run, in a worker process (never TensorFlow
here)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from metalab.core.services.datasets import upload_limits


class PredictionsMixin:
    """The prediction methods of :class:`~metalab.core.services.Services`."""

    def stage_prediction(self, support_zip: bytes | Any | None = None,
                         queries: list[tuple[str, bytes]] | None = None, *,
                         max_bytes: int | None = None) -> dict[str, Path | None]:
        """Writes uploaded support and query images to a fresh folder for :meth:`predict`.

        The folder is ``METALAB_HOME/predictions/<time>-<random>/`` with ``support/`` (the zip, extracted
        safely) and ``query/`` (the query files); folders older than a day are deleted on each call.

        Args:
            support_zip: A zip of class sub-folders (bytes or a binary file object), or ``None``.
            queries: ``(file name, bytes)`` of each query image, or ``None``.
            max_bytes: The largest support zip, and the largest total of the query files (``None``: the
                default of :meth:`upload_dataset`).

        Returns:
            ``{"support": folder or None, "query": folder or None}``.

        Raises:
            UnsafeArchiveError: The support zip is refused (see :meth:`upload_dataset`).
            ValueError: The query files are over ``max_bytes`` together.
        """
        import io
        import shutil

        from metalab.core.data.archives import UnsafeArchiveError, ZipLimits, safe_extract_zip
        from metalab.core.data.images import check_image_header

        cap = int(self.settings.max_upload_mb) << 20
        max_bytes = cap if max_bytes is None else min(int(max_bytes), cap)
        folder = self._prediction_folder()
        out: dict[str, Path | None] = {"support": None, "query": None}
        try:
            if support_zip is not None:
                if isinstance(support_zip, (bytes, bytearray, memoryview)):
                    support_zip = io.BytesIO(bytes(support_zip))
                out["support"] = folder / "support"
                limits = upload_limits(max_bytes)
                limits = ZipLimits(max_archive_bytes=limits.max_archive_bytes, max_total_bytes=limits.max_total_bytes,
                                   max_file_bytes=limits.max_file_bytes, max_files=int(self.settings.max_archive_files),
                                   max_ratio=limits.max_ratio)
                try:
                    safe_extract_zip(support_zip, out["support"], limits)
                except UnsafeArchiveError as exc:
                    raise UnsafeArchiveError(self.redact(str(exc))) from None
            if queries:
                total = sum(len(data) for _, data in queries)
                if total > max_bytes:
                    raise ValueError(f"The query images are {total} bytes together; at most {max_bytes} are "
                                     f"allowed. Received: total_bytes={total}")
                out["query"] = folder / "query"
                out["query"].mkdir()
                used: set[str] = set()
                for i, (name, data) in enumerate(queries):
                    # Keep the file's own name (it labels the result) but never its folders.
                    clean = Path(str(name).replace("\\", "/")).name.lstrip(".") or f"query-{i}"
                    if clean in used:
                        clean = f"{i}-{clean}"
                    used.add(clean)
                    # Refused from the header, before anything decodes it (here, in the worker or on the page).
                    check_image_header(bytes(data), clean, int(self.settings.max_image_pixels))
                    (out["query"] / clean).write_bytes(bytes(data))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return out

    def takes_texts(self, run_id: str) -> bool:
        """Whether a finished run classifies texts (its report data shows its episodes as sentences, which a text
        dataset's ``describe`` gives), read from the store without building its dataset: the Predict page then
        asks for pasted texts instead of images. A run without report data counts as an image run."""
        data = self.report_data(run_id) or {}
        return "support_texts" in (data.get("episode") or {})

    def _prediction_folder(self) -> Path:
        """A fresh folder under ``METALAB_HOME/predictions/``; folders older than a day are deleted first."""
        import shutil
        import tempfile
        import time

        base = Path(self.settings.predictions_dir)
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            with contextlib.suppress(OSError):
                if old.is_dir() and time.time() - old.stat().st_mtime > 86_400:
                    shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))

    def predict_texts(self, run_id: str, support: str, queries: str, *, timeout: float = 300.0,
                      warm: bool = False) -> list[dict[str, Any]]:
        """Adapts a finished text run to pasted labelled texts and classifies pasted queries, in a worker process.

        The texts are written to a fresh folder (``support.txt`` and ``query.txt`` under
        ``METALAB_HOME/predictions/``) and go through :meth:`predict`: the same worker job, access checks and
        caps; the run's dataset encodes them with its own tokenizer (``ClassificationDataset.encode``).

        Args:
            run_id: The run (a unique prefix of its id works).
            support: ``class: example`` lines, one labelled example a line (blank lines are skipped).
            queries: The texts to classify, one a line.
            timeout: Seconds to wait for the worker.
            warm: Use the long-lived worker (the dashboard).

        Returns:
            One dict per non-blank query line: ``{"file": "query.txt:<line>", "line", "text", "predicted",
            "probabilities": {class: p}}``.

        Raises:
            PredictionError: The texts are refused (e.g. a line without a class, one class only, too many lines,
                too large) or the run takes no texts; the message names the field and value.
        """
        import shutil

        from metalab.core.engine.predict import MAX_TEXT_BYTES, MAX_TEXT_LINES, PredictionError, parse_labelled_lines

        for field, value in (("support", support), ("queries", queries)):
            if not isinstance(value, str):
                raise PredictionError(f"{field} must be text. Received: {field}={type(value).__name__}")
            size = len(value.encode("utf-8"))
            cap = min(MAX_TEXT_BYTES, int(self.settings.max_upload_mb) << 20)  # the smaller cap is the one that holds
            if size > cap:
                what = "METALAB_MAX_UPLOAD_MB" if cap < MAX_TEXT_BYTES else "a text prediction"
                raise PredictionError(f"The {field} texts may hold at most {cap} bytes ({what}). "
                                      f"Received: {field}_bytes={size}")
        self.run(run_id)  # an unknown run, or another owner's, is refused before anything is written
        # Refused here, before a worker starts, when the text alone is wrong (the worker checks the files again).
        parse_labelled_lines(support, "pasted support")
        lines = sum(1 for line in queries.splitlines() if line.strip())
        if not lines:
            raise PredictionError("The query texts hold no non-blank line to classify. Received: queries=''")
        if lines > MAX_TEXT_LINES:
            raise PredictionError(f"A text prediction reads at most {MAX_TEXT_LINES} lines of query texts. "
                                  f"Received: query_lines={lines}")
        folder = self._prediction_folder()
        try:
            (folder / "support.txt").write_text(support, encoding="utf-8")
            (folder / "query.txt").write_text(queries, encoding="utf-8")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.predict(run_id, folder / "support.txt", folder / "query.txt", timeout=timeout, warm=warm)

    def predict(self, run_id: str, support_dir: str | os.PathLike, query_dir: str | os.PathLike, *,
                invert: bool | None = None, timeout: float = 300.0, warm: bool = False) -> list[dict[str, Any]]:
        """Adapts a finished run to a support set and classifies query images, in a worker process.

        Runs the worker's ``predict`` job (:mod:`metalab.core.worker`, which calls
        :func:`metalab.core.engine.predict.predict`), so TensorFlow is imported there, never here. With ``warm``
        the job goes to this process's long-lived prediction worker (:mod:`metalab.core.serve_worker`), which
        keeps TensorFlow imported and the last few runs' models loaded; while it computes it counts against
        ``max_workers`` like an estimate.

        Args:
            run_id: The run (a unique prefix of its id works).
            support_dir: A folder with one sub-folder per class, a few images each (for a text run: one
                ``<class>.txt`` per class, or one ``.txt`` file of ``class: example`` lines).
            query_dir: A folder of images (any depth), or one image file (for a text run: a ``.txt`` file, one
                text a line).
            invert: Override the dataset's inversion of grey levels; ``None`` follows the run's dataset.
            timeout: Seconds to wait for the worker (TensorFlow import, model build, adaptation).
            warm: Use the long-lived worker (the dashboard) rather than a process of its own (the CLI).

        Returns:
            One dict per query image: ``{"file", "path", "predicted", "probabilities": {class: p}}``.

        Raises:
            PredictionError: The worker refused the inputs or the run (its message, e.g. a support set with
                the wrong number of classes), failed, or took longer than ``timeout``.
        """
        from metalab.core.engine.predict import PredictionError

        run = self.run(run_id)
        if not self.actor.on_machine:
            staged = Path(self.settings.predictions_dir).resolve()
            for field, folder in (("support", support_dir), ("query", query_dir)):
                real = Path(folder).resolve()
                if staged not in real.parents:
                    self.policy.resolve_data_path(self.actor, str(folder), field)
        request = self._request("predict", run=run.id, support=str(support_dir), query=str(query_dir), invert=invert)
        return list(self._prediction_reply(request, timeout, warm, "Prediction"))

    def environment_tasks(self, run_id: str) -> list[str]:
        """The fixed test tasks of an environment run, described in the order ``adapt_to_task`` numbers them.

        Builds the run's task family (its plugin's numpy and Gymnasium code, never TensorFlow) in this process.

        Raises:
            PredictionError: The run is not on an environment dataset, or its family cannot be built here (the
                message names the optional package to install).
        """
        from metalab.core.engine.config import RunConfig
        from metalab.core.engine.fixed_tasks import EVAL_SEED
        from metalab.core.engine.predict import PredictionError
        from metalab.core.engine.rollouts import fixed_environment_tasks

        run = self.run(run_id)
        config = RunConfig(**run.config)
        spec = self.registry.dataset(config.dataset)
        if spec.kind != "environment":
            raise PredictionError(f"Run {run.id} is on the {spec.kind} dataset {config.dataset!r}, not an "
                                  f"environment. Received: run={run_id!r}")
        try:
            family = spec.factory(spec.params(**config.dataset_params), self.settings.data_context())
        except ImportError as exc:
            raise PredictionError(self.redact(str(exc))) from None
        fixed = fixed_environment_tasks(family, "test", int(config.test_episodes), EVAL_SEED)
        return [str(family.describe_task(task)) for task in fixed.tasks]

    def adapt_to_task(self, run_id: str, task: int, *, steps: int | None = None, timeout: float = 300.0,
                      warm: bool = False) -> dict[str, Any]:
        """Adapts a finished environment run to its ``task``-th fixed test task, in a worker process (RL Predict).

        Returns:
            What :func:`metalab.core.engine.predict.adapt_to_task` returns: the task, the average return after
            each adaptation step and, for a family that can plot them, the agent's paths.

        Raises:
            PredictionError: The worker refused the run or the task (its message names the field and value),
                failed, or took longer than ``timeout``.
        """
        from metalab.core.engine.predict import PredictionError

        run = self.run(run_id)
        return dict(self._prediction_reply(self._request("adapt", run=run.id, task=task, steps=steps), timeout,
                                           warm, "Adaptation"))

    def _prediction_reply(self, request: dict[str, Any], timeout: float, warm: bool, what: str) -> Any:
        """Runs a predict or adapt ``request`` in the warm worker (``warm``) or a worker of its own; its result.

        Raises:
            PredictionError: The worker refused the request (its message), crashed (``"<what> failed: <type>:
                <message>"``, no traceback) or took longer than ``timeout``; server paths are redacted.
        """
        from metalab.core.engine.predict import PredictionError

        try:
            if warm:
                reply = self.prediction_worker().request(request, timeout, PredictionError, what,
                                                         hold=self._prediction_slot)
            else:
                reply = self._run_worker(request, timeout, PredictionError, what)
        except PredictionError as exc:
            raise PredictionError(self.redact(str(exc))) from None
        if reply["ok"]:
            return reply["result"]
        error = reply.get("error") or {}
        message = str(error.get("message"))
        if error.get("traceback"):  # a crash, not a refusal of the run or the inputs: say what failed
            message = f"{what} failed: {error.get('type')}: {message}"
        raise PredictionError(self.redact(message))

    def prediction_worker(self) -> Any:
        """This process's long-lived prediction worker for these settings (a
        :class:`~metalab.core.serve_worker.WarmWorker`; started by its first request or by ``start()``)."""
        from metalab.core.serve_worker import warm_worker

        return warm_worker(self._worker_env(), self._worker_limits())

    @contextlib.contextmanager
    def _prediction_slot(self):
        """Counts a computing prediction against ``max_workers`` (as an estimate is), or raises ``LaunchLimitError``."""
        from metalab.core.services.launch import LaunchLimitError

        key = f"predict:{self.actor.id}"
        busy = self._busy_workers(self.active_runs())
        with self._lock:
            if busy >= self.settings.max_workers:
                raise LaunchLimitError(
                    f"{busy} workers (runs, estimates and predictions) are busy; the limit is "
                    f"METALAB_MAX_WORKERS={self.settings.max_workers}. Try again when one has finished. "
                    f"Received: workers={busy}")
            self._probes[key] = self._probes.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._probes[key] -= 1
