"""Few-shot text: an embedded intent corpus; FewRel, Bao et al.'s four text-classification sets, CLINC150 and
BANKING77 from their published files; and two
text backbones (a Kim CNN and a small Transformer encoder). Registration only: no TensorFlow, no file read.

Text becomes rows of token ids by a hashing tokenizer (:mod:`.tokenizer`, no network, no vocabulary file), stored
as a ``ClassificationDataset`` whose inputs are ``(max_tokens,)`` ids, so episodes, algorithms and evaluation are
metalab's own, unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from metalab.api import BackboneSpec, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.7"  # ClassificationDataset.describe came with 1.6, encode with 1.7

#: Intents of the embedded corpus: 12 actions x 12 objects (see .intents).
NUM_INTENTS = 144


class TokenizerParams(Params):
    """How the texts become token ids (shared by every text dataset)."""

    vocab_size: int = Field(
        8192, ge=2, le=1_048_576,
        description="Token ids, padding included: words (or trigrams) are hashed into this many rows. Give the "
                    "backbone the same vocab_size (a larger id folds onto its rows).")
    max_tokens: int = Field(32, ge=1, le=1024, description="Tokens per example: longer texts are cut, shorter padded.")
    unit: Literal["words", "char3"] = Field(
        "words", description="words: each lower-cased word is a token. char3: each character trigram of each word "
                             "(robust to typos and inflections; raise max_tokens about fivefold).")


class TextIntentsParams(TokenizerParams):
    """The embedded intent corpus: which intents go to which split, and how many requests each has."""

    train_classes: int = Field(96, ge=1, le=NUM_INTENTS - 2, description="Intents in the training split.")
    val_classes: int = Field(24, ge=1, le=NUM_INTENTS - 2,
                             description="Intents in the validation split; the rest of the 144 are test.")
    examples_per_class: int = Field(40, ge=2, le=2000, description="Generated requests per intent.")
    seed: int = Field(0, ge=0, description="Seed of the intents' division between splits and of their wording.")

    @pydantic.model_validator(mode="after")
    def _leaves_test_classes(self) -> "TextIntentsParams":
        if self.train_classes + self.val_classes > NUM_INTENTS - 1:
            raise ValueError(f"train_classes + val_classes must leave at least one of the {NUM_INTENTS} intents for "
                             f"test. Received: train_classes={self.train_classes}, val_classes={self.val_classes}")
        return self


class FewRelParams(TokenizerParams):
    """FewRel 1.0 from train_wiki.json and val_wiki.json."""

    max_tokens: int = Field(64, ge=1, le=1024, description="Tokens per sentence: longer ones are cut, shorter padded.")
    val_classes: int = Field(10, ge=1, le=1000,
                             description="Relations of train_wiki.json held out as the validation split (the others "
                                         "train); val_wiki.json's relations are the test split.")
    mark_entities: bool = Field(True, description="Wrap the head and tail entities in [e1] ... [/e1] and "
                                                  "[e2] ... [/e2] marker tokens.")
    seed: int = Field(0, ge=0, description="Seed of the relations held out for validation.")


class Clinc150Params(TokenizerParams):
    """CLINC150 intents from one of its JSON files."""

    variant: Literal["full", "small", "imbalanced", "oos_plus"] = Field(
        "full", description="Which file: data_full.json, data_small.json, data_imbalanced.json or data_oos_plus.json.")
    train_classes: int = Field(50, ge=1, le=148, description="Intents in the training split.")
    val_classes: int = Field(50, ge=1, le=148, description="Intents in the validation split; the rest are test.")
    seed: int = Field(0, ge=0, description="Seed of the intents' division between splits.")


class Banking77Params(TokenizerParams):
    """BANKING77 categories from train.csv and test.csv."""

    train_classes: int = Field(25, ge=1, le=75, description="Categories in the training split.")
    val_classes: int = Field(25, ge=1, le=75, description="Categories in the validation split; the rest are test.")
    seed: int = Field(0, ge=0, description="Seed of the categories' division between splits.")


class Bao2020Params(TokenizerParams):
    """One of Bao et al.'s (2020) four text-classification files, with their fixed class splits."""

    corpus: Literal["huffpost", "amazon", "20news", "reuters"] = Field(
        "huffpost",
        description="Which file: huffpost.json (41 news categories, 20/5/16), amazon.json (24 product categories, "
                    "10/5/9), 20news.json (20 newsgroups, 8/5/7) or reuters.json (31 topics, 15/5/11).")
    max_tokens: int = Field(64, ge=1, le=1024, description="Tokens per document: longer ones are cut, shorter padded.")


