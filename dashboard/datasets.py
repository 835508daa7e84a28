"""The Datasets page: look at any dataset before training on it, and upload a zip of your own images.

Browse: pick a dataset and its parameters, load it, and see its size, classes per split and a sample grid; when
its files are missing, the plugin's message says which files and where to put them. Your images: upload a zip
with one sub-folder per class (size-capped, checked for zip-slip paths and zip bombs, extracted under
``METALAB_DATA_DIR/uploads/``), see its classes and images, and open the Train page set up for it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from metalab.core.data.archives import UnsafeArchiveError
from metalab.core.contract.specs import SPLITS

from .forms import MISSING, FormField, from_link, link_params, render_fields, schema_fields
from .state import mode, services


IMAGEFOLDER = "metalab.imagefolder"
#: The algorithm the "Train on these images" button proposes: it takes any number of classes at prediction time.
TRAIN_ALGORITHM = "metalab.protonet"

_VIEWS = ("Browse a dataset", "Your images")
_VIEW = "datasets.view"
_DATASET = "datasets.dataset"
_SHOWN = "datasets.shown"
_FROM_LINK = "datasets.shown_by_link"
_UPLOAD = "datasets.upload"
_UPLOADED = "datasets.uploaded_now"


@st.cache_data(ttl=3600, max_entries=32, show_spinner=False)
def _summary(dataset_id: str, params_json: str, data_dir: str, episode: tuple[int, int, int] | None) -> dict:
    # data_dir is part of the key: the same parameters name other files under another METALAB_DATA_DIR.
    del data_dir
    return services().dataset_summary(dataset_id, json.loads(params_json), episode=episode)


def _params_key(dataset_id: str, params: dict[str, Any]) -> str:
    return json.dumps({"id": dataset_id, "params": params}, sort_keys=True, default=str)


def _grey_or_rgb(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _sample_texts(info: dict[str, Any]) -> None:
    """A text dataset's sample sentences per split and class (``info["sample_texts"]``), in a table."""
    rows = [{"split": split, "class": str(name), "examples": " · ".join(map(str, texts))}
            for split, classes in (info.get("sample_texts") or {}).items()
            for name, texts in list(classes.items())[:5]]
    if rows:
        st.subheader("Sample texts")
        st.dataframe(pd.DataFrame(rows), hide_index=True)


