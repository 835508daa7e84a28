"""Readers of the few-shot text benchmarks' published files, placed by the user under ``METALAB_DATA_DIR/<name>/``.

Each reader returns ``{class name: [text, ...]}`` (or one such dict per file) and refuses a missing file with a
``FileNotFoundError`` that names the files and the folder, and a malformed one with a ``ValueError`` that names
the file and what was expected. Messages name places as ``METALAB_DATA_DIR/<name>/``, never a server path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["FEWREL_FILES", "CLINC_FILES", "BANKING_FILES", "BAO_CORPORA", "read_fewrel", "read_clinc150",
           "read_banking77", "read_bao2020", "require_files"]

FEWREL_FILES = ("train_wiki.json", "val_wiki.json")
#: CLINC150's variants (Larson et al. 2019), each one JSON file in the repository's data/ folder.
CLINC_FILES = {"full": "data_full.json", "small": "data_small.json", "imbalanced": "data_imbalanced.json",
               "oos_plus": "data_oos_plus.json"}
BANKING_FILES = ("train.csv", "test.csv")


def require_files(folder: Path, name: str, files: tuple[str, ...], where: str) -> list[Path]:
    """The paths of ``files`` in ``folder``, or a ``FileNotFoundError`` naming the missing ones and where they go.

    Args:
        folder: ``data_dir/<name>``.
        name: The dataset's folder name under ``METALAB_DATA_DIR``.
        files: The file names needed.
        where: Where the files are published, for the message.
    """
    paths = [folder / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: {', '.join(missing)} not found. Put {' and '.join(files)} ({where}) in "
            f"METALAB_DATA_DIR/{name}/; metalab never downloads them. Received: missing={missing}"
        )
    return paths


def _load_json(path: Path, name: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: {path.name} is not valid UTF-8 JSON ({e.__class__.__name__}: {e}). "
                         f"Received: file={path.name!r}") from None


def _positions(entity: Any) -> list[int] | None:
    """The token positions of a FewRel entity ``[name, id, [[i, ...], ...]]``, or None when malformed."""
    if not (isinstance(entity, list) and len(entity) == 3 and isinstance(entity[2], list) and entity[2]):
        return None
    spans = entity[2]
    if not all(isinstance(s, list) and s and all(isinstance(i, int) and not isinstance(i, bool) for i in s)
               for s in spans):
        return None
    return [i for s in spans for i in s]


def fewrel_sentence(instance: Any, mark_entities: bool) -> str | None:
    """One FewRel instance ``{"tokens": [...], "h": [...], "t": [...]}`` as text, or None when malformed.

    With ``mark_entities`` the head entity's first mention is wrapped in ``[e1] ... [/e1]`` and the tail's in
    ``[e2] ... [/e2]`` (the usual entity markers; the tokenizer keeps each as one token).
    """
    if not isinstance(instance, dict):
        return None
    tokens = instance.get("tokens")
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
        return None
    head, tail = _positions(instance.get("h")), _positions(instance.get("t"))
    if head is None or tail is None or not all(0 <= i < len(tokens) for i in head + tail):
        return None
    if not mark_entities:
        return " ".join(tokens)
    first_head, first_tail = instance["h"][2][0], instance["t"][2][0]
    before, after = {}, {}
    for span, mark in ((first_head, "e1"), (first_tail, "e2")):
        before.setdefault(min(span), []).append(f"[{mark}]")
        after.setdefault(max(span), []).append(f"[/{mark}]")
    words = []
    for i, token in enumerate(tokens):
        words += before.get(i, []) + [token] + after.get(i, [])
    return " ".join(words)


def read_fewrel(folder: Path, mark_entities: bool = True) -> dict[str, dict[str, list[str]]]:
    """Reads FewRel's ``train_wiki.json`` and ``val_wiki.json`` (Han et al. 2018).

    Each file is ``{relation id: [{"tokens": [...], "h": [name, id, [[positions]]], "t": ...}, ...]}``.

    Args:
        folder: ``METALAB_DATA_DIR/fewrel``.
        mark_entities: Wrap the head and tail entities in marker tokens.

    Returns:
        ``{"train_wiki.json": {relation: [text, ...]}, "val_wiki.json": {...}}``.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: A file is not FewRel's layout (the message names the file, relation and instance).
    """
    paths = require_files(folder, "fewrel", FEWREL_FILES, "from the FewRel repository's data/ folder")
    out = {}
    for path in paths:
        data = _load_json(path, "fewrel")
        if not isinstance(data, dict) or not data:
            size = len(data) if hasattr(data, "__len__") else 0
            raise ValueError(f"fewrel: {path.name} must be a non-empty JSON object {{relation: [instances]}}. "
                             f"Received: {type(data).__name__} with {size} entries")
        relations = {}
        for relation, instances in data.items():
            if not isinstance(instances, list) or not instances:
                raise ValueError(f"fewrel: {path.name}: relation {relation!r} must map to a non-empty list of "
                                 f"instances. Received: {type(instances).__name__}")
            texts = []
            for i, instance in enumerate(instances):
                text = fewrel_sentence(instance, mark_entities)
                if text is None:
                    raise ValueError(
                        f"fewrel: {path.name}: instance {i} of relation {relation!r} is not "
                        '{"tokens": [str, ...], "h": [name, id, [[position, ...]]], "t": [...]} with positions '
                        f"inside its tokens. Received: {str(instance)[:120]}"
                    )
                texts.append(text)
            relations[str(relation)] = texts
        out[path.name] = relations
    return out


def read_clinc150(folder: Path, variant: str = "full") -> dict[str, list[str]]:
    """Reads CLINC150's ``data_<variant>.json`` (Larson et al. 2019): every in-scope intent with all its texts.

    The file is ``{"train": [[text, intent], ...], "val": [...], "test": [...], "oos_train": ..., ...}``; the
    in-scope parts (``train``, ``val``, ``test``) are pooled per intent, since few-shot splits divide intents,
    and the out-of-scope queries (``oos_*``) are left out.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: The file is not CLINC150's layout.
    """
    name = CLINC_FILES[variant]
    (path,) = require_files(folder, "clinc150", (name,), "from the clinc/oos-eval repository's data/ folder")
    data = _load_json(path, "clinc150")
    parts = ("train", "val", "test")
    if not isinstance(data, dict) or any(not isinstance(data.get(p), list) for p in parts):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"clinc150: {name} must be a JSON object with lists 'train', 'val' and 'test' of "
                         f"[text, intent] pairs. Received: keys={keys}")
    intents: dict[str, list[str]] = {}
    for part in parts:
        for i, pair in enumerate(data[part]):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
                raise ValueError(f"clinc150: {name}: item {i} of {part!r} must be [text, intent], two strings. "
                                 f"Received: {str(pair)[:120]}")
            intents.setdefault(pair[1], []).append(pair[0])
    if not intents:
        raise ValueError(f"clinc150: {name} holds no in-scope examples. Received: 0 items in train, val and test")
    return dict(sorted(intents.items()))


def read_banking77(folder: Path) -> dict[str, list[str]]:
    """Reads BANKING77's ``train.csv`` and ``test.csv`` (Casanueva et al. 2020): every category with its texts.

    Each file is a CSV with a header holding the columns ``text`` and ``category``; both files are pooled per
    category, since few-shot splits divide the categories.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: A file lacks the columns or has an empty field.
    """
    paths = require_files(folder, "banking77", BANKING_FILES, "from the PolyAI task-specific-datasets repository's "
                          "banking_data/ folder")
    categories: dict[str, list[str]] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                if "text" not in columns or "category" not in columns:
                    raise ValueError(f"banking77: {path.name} needs a header with the columns text and category. "
                                     f"Received: columns={columns}")
                for line, row in enumerate(reader, start=2):
                    text, category = row.get("text"), row.get("category")
                    if not text or not category:
                        raise ValueError(f"banking77: {path.name} line {line} has an empty text or category. "
                                         f"Received: {row}")
                    categories.setdefault(category.strip(), []).append(text)
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"banking77: {path.name} is not a UTF-8 CSV ({e.__class__.__name__}: {e}). "
                             f"Received: file={path.name!r}") from None
    return dict(sorted(categories.items()))


#: Bao et al.'s (2020) class splits of their four text-classification files, by label number: the meta-train,
#: meta-val and meta-test classes of their released code, and the names the labels stand for where the files
#: come from named categories (HuffPost and Reuters labels carry no names in the files).
_NEWS20 = ("talk.politics.mideast", "sci.space", "misc.forsale", "talk.politics.misc", "comp.graphics", "sci.crypt",
           "comp.windows.x", "comp.os.ms-windows.misc", "talk.politics.guns", "talk.religion.misc", "rec.autos",
           "sci.med", "comp.sys.mac.hardware", "sci.electronics", "rec.sport.hockey", "alt.atheism",
           "rec.motorcycles", "comp.sys.ibm.pc.hardware", "rec.sport.baseball", "soc.religion.christian")
_AMAZON = ("Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books", "CDs_and_Vinyl",
           "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
           "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Home_and_Kitchen", "Kindle_Store",
           "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
           "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games")


def _by_group(names: tuple[str, ...], groups: tuple[str, ...]) -> list[int]:
    return [i for i, n in enumerate(names) if n.split(".")[0] in groups]


BAO_CORPORA: dict[str, dict[str, Any]] = {
    "huffpost": {"file": "huffpost.json", "names": tuple(f"huffpost_{i}" for i in range(41)),
                 "train": list(range(20)), "val": list(range(20, 25)), "test": list(range(25, 41))},
    "amazon": {"file": "amazon.json", "names": _AMAZON, "train": [2, 3, 4, 7, 11, 12, 13, 18, 19, 20],
               "val": [1, 22, 23, 6, 9], "test": [0, 5, 14, 15, 8, 10, 16, 17, 21]},
    "20news": {"file": "20news.json", "names": _NEWS20, "train": _by_group(_NEWS20, ("sci", "rec")),
               "val": _by_group(_NEWS20, ("comp",)),
               "test": [i for i, n in enumerate(_NEWS20) if n.split(".")[0] not in ("sci", "rec", "comp")]},
    "reuters": {"file": "reuters.json", "names": tuple(f"reuters_{i}" for i in range(31)),
                "train": list(range(15)), "val": list(range(15, 20)), "test": list(range(20, 31))},
}


def read_bao2020(folder: Path, corpus: str) -> dict[str, dict[str, list[str]]]:
    """Reads one of Bao et al.'s (2020) JSON-lines files and divides it by their published class splits.

    Each line is ``{"text": [token, ...], "label": int, ...}``; the tokens are joined by spaces (the files are
    already tokenised and lower-cased).

    Args:
        folder: ``METALAB_DATA_DIR/bao2020``.
        corpus: ``"huffpost"``, ``"amazon"``, ``"20news"`` or ``"reuters"``.

    Returns:
        ``{split: {class name: [text, ...]}}`` for ``train``, ``val`` and ``test``.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: A line is not JSON with a token list and an integer label, a label lies outside the corpus's
            classes, or a class of the split has no example.
    """
    spec = BAO_CORPORA[corpus]
    (path,) = require_files(folder, "bao2020", (spec["file"],),
                            "from the data/ folder of Bao et al.'s Distributional-Signatures repository")
    names = spec["names"]
    texts: dict[int, list[str]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                tokens, label = (row.get("text"), row.get("label")) if isinstance(row, dict) else (None, None)
                if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                        and isinstance(label, int) and not isinstance(label, bool)):
                    raise ValueError(f"bao2020: {spec['file']} line {number} must be a JSON object with \"text\" (a "
                                     f"list of tokens) and \"label\" (an integer). Received: {line.strip()[:120]}")
                if not 0 <= label < len(names):
                    raise ValueError(f"bao2020: {spec['file']} line {number} has label {label}, outside {corpus}'s "
                                     f"{len(names)} classes 0..{len(names) - 1}. Received: label={label}")
                texts.setdefault(label, []).append(" ".join(tokens))
    except UnicodeDecodeError as e:
        raise ValueError(f"bao2020: {spec['file']} is not UTF-8 ({e}). Received: file={spec['file']!r}") from None
    groups = {}
    for split in ("train", "val", "test"):
        empty = [names[i] for i in spec[split] if i not in texts]
        if empty:
            raise ValueError(f"bao2020: {spec['file']} has no example of the {split} classes {empty[:5]} of Bao et "
                             f"al.'s split. Received: labels present={sorted(texts)}")
        groups[split] = {names[i]: texts[i] for i in sorted(spec[split])}
    return groups
