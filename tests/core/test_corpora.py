"""Corpora: the Penn Treebank splits with their standard word counts, plain-text files, prefixes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from moeqos.core.corpora import corpus_names, load_corpus, tokenize_prefix

# Mikolov's language-modelling split of the Penn Treebank (the standard LM benchmark).
PTB_WORDS = {"ptb:train": 887_521, "ptb:valid": 70_390, "ptb:test": 78_669}
PTB_SENTENCES = {"ptb:train": 42_068, "ptb:valid": 3_370, "ptb:test": 3_761}


class WordTokenizer:
    """One id per whitespace-separated word, ids by first appearance; counts its calls."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]


@pytest.mark.parametrize("name", sorted(PTB_WORDS))
def test_ptb_split_word_and_sentence_counts(name: str) -> None:
    corpus = load_corpus(name)
    assert corpus.name == name
    assert corpus.words == PTB_WORDS[name]
    assert corpus.text.count("\n") == PTB_SENTENCES[name]
    assert corpus.text.endswith("\n") and not corpus.text.startswith(" ")


def test_ptb_keeps_unk_and_number_tokens() -> None:
    words = load_corpus("ptb:test").text.split()
    assert "<unk>" in words and "N" in words


def test_corpora_never_import_torch() -> None:
    code = (
        "import sys, moeqos.core.corpora as c; c.load_corpus('ptb:test'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_registry_names_each_split() -> None:
    assert corpus_names() == ["ptb:train", "ptb:valid", "ptb:test"]
    with pytest.raises(ValueError, match="known: ptb:train"):
        load_corpus("wikitext:test")


def test_text_file_corpus(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("first line here\nsecond line\n", encoding="utf-8")
    corpus = load_corpus(f"text:{path}")
    assert corpus.name == f"text:{path}" and corpus.words == 5
    with pytest.raises(ValueError, match="not a file"):
        load_corpus(f"text:{tmp_path / 'missing.txt'}")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(f"text:{tmp_path / 'empty.txt'}")


def test_tokenize_prefix_matches_whole_text_and_reads_only_a_prefix() -> None:
    corpus = load_corpus("ptb:valid")
    tokenizer = WordTokenizer()
    prefix = tokenize_prefix(corpus, tokenizer, 1000)
    whole = WordTokenizer().encode(corpus.text)
    assert list(prefix.token_ids) == whole[:1000]
    assert len(tokenizer.vocab) < len(set(corpus.text.split()))  # it did not tokenize everything
    assert prefix.describe() == "ptb:valid[:1000 tokens]"


def test_tokenize_prefix_of_a_short_text_returns_all_of_it(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("a b c\nd e\n")
    prefix = tokenize_prefix(load_corpus(f"text:{path}"), WordTokenizer(), 100)
    assert len(prefix.token_ids) == 5
    with pytest.raises(ValueError):
        tokenize_prefix(load_corpus(f"text:{path}"), WordTokenizer(), 0)