def show_summary(summary: dict[str, Any]) -> None:
    """Draws a dataset summary: totals, a table of the splits, problems, its info and the sample grid."""
    if summary.get("kind") != "classification":
        st.info(f"A {summary.get('kind')} task family: tasks are generated, so there are no classes or images "
                f"to show. Input shape {tuple(summary.get('input_shape') or ())}.")
        with st.expander("Dataset info"):
            st.json(summary.get("info") or {}, expanded=False)
        return
    info = summary.get("info") or {}
    text = info.get("modality") == "text"
    unit = "examples" if text else "images"  # a text dataset's inputs are token rows, not pictures
    cols = st.columns(3)
    cols[0].metric("Classes", f"{summary['total_classes']:,}")
    cols[1].metric(unit.capitalize(), f"{summary['total_images']:,}")
    cols[2].metric("Tokens per example" if text else "Input shape", " × ".join(str(s) for s in summary["input_shape"]))
    rows = [{"split": name, "classes": row["classes"], unit: row["images"],
             f"{unit} per class": (f"{row['min_per_class']}" if row["min_per_class"] == row["max_per_class"]
                                   else f"{row['min_per_class']}–{row['max_per_class']}")}
            for name, row in summary["splits"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    if text:
        _sample_texts(info)
    for problem in summary.get("problems") or []:
        st.warning(problem)
    unreadable = info.get("unreadable") or []
    if unreadable:
        st.warning(f"{len(unreadable)} files could not be read as images and were left out: "
                   + "; ".join(f"{u.get('file')} ({u.get('error')})" for u in unreadable[:10])
                   + (" ..." if len(unreadable) > 10 else ""))
    if info.get("dropped_classes"):
        st.warning("Classes left out as too small: " + ", ".join(map(str, info["dropped_classes"])))
    with st.expander("Dataset info"):
        st.json(info, expanded=False)
    st.subheader("Sample images")
    samples = summary.get("samples") or {}
    if not any(samples.values()):
        st.caption("This dataset's inputs are not images.")
    for split in [s for s in SPLITS if s in samples] + [s for s in samples if s not in SPLITS]:
        if not samples[split]:
            continue
        st.markdown(f"**{split}** — {len(samples[split])} of {summary['splits'][split]['classes']} classes")
        columns = st.columns(len(samples[split]))
        for col, item in zip(columns, samples[split]):
            col.caption(str(item["class"]))
            col.image([_grey_or_rgb(np.asarray(im)) for im in item["images"]], width=56)


def _files_where(summary: dict[str, Any]) -> str | None:
    info = summary.get("info") or {}
    if info.get("source"):
        return services().redact(str(info["source"]))
    if isinstance(info.get("sources"), dict):
        return services().redact(", ".join(str(v) for v in info["sources"].values()))
    return None


def load_summary(dataset_id: str, params: dict[str, Any], episode: tuple[int, int, int] | None = None,
                 ) -> dict | None:
    """A dataset's summary (cached; see ``Services.dataset_summary``), or ``None`` after drawing why it failed:
    missing files with the plugin's message naming them and where to put them, or invalid parameters."""
    svc = services()
    try:
        # The summary cache is shared by every session: the caller's rights are checked before it is used.
        svc.check_dataset_params(dataset_id, params)
        with st.spinner(f"Loading {dataset_id} (the first load decodes its files; later loads are cached)..."):
            return _summary(dataset_id, json.dumps(params, sort_keys=True, default=str),
                            str(svc.settings.data_dir), episode)
    except FileNotFoundError as exc:
        st.error(f"The files of {dataset_id} are missing. {svc.redact(str(exc))}")
        if mode() == "private":
            st.info(f"METALAB_DATA_DIR is `{svc.settings.data_dir}`. Put the files where the message says, then "
                    "load again.")
    except PermissionError as exc:  # AccessError, CapError: the message is the whole explanation
        st.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - bad parameters or unusable files: explain, never crash
        st.error(f"{dataset_id} cannot be loaded with these parameters: {type(exc).__name__}: {svc.redact(str(exc))}")
    return None


def _browse(catalog: dict[str, dict[str, Any]], query: dict[str, str]) -> None:
    if not catalog:
        st.error("No dataset plugin is loaded; see the Plugins page.")
        return
    options = list(catalog)
    problems: list[str] = []
    if _DATASET not in st.session_state:
        linked = query.get("dataset")
        if linked is not None and linked not in options:
            problems.append(f"Link parameter ignored: dataset={linked!r} is not loaded (loaded: {', '.join(options)}).")
        st.session_state[_DATASET] = linked if linked in options else (
            "metalab.digits" if "metalab.digits" in options else options[0])
        if query.get("shown") == "1" and linked in options:
            st.session_state[_FROM_LINK] = True
    dataset_id = st.selectbox("Dataset", options, key=_DATASET,
                              format_func=lambda o: f"{catalog[o]['title']} ({o})")
    row = catalog[dataset_id]
    st.caption(row["description"])
    if row.get("paper"):
        st.caption(row["paper"])
    fields = schema_fields(row["params"], row.get("machine"))
    linked_for_this = query if query.get("dataset") == dataset_id else {}

    def initial(ff: FormField) -> Any:
        try:
            linked = from_link(ff, linked_for_this, f"dataset.{ff.name}")
        except ValueError as exc:
            problems.append(f"Link parameter ignored: {exc}")
            linked = MISSING
        if ff.machine and f"dataset.{ff.name}" in linked_for_this:
            problems.append(f"Link parameter ignored: dataset.{ff.name} names a server path, URL or checksum, "
                            "which a link cannot set.")
        return row["defaults"].get(ff.name, ff.default) if linked is MISSING else linked

    hidden = mode() == "demo"
    if fields:
        with st.expander("Parameters", expanded=dataset_id == IMAGEFOLDER and not hidden):
            params, errors = render_fields(fields, f"datasets.params.{dataset_id}", initial, hide_machine=hidden)
            if hidden and any(ff.machine for ff in fields):
                st.caption("Paths, URLs and checksums keep the plugin's defaults in demo mode.")
    else:
        params, errors = {}, []
    for line in problems:
        st.warning(line)
    # Every problem at once: text that did not parse (left out, so not reported again) and the schema's rules.
    errors = errors + services().dataset_param_problems(dataset_id, params)
    for line in errors:
        st.error(line)

    key = _params_key(dataset_id, params)
    if st.session_state.pop(_FROM_LINK, False) and not errors:
        st.session_state[_SHOWN] = key  # the link was shared with the summary open
    if st.button("Load and summarise", key="datasets.load", type="primary", disabled=bool(errors)):
        st.session_state[_SHOWN] = key
    shown = st.session_state.get(_SHOWN) == key
    flat = {"view": "browse", "dataset": dataset_id}
    flat.update(link_params(fields, params, row["defaults"], "dataset."))
    if shown:
        flat["shown"] = "1"
    st.query_params.from_dict(flat)
    if errors:
        st.caption(f"Load and summarise is disabled: fix the {len(errors)} problem"
                   f"{'s' if len(errors) != 1 else ''} above.")
    if not shown:
        st.caption("Loading reads the dataset's files (and may download them if the plugin does so and "
                   "METALAB_OFFLINE is not set).")
        return
    episode = None
    if row["kind"] == "classification":
        defaults = {"ways": 5, "shots": 1, "queries": 15, **(row.get("episode_defaults") or {})}
        episode = (int(defaults["ways"]), int(defaults["shots"]), int(defaults["queries"]))
    if dataset_panel(dataset_id, params, episode) and episode is not None:
        st.caption(f"Checked against this dataset's default episodes: {episode[0]}-way {episode[1]}-shot, "
                   f"{episode[2]} queries per class.")


def dataset_panel(dataset_id: str, params: dict[str, Any], episode: tuple[int, int, int] | None = None) -> bool:
    """Loads a dataset (cached) and draws where its files are, its summary and sample grid, or why it failed.

    Other pages (the Train page) may call this to show the chosen dataset.

    Args:
        dataset_id: A loaded dataset id.
        params: Its parameters as the form holds them.
        episode: ``(ways, shots, queries)`` to check; each problem is drawn as a warning.

    Returns:
        Whether the dataset loaded.
    """
    summary = load_summary(dataset_id, params, episode)
    if summary is None:
        return False
    where = _files_where(summary)
    st.success("Files present" + (f": loaded from `{where}`." if where else "."))
    show_summary(summary)
    return True


def upload_params(info: dict[str, Any]) -> dict[str, Any]:
    """The image-folder parameters for an uploaded folder: the defaults, with splits of two classes or more.

    The default 60/20/20% class split gives val and test a single class below 8 classes, too few for any
    episode; from 6 to 7 classes the fractions are set so that val and test get two classes each.
    """
    params: dict[str, Any] = {"path": info["root"]}
    n = len(info["classes"])
    if 6 <= n < 8:
        params.update(train_fraction=(n - 4) / n, val_fraction=2 / n)
    return params


def train_setup(summary: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A run config for the Train page on an uploaded folder: episodes sized to fit its smallest split."""
    splits = summary.get("splits") or {}
    ways = max(2, min([5] + [row["classes"] for row in splits.values()]))
    smallest = min([row["min_per_class"] for row in splits.values()] or [2])
    shots = 1
    queries = max(1, min(5, smallest - shots))
    return {"dataset": IMAGEFOLDER, "algorithm": TRAIN_ALGORITHM, "ways": ways, "shots": shots,
            "queries": queries, "dataset_params": dict(params)}


def _upload_section() -> None:
    svc = services()
    caps = svc.upload_caps()
    max_mb = max(1, caps["max_bytes"] >> 20)
    st.markdown("A zip with **one sub-folder per class**, each holding that class's images (any format Pillow "
                "reads), e.g. `cats/001.jpg`, `dogs/001.jpg`; one wrapping folder (`photos/cats/...`) is fine. "
                f"At most {max_mb} MB and {caps['max_files']:,} files (METALAB_MAX_UPLOAD_MB, METALAB_MAX_ARCHIVE_FILES); "
                f"you may add {caps['uploads_left']} more folders, {caps['unpacked_bytes_left'] >> 20:,} MB unpacked.")
    uploaded = st.file_uploader("Zip of class folders", type=["zip"], key="datasets.zip",
                                max_upload_size=max_mb)
    if uploaded is not None and st.button("Extract", key="datasets.extract", type="primary"):
        try:
            info = svc.upload_dataset(uploaded, uploaded.name)
        except UnsafeArchiveError as exc:
            st.error(f"The zip was refused and nothing was extracted: {exc}")
        except PermissionError as exc:  # a cap: the message names it
            st.error(f"The zip was refused and nothing was extracted: {exc}")
        except Exception as exc:  # noqa: BLE001 - a disk or permission error must not crash the page
            st.error(f"The zip could not be extracted: {type(exc).__name__}: {svc.redact(str(exc))}")
        else:
            st.session_state[_UPLOAD] = info["name"]
            st.session_state[_UPLOADED] = info["name"]


def _your_images(query: dict[str, str]) -> None:
    svc = services()
    _upload_section()
    uploads = svc.uploads()
    if not uploads:
        st.info("No uploaded image folders yet.")
        return
    names = [u["name"] for u in uploads]
    by_name = {u["name"]: u for u in uploads}
    if st.session_state.get(_UPLOAD) not in names:
        linked = query.get("upload")
        st.session_state[_UPLOAD] = linked if linked in names else names[0]
    name = st.selectbox("Uploaded image folder", names, key=_UPLOAD,
                        format_func=lambda n: f"{n} — {len(by_name[n]['classes'])} classes, "
                                              f"{by_name[n]['images']} images")
    st.query_params.from_dict({"view": "upload", "upload": name})
    if st.session_state.pop(_UPLOADED, None) == name:
        st.success(f"Extracted as `uploads/{name}`.")
    show_upload(by_name[name])


def show_upload(info: dict[str, Any]) -> None:
    """Draws one uploaded folder: its class and image counts, the dataset built from it, and a Train button."""
    from .train import open_in_train

    classes = info["classes"]
    st.subheader(f"{info['name']}: {len(classes)} classes, {info['images']} images")
    st.caption(f"Class folders in `{services().redact(info['root'])}`.")
    if classes:
        table = pd.DataFrame({"class": list(classes), "images": list(classes.values())})
        st.dataframe(table, hide_index=True)
    if info["other_files"]:
        st.caption(f"{len(info['other_files'])} files are not images in a class folder and are ignored: "
                   + ", ".join(info["other_files"][:10]) + (" ..." if len(info["other_files"]) > 10 else ""))
    if not classes:
        st.error("No class folders with images: the zip should hold one sub-folder per class, each holding that "
                 "class's images.")
        return
    params = upload_params(info)
    # The smallest episode there is: every split needs two classes of two images (one shot, one query).
    summary = load_summary(IMAGEFOLDER, params, (2, 1, 1))
    if summary is not None:
        shares = "/".join(f"{summary['splits'][s]['classes']}" for s in SPLITS if s in summary["splits"])
        st.caption(f"As the Your image folder dataset (metalab.imagefolder) reads it: 28×28 RGB, {shares} classes "
                   "for train/val/test (the Train page can change these). A warning below names what stops even "
                   "2-way 1-shot episodes; 6 classes or more give every split two.")
        show_summary(summary)
        config = train_setup(summary, params)
        st.caption(f"The Train page opens with {config['algorithm']} on {config['ways']}-way {config['shots']}-shot "
                   f"episodes with {config['queries']} queries, sized to this folder's smallest split and class.")
        if st.button("Train on these images", key="datasets.train", type="primary"):
            open_in_train(config)
    if st.button("Delete this upload", key="datasets.delete"):
        try:
            services().delete_upload(info["name"])
        except PermissionError as exc:
            st.error(str(exc))
        else:
            st.session_state.pop(_UPLOAD, None)
            st.rerun()


def datasets() -> None:
    """The Datasets page."""
    st.title("Datasets")
    svc = services()
    query = {k: st.query_params[k] for k in st.query_params}
    if _VIEW not in st.session_state:
        st.session_state[_VIEW] = _VIEWS[1] if query.get("view") == "upload" or "upload" in query else _VIEWS[0]
    view = st.radio("View", _VIEWS, key=_VIEW, horizontal=True, label_visibility="collapsed")
    if view == _VIEWS[0]:
        _browse(svc.catalog()["datasets"], query)
    else:
        _your_images(query)
