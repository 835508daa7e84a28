"""The text benchmarks read from their published formats (FewRel JSON, CLINC150 JSON, BANKING77 CSV), on small
files the tests write, and refuse missing or malformed files with messages that name the files and their folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from metalab.api import DataContext
from metalab.core.authoring import testing
from metalab.core.engine.sampling import EpisodeSampler
from metalab.plugins.text.datasets import make_banking77, make_bao2020, make_clinc150, make_fewrel
from metalab.plugins.text.tokenizer import HashingTokenizer

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def _context(tmp_path) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=False)


def _instance(relation: int, i: int) -> dict:
    tokens = ["the", WORDS[relation % 10], "of", f"city{i}", "is", f"person{i}", "."]
    return {"tokens": tokens, "h": [f"city{i}", f"Q{i}", [[3]]], "t": [f"person{i}", f"Q{100 + i}", [[5]]]}


def _write_fewrel(tmp_path, train=range(6), val=range(6, 9), per=6) -> None:
    folder = tmp_path / "data" / "fewrel"
    folder.mkdir(parents=True, exist_ok=True)
    for name, relations in (("train_wiki.json", train), ("val_wiki.json", val)):
        data = {f"P{r}": [_instance(r, i) for i in range(per)] for r in relations}
        (folder / name).write_text(json.dumps(data), encoding="utf-8")


def _write_clinc(tmp_path, intents=8, name="data_full.json") -> None:
    folder = tmp_path / "data" / "clinc150"
    folder.mkdir(parents=True, exist_ok=True)
    data = {part: [[f"please {WORDS[k % 10]} thing {part} {i}", f"intent_{k}"] for k in range(intents)
                   for i in range(n)] for part, n in (("train", 4), ("val", 1), ("test", 2))}
    data["oos_train"] = [["what is the meaning of life", "oos"]] * 3
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def _write_banking(tmp_path, categories=6) -> None:
    folder = tmp_path / "data" / "banking77"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", 5), ("test.csv", 2)):
        with open(folder / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "category"])
            for k in range(categories):
                for i in range(n):
                    writer.writerow([f"my card, {WORDS[k]} number {i}, does not work", f"category_{k}"])


# FewRel ------------------------------------------------------------------------------------------------------------

def test_fewrel_reads_both_files_marks_entities_and_tests_on_val_wiki(tmp_path):
    _write_fewrel(tmp_path)
    ds = make_fewrel({"val_classes": 2, "max_tokens": 16}, _context(tmp_path))
    counts = {s: ds.splits[s].num_classes for s in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 2, "test": 3}
    assert ds.splits["test"].class_names == ["P6", "P7", "P8"]
    assert set(ds.splits["train"].class_names) | set(ds.splits["val"].class_names) == {f"P{r}" for r in range(6)}
    sample = ds.info["sample_texts"]["test"]["P6"][0]
    assert sample == "the golf of [e1] city0 [/e1] is [e2] person0 [/e2] ."
    row = ds.splits["test"].images[0]
    np.testing.assert_array_equal(row, HashingTokenizer(length=16).encode([sample])[0])
    plain = make_fewrel({"val_classes": 2, "mark_entities": False}, _context(tmp_path))
    assert plain.info["sample_texts"]["test"]["P6"][0] == "the golf of city0 is person0 ."
    batch = EpisodeSampler(ds, "test", 3, 1, 2, seed=0).sample_batch(2)
    assert batch.support_x.shape == (2, 3, 16)


def test_fewrel_missing_files_are_named_with_their_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        make_fewrel({}, _context(tmp_path))
    message = str(error.value)
    assert "train_wiki.json" in message and "val_wiki.json" in message and "METALAB_DATA_DIR/fewrel/" in message
    assert str(tmp_path) not in message  # no server path
    (tmp_path / "data" / "fewrel").mkdir(parents=True)
    (tmp_path / "data" / "fewrel" / "train_wiki.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"val_wiki.json not found.*missing=\['val_wiki.json'\]"):
        make_fewrel({}, _context(tmp_path))


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d["P0"][1].update(h=["city", "Q1", [[40]]]), r"instance 1 of relation 'P0'"),
    (lambda d: d["P1"][0].pop("tokens"), r"instance 0 of relation 'P1'"),
    (lambda d: d.update(P2="not a list"), r"relation 'P2' must map to a non-empty list"),
])
def test_fewrel_malformed_instances_are_refused_by_name(tmp_path, damage, expected):
    _write_fewrel(tmp_path)
    path = tmp_path / "data" / "fewrel" / "train_wiki.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"train_wiki.json: {expected}"):
        make_fewrel({"val_classes": 2}, _context(tmp_path))


def test_fewrel_refuses_broken_json_shared_relations_and_too_many_val_classes(tmp_path):
    _write_fewrel(tmp_path)
    with pytest.raises(ValueError, match="leave at least one of train_wiki.json's 6 relations"):
        make_fewrel({"val_classes": 6}, _context(tmp_path))
    _write_fewrel(tmp_path, train=range(6), val=range(5, 8))
    with pytest.raises(ValueError, match=r"share relations.*'P5'"):
        make_fewrel({"val_classes": 2}, _context(tmp_path))
    (tmp_path / "data" / "fewrel" / "val_wiki.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="val_wiki.json is not valid UTF-8 JSON"):
        make_fewrel({"val_classes": 2}, _context(tmp_path))


def test_protonet_trains_on_fewrel_files(builtin_registry, tmp_path, monkeypatch):
    # The run finds the files through METALAB_DATA_DIR, as a user's run does.
    _write_fewrel(tmp_path)
    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path / "data"))
    task = {"dataset": "metalab.fewrel", "dataset_params": {"val_classes": 2, "vocab_size": 512, "max_tokens": 12},
            "backbone": "metalab.text_cnn", "backbone_params": {"vocab_size": 512, "embedding_dim": 8, "filters": 8},
            "ways": 2, "shots": 1, "queries": 2}
    config = testing.tiny_config(builtin_registry, "metalab.protonet", "classification", steps=3, task=task)
    result = testing.run_tiny(builtin_registry, config, tmp_path / "home", evaluate_before=False)
    assert result.status == "completed" and np.isfinite(result.last_loss)


# CLINC150 ------------------------------------------------------------------------------------------------------------

def test_clinc150_pools_in_scope_parts_per_intent_and_leaves_out_oos(tmp_path):
    _write_clinc(tmp_path)
    ds = make_clinc150({"train_classes": 4, "val_classes": 2}, _context(tmp_path))
    names = [n for s in ds.splits.values() for n in s.class_names]
    assert sorted(names) == [f"intent_{k}" for k in range(8)] and "oos" not in names
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == [4, 2, 2]
    for split in ds.splits.values():  # train 4 + val 1 + test 2 texts of every intent
        assert np.bincount(split.labels).tolist() == [7] * split.num_classes
    _write_clinc(tmp_path, name="data_small.json", intents=5)
    small = make_clinc150({"variant": "small", "train_classes": 2, "val_classes": 1}, _context(tmp_path))
    assert sum(s.num_classes for s in small.splits.values()) == 5 and small.info["files"] == ["data_small.json"]


def test_clinc150_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        make_clinc150({}, _context(tmp_path))
    message = str(error.value)
    assert "data_full.json" in message and "METALAB_DATA_DIR/clinc150/" in message and str(tmp_path) not in message
    _write_clinc(tmp_path)
    path = tmp_path / "data" / "clinc150" / "data_full.json"
    data = json.loads(path.read_text())
    data["val"][2] = ["text without an intent"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"item 2 of 'val' must be \[text, intent\]"):
        make_clinc150({"train_classes": 4, "val_classes": 2}, _context(tmp_path))
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="lists 'train', 'val' and 'test'"):
        make_clinc150({}, _context(tmp_path))
    _write_clinc(tmp_path)
    with pytest.raises(ValueError, match="leave at least one of the 8 classes"):
        make_clinc150({"train_classes": 5, "val_classes": 3}, _context(tmp_path))


# BANKING77 -----------------------------------------------------------------------------------------------------------

def test_banking77_pools_both_csvs_per_category(tmp_path):
    _write_banking(tmp_path)
    ds = make_banking77({"train_classes": 3, "val_classes": 2}, _context(tmp_path))
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == [3, 2, 1]
    for split in ds.splits.values():
        assert np.bincount(split.labels).tolist() == [7] * split.num_classes  # 5 from train.csv, 2 from test.csv
    some = ds.splits["test"].class_names[0]
    # The CSV's quoted comma stays inside the text.
    assert ds.info["sample_texts"]["test"][some][0].startswith("my card, ")


def test_banking77_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        make_banking77({}, _context(tmp_path))
    message = str(error.value)
    assert "train.csv" in message and "test.csv" in message and "METALAB_DATA_DIR/banking77/" in message
    assert str(tmp_path) not in message
    _write_banking(tmp_path)
    (tmp_path / "data" / "banking77" / "test.csv").write_text("query,label\nhello,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.csv needs a header with the columns text and category"):
        make_banking77({"train_classes": 3, "val_classes": 2}, _context(tmp_path))
    (tmp_path / "data" / "banking77" / "test.csv").write_text("text,category\nhello,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="test.csv line 2 has an empty text or category"):
        make_banking77({"train_classes": 3, "val_classes": 2}, _context(tmp_path))
    (tmp_path / "data" / "banking77" / "test.csv").write_bytes(b"text,category\n\xff\xfe bad,x\n")
    with pytest.raises(ValueError, match="test.csv is not a UTF-8 CSV"):
        make_banking77({"train_classes": 3, "val_classes": 2}, _context(tmp_path))


# Bao et al. 2020 -----------------------------------------------------------------------------------------------------

def _write_bao(tmp_path, corpus: str, classes: int, per: int = 3, extra: str = "") -> None:
    folder = tmp_path / "data" / "bao2020"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": ["story", WORDS[k % 10], str(i)], "label": k}) for k in range(classes)
             for i in range(per)]
    (folder / f"{corpus}.json").write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")


@pytest.mark.parametrize("corpus, classes, sizes", [
    ("huffpost", 41, [20, 5, 16]), ("amazon", 24, [10, 5, 9]), ("20news", 20, [8, 5, 7]), ("reuters", 31, [15, 5, 11]),
])
def test_bao2020_uses_the_published_class_splits(tmp_path, corpus, classes, sizes):
    _write_bao(tmp_path, corpus, classes)
    ds = make_bao2020({"corpus": corpus}, _context(tmp_path))
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == sizes
    names = [set(ds.splits[s].class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    if corpus == "20news":  # by newsgroup hierarchy: sci and rec train, comp val, the rest test
        assert {n.split(".")[0] for n in names[0]} == {"sci", "rec"} and {n.split(".")[0] for n in names[1]} == {"comp"}
        assert "talk.politics.guns" in names[2]
    if corpus == "amazon":
        assert {"Books", "Electronics", "Kindle_Store"} <= names[2] and "Baby" in names[0]
    sample = next(iter(ds.info["sample_texts"]["test"].values()))
    assert sample[0].startswith("story ") and ds.input_shape == (64,)


def test_bao2020_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        make_bao2020({"corpus": "reuters"}, _context(tmp_path))
    message = str(error.value)
    assert "reuters.json" in message and "METALAB_DATA_DIR/bao2020/" in message and str(tmp_path) not in message
    _write_bao(tmp_path, "reuters", 31, extra='{"text": "not a token list", "label": 3}\n')
    with pytest.raises(ValueError, match=r"reuters.json line 94 must be a JSON object"):
        make_bao2020({"corpus": "reuters"}, _context(tmp_path))
    _write_bao(tmp_path, "reuters", 31, extra='{"text": ["x"], "label": 31}\n')
    with pytest.raises(ValueError, match=r"line 94 has label 31, outside reuters's 31 classes"):
        make_bao2020({"corpus": "reuters"}, _context(tmp_path))
    _write_bao(tmp_path, "reuters", 30)
    with pytest.raises(ValueError, match=r"no example of the test classes \['reuters_30'\]"):
        make_bao2020({"corpus": "reuters"}, _context(tmp_path))