class TextCNNParams(Params):
    """Kim's (2014) sentence CNN; the paper used 300-d embeddings and 100 filters of widths 3, 4 and 5."""

    vocab_size: int = Field(8192, ge=2, le=1_048_576, description="Embedding rows; the dataset's vocab_size.")
    embedding_dim: int = Field(64, ge=1, le=1024, description="Width of each token's embedding.")
    filters: int = Field(64, ge=1, le=1024, description="Filters of each kernel width.")
    kernel_sizes: list[Annotated[int, Field(ge=1, le=16)]] = Field(
        [3, 4, 5], min_length=1, max_length=8, description="Kernel widths (tokens), one convolution each.")


class TextTransformerParams(Params):
    """A small Transformer encoder (Vaswani et al. 2017), pre-norm, mean-pooled over the real tokens."""

    vocab_size: int = Field(8192, ge=2, le=1_048_576, description="Embedding rows; the dataset's vocab_size.")
    width: int = Field(64, ge=2, le=1024, description="Model width (embedding size).")
    heads: int = Field(4, ge=1, le=32, description="Attention heads; must divide width.")
    layers: int = Field(2, ge=1, le=12, description="Encoder blocks.")
    ff_width: int = Field(128, ge=1, le=8192, description="Hidden width of each block's feed-forward layer.")

    @pydantic.model_validator(mode="after")
    def _heads_divide_width(self) -> "TextTransformerParams":
        if self.width % self.heads:
            raise ValueError(f"heads must divide width. Received: width={self.width}, heads={self.heads}")
        return self


def intents_split_sizes(params: TextIntentsParams | dict | None = None) -> dict[str, dict[str, int]]:
    """Intents per split and examples of each, computed from the parameters alone."""
    if not isinstance(params, TextIntentsParams):
        params = TextIntentsParams.model_validate(params or {})
    test = NUM_INTENTS - params.train_classes - params.val_classes
    counts = {"train": params.train_classes, "val": params.val_classes, "test": test}
    return {name: {"classes": n, "min_per_class": params.examples_per_class} for name, n in counts.items()}


_TEXT_FIRST_RUN = {"*": {"steps": 300, "val_every": 50, "log_every": 10, "checkpoint_every": 100,
                         "test_episodes": 200},
                   "metalab.maml": {"algorithm.meta_batch_size": 4}}
_EPISODES = {"ways": 5, "shots": 1, "queries": 5}


def _text_dataset(**fields) -> DatasetSpec:
    """A text dataset's spec: the text CNN, 5-way 1-shot episodes and the quick first run, with ``fields``."""
    return DatasetSpec(default_backbone="metalab.text_cnn", episode_defaults=dict(_EPISODES),
                       presets=_TEXT_FIRST_RUN, **fields)


