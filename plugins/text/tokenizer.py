"""Tokenisation without network access: lower-cased words (or character trigrams) hashed into a fixed vocabulary.

NumPy and the standard library only, so a dataset factory tokenises in the dashboard's process as well as in a
training worker. Ids are ``1..vocab_size-1``; ``0`` pads (and no token maps to it). Hashing is crc32, the same in
every process and on every machine (Python's ``hash`` of a string is salted per process).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from typing import Iterable, Literal

import numpy as np

__all__ = ["HashingTokenizer", "PAD_ID"]

#: The id of padding; no token hashes to it.
PAD_ID = 0

# Letters and digits (any script), with inner apostrophes kept ("don't", "o'clock"); the rest separates words.
# Bracketed tags such as FewRel's entity marks "[e1]" ... "[/e1]" stay whole tokens.
_WORD = re.compile(r"\[/?[^\W_]+\]|[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class HashingTokenizer:
    """Maps text to a fixed-length row of token ids by hashing its lower-cased words or character trigrams.

    Args:
        vocab_size: Number of ids, padding included (ids ``1..vocab_size-1`` are tokens).
        length: Tokens per row: longer texts are cut at the end, shorter ones padded with ``0`` at the end.
        unit: ``"words"`` (each word one token) or ``"char3"`` (each character trigram of every word, with
            boundary marks, one token: robust to typos and inflections, about five tokens a word).

    Example:
        >>> tok = HashingTokenizer(vocab_size=1000, length=6)
        >>> tok.encode(["Book a flight!"]).shape
        (1, 6)
    """

    vocab_size: int = 8192
    length: int = 32
    unit: Literal["words", "char3"] = "words"

    def __post_init__(self) -> None:
        # float32 model inputs hold every integer up to 2**24 exactly.
        size = self.vocab_size
        if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 2**24:
            raise ValueError(f"vocab_size must be an integer in [2, 2**24]. Received: vocab_size={self.vocab_size!r}")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be an integer >= 1. Received: length={self.length!r}")
        if self.unit not in ("words", "char3"):
            raise ValueError(f"unit must be 'words' or 'char3'. Received: unit={self.unit!r}")

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` in order, before hashing (lower-cased words, or their character trigrams)."""
        if not isinstance(text, str):
            raise TypeError(f"HashingTokenizer takes strings. Received: type={type(text).__name__}")
        words = _WORD.findall(text.lower())
        if self.unit == "words":
            return words
        grams = []
        for word in words:
            if word.startswith("["):  # a tag is one token in either unit
                grams.append(word)
                continue
            marked = f"<{word}>"
            grams += [marked[i:i + 3] for i in range(max(len(marked) - 2, 1))]
        return grams

    def token_id(self, token: str) -> int:
        """The id of one token, in ``1..vocab_size-1``."""
        return 1 + zlib.crc32(token.encode("utf-8")) % (self.vocab_size - 1)

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """Tokenises ``texts`` into an ``int32 [len(texts), length]`` array, padded with ``0``.

        Args:
            texts: Strings (a single string is refused, so that a sentence is never read as its characters).

        Returns:
            ``int32`` ids ``[n, length]``.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string. Received: a str")
        texts = list(texts)
        out = np.zeros((len(texts), self.length), dtype=np.int32)
        cache: dict[str, int] = {}
        for row, text in enumerate(texts):
            ids = []
            for token in self.tokens(text)[:self.length]:
                if token not in cache:
                    cache[token] = self.token_id(token)
                ids.append(cache[token])
            out[row, :len(ids)] = ids
        return out

    def config(self) -> dict:
        """The settings as a JSON-serialisable dict (a dataset's ``info["tokenizer"]``)."""
        return {"kind": "crc32-hashing", **asdict(self)}
