"""The text dataset factories: the embedded intents, FewRel, Bao et al. 2020, CLINC150 and BANKING77 (imported on
first use; each reads only the files of its own folder under METALAB_DATA_DIR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metalab.api import ClassificationDataset

from .common import split_classes, text_dataset
from .files import BAO_CORPORA, CLINC_FILES, read_banking77, read_bao2020, read_clinc150, read_fewrel
from .intents import all_intents, generate_intents
from .tokenizer import HashingTokenizer

__all__ = ["make_intents", "make_fewrel", "make_clinc150", "make_banking77", "make_bao2020"]


def _params(params: Any, model: Any) -> Any:
    return params if isinstance(params, model) else model.model_validate(params or {})


def _tokenizer(params: Any) -> HashingTokenizer:
    return HashingTokenizer(vocab_size=int(params.vocab_size), length=int(params.max_tokens), unit=params.unit)


def _folder(context: Any, name: str) -> Path:
    if context is None:
        from metalab.api.data import default_context

        context = default_context()
    return Path(context.data_dir) / name


def make_intents(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.text_intents``: the embedded intent corpus, intents divided between the splits.

    Args:
        params: A ``TextIntentsParams`` (or a dict of its fields).
        context: Unused (nothing is read or downloaded).
    """
    from . import TextIntentsParams

    params = _params(params, TextIntentsParams)
    groups = split_classes(all_intents(), params.train_classes, params.val_classes, params.seed, "metalab.text_intents")
    texts = generate_intents([n for names in groups.values() for n in names], params.examples_per_class, params.seed)
    return text_dataset({split: {n: texts[n] for n in names} for split, names in groups.items()}, _tokenizer(params),
                        source="embedded templates (metalab.text_intents)", seed=int(params.seed))


def make_fewrel(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.fewrel`` from ``METALAB_DATA_DIR/fewrel/{train_wiki,val_wiki}.json``.

    The test split is ``val_wiki.json``'s relations (FewRel's own test set is hidden); ``val_classes`` relations
    of ``train_wiki.json``, chosen by ``seed``, are the val split and the rest train.
    """
    from . import FewRelParams

    params = _params(params, FewRelParams)
    files = read_fewrel(_folder(context, "fewrel"), params.mark_entities)
    train, test = files["train_wiki.json"], files["val_wiki.json"]
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise ValueError(f"metalab.fewrel: train_wiki.json and val_wiki.json share relations, so the test classes "
                         f"would not be new. Received: shared={overlap[:5]}")
    if not 1 <= params.val_classes < len(train):
        raise ValueError(f"metalab.fewrel: val_classes must be >= 1 and leave at least one of train_wiki.json's "
                         f"{len(train)} relations for training. Received: val_classes={params.val_classes}")
    order = sorted(train)
    picked = {order[i] for i in np.random.default_rng(params.seed).permutation(len(order))[:params.val_classes]}
    groups = {"train": {r: train[r] for r in order if r not in picked},
              "val": {r: train[r] for r in order if r in picked},
              "test": {r: test[r] for r in sorted(test)}}
    return text_dataset(groups, _tokenizer(params), source="FewRel 1.0 (train_wiki.json, val_wiki.json)",
                        files=["train_wiki.json", "val_wiki.json"], test_split="val_wiki.json", seed=int(params.seed))


def _class_split_dataset(classes: dict[str, list[str]], params: Any, owner: str, **info: Any) -> ClassificationDataset:
    groups = split_classes(list(classes), params.train_classes, params.val_classes, params.seed, owner)
    return text_dataset({split: {n: classes[n] for n in names} for split, names in groups.items()},
                        _tokenizer(params), seed=int(params.seed), **info)


def make_clinc150(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.clinc150`` from ``METALAB_DATA_DIR/clinc150/data_<variant>.json``: intents divided by
    ``seed`` between the splits, each with all its in-scope texts."""
    from . import Clinc150Params

    params = _params(params, Clinc150Params)
    intents = read_clinc150(_folder(context, "clinc150"), params.variant)
    return _class_split_dataset(intents, params, "metalab.clinc150", source=f"CLINC150 ({CLINC_FILES[params.variant]})",
                                files=[CLINC_FILES[params.variant]])


def make_banking77(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.banking77`` from ``METALAB_DATA_DIR/banking77/{train,test}.csv``: categories divided by
    ``seed`` between the splits, each with its texts from both files."""
    from . import Banking77Params

    params = _params(params, Banking77Params)
    categories = read_banking77(_folder(context, "banking77"))
    return _class_split_dataset(categories, params, "metalab.banking77", source="BANKING77 (train.csv, test.csv)",
                                files=["train.csv", "test.csv"])


def make_bao2020(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.bao2020`` from ``METALAB_DATA_DIR/bao2020/<corpus>.json`` with Bao et al.'s (2020) fixed
    meta-train / meta-val / meta-test classes (HuffPost 20/5/16, Amazon 10/5/9, 20 Newsgroups 8/5/7, Reuters
    15/5/11)."""
    from . import Bao2020Params

    params = _params(params, Bao2020Params)
    groups = read_bao2020(_folder(context, "bao2020"), params.corpus)
    name = BAO_CORPORA[params.corpus]["file"]
    return text_dataset(groups, _tokenizer(params), source=f"Bao et al. 2020 ({name})", files=[name],
                        corpus=params.corpus)