DATASETS = [
    _text_dataset(
        id="metalab.text_intents",
        title="Intents (embedded text)",
        description=(
            "144 generated intents (12 actions x 12 objects, e.g. 'cancel/subscription'), each phrased through "
            "shared templates, synonyms and slot words; 96 / 24 / 24 intents for train, val and test by default. "
            "Nothing to download: the text family for a first run. Sentences become hashed word ids."
        ),
        params=TextIntentsParams,
        factory="metalab.plugins.text.datasets:make_intents",
        paper="Generated by metalab in the style of CLINC150 (Larson et al. 2019, An Evaluation Dataset for "
              "Intent Classification and Out-of-Scope Prediction, EMNLP)",
        split_sizes=intents_split_sizes,
    ),
    _text_dataset(
        id="metalab.bao2020",
        title="HuffPost / Amazon / 20 Newsgroups / Reuters (Bao et al. 2020)",
        description=(
            "The four few-shot text-classification sets of Bao et al. 2020 with their fixed class splits: HuffPost "
            "headlines (41 categories), Amazon reviews (24), 20 Newsgroups (20) and Reuters-21578 (31). Put "
            "huffpost.json, amazon.json, 20news.json or reuters.json (JSON lines of tokens and a label, from the "
            "Distributional-Signatures repository's data/ folder) in METALAB_DATA_DIR/bao2020/."
        ),
        params=Bao2020Params,
        factory="metalab.plugins.text.datasets:make_bao2020",
        paper="Bao, Wu, Chang and Barzilay 2020, Few-shot Text Classification with Distributional Signatures (ICLR)",
    ),
    _text_dataset(
        id="metalab.fewrel",
        title="FewRel 1.0 (relations)",
        description=(
            "Few-shot relation classification: 100 Wikipedia relations with 700 sentences each, head and tail "
            "entities marked. Put train_wiki.json and val_wiki.json (from the FewRel repository) in "
            "METALAB_DATA_DIR/fewrel/. val_wiki.json's 16 relations are the test split (the official test set is "
            "hidden); 10 of train_wiki.json's 64 are held out for validation."
        ),
        params=FewRelParams,
        factory="metalab.plugins.text.datasets:make_fewrel",
        paper="Han et al. 2018, FewRel: A Large-Scale Supervised Few-Shot Relation Classification Dataset (EMNLP)",
    ),
    _text_dataset(
        id="metalab.clinc150",
        title="CLINC150 (intents)",
        description=(
            "150 intents in 10 domains, 150 queries each (data_full.json). Put data_full.json (or data_small.json, "
            "data_imbalanced.json, data_oos_plus.json) from the clinc/oos-eval repository in "
            "METALAB_DATA_DIR/clinc150/. Intents are divided 50 / 50 / 50 by a seed; out-of-scope queries are left out."
        ),
        params=Clinc150Params,
        factory="metalab.plugins.text.datasets:make_clinc150",
        paper="Larson et al. 2019, An Evaluation Dataset for Intent Classification and Out-of-Scope Prediction (EMNLP)",
    ),
    _text_dataset(
        id="metalab.banking77",
        title="BANKING77 (intents)",
        description=(
            "77 fine-grained banking intents, 13,083 queries. Put train.csv and test.csv (columns text, category; "
            "from the PolyAI task-specific-datasets repository) in METALAB_DATA_DIR/banking77/. Categories are "
            "divided 25 / 25 / 27 by a seed."
        ),
        params=Banking77Params,
        factory="metalab.plugins.text.datasets:make_banking77",
        paper="Casanueva et al. 2020, Efficient Intent Detection with Dual Sentence Encoders (NLP4ConvAI)",
    ),
]

BACKBONES = [
    BackboneSpec(
        id="metalab.text_cnn",
        title="Text CNN (Kim 2014)",
        description=(
            "Token embedding, one ReLU 1-D convolution per kernel width (3, 4, 5; 64 filters each) and a global "
            "max pool over positions, concatenated: 192 features. For the text datasets' rows of token ids."
        ),
        params=TextCNNParams,
        factory="metalab.plugins.text.models:text_cnn",
        paper="Kim 2014, Convolutional Neural Networks for Sentence Classification (EMNLP)",
        input_kinds=("vector",),
        has_batch_norm=False,
    ),
    BackboneSpec(
        id="metalab.text_transformer",
        title="Text Transformer (small)",
        description=(
            "Token and learned position embeddings, two pre-norm encoder blocks (4-head self-attention with "
            "padding masked, ReLU feed-forward) and the mean over the real tokens: 64 features. Layer norm is "
            "written out, exact to second order for MAML."
        ),
        params=TextTransformerParams,
        factory="metalab.plugins.text.models:text_transformer",
        paper="Vaswani et al. 2017, Attention Is All You Need (NeurIPS)",
        input_kinds=("vector",),
        has_batch_norm=False,
    ),
]


@hookimpl
def metalab_register_datasets() -> list[DatasetSpec]:
    return list(DATASETS)


@hookimpl
def metalab_register_backbones() -> list[BackboneSpec]:
    return list(BACKBONES)
