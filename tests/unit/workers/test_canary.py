"""The canary lexicon: coverage of known texts, the shipped vocabulary, the runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.canary.lexicon import Lexicon, build_vocabulary, words
from services.common.errors import ConfigError
from services.workers.canary_runtime import LexiconRuntime
from services.workers.runtime import PredictionError


def test_words_and_coverage() -> None:
    lexicon = Lexicon(frozenset({"set", "a", "timer"}), "t")
    assert words("Set a TIMER, please!") == ["set", "a", "timer", "please"]
    assert lexicon.coverage("Set a TIMER, please!") == (0.75, 4)
    assert lexicon.coverage("...") == (0.0, 0)


def test_the_vocabulary_is_the_most_frequent_words() -> None:
    assert build_vocabulary(["b a", "a c", "a b"], 2) == ["a", "b"]


def test_the_shipped_lexicon_covers_in_scope_questions_better() -> None:
    lexicon = Lexicon.load()
    assert len(lexicon.vocabulary) == 2000
    in_scope, _ = lexicon.coverage("what is my credit card balance")
    out_of_scope, _ = lexicon.coverage("explain quantum entanglement in photosynthesis")
    assert in_scope > out_of_scope


def test_the_runtime_scores_texts_chat_and_completion_payloads(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# lexicon v1\nhello\nworld\n")
    runtime = LexiconRuntime({"vocab": str(vocab)})
    runtime.load()
    chat = {"messages": [{"role": "user", "content": "hello there"}]}
    completion = {"prompt": "hello hello world again", "max_tokens": 5}
    out = runtime.predict_batch(["hello world", chat, {"text": 3}, completion])
    assert out[0] == {"coverage": 1.0, "words": 2, "lexicon": "v1"}
    assert out[1] == {"coverage": 0.5, "words": 2, "lexicon": "v1"}
    assert isinstance(out[2], PredictionError)
    assert out[3] == {"coverage": 0.75, "words": 4, "lexicon": "v1"}  # a completion's prompt


def test_an_unusable_vocabulary_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match="not a lexicon file"):
        LexiconRuntime({"vocab": str(bad)}).load()
    with pytest.raises(ConfigError, match="cannot load"):
        LexiconRuntime({"vocab": str(tmp_path / "missing.txt")}).load()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="not a lexicon file"):
        LexiconRuntime({"vocab": str(empty)}).load()
