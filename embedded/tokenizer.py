"""A byte-level BPE tokenizer trained on the corpus and saved as a Hugging Face tokenizer.

Byte-level so every script (Korean included) and every code symbol is representable; saved
with `save_pretrained` so `AutoTokenizer.from_pretrained(dir)` loads it like any hub tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from influence.errors import InfluenceError

EOS = "<|endoftext|>"
#: the smallest vocabulary `train_tokenizer` makes: the 256 byte tokens and EOS (a smaller vocab_size is ignored)
MIN_VOCAB = 257
#: files any one of which holds a saved tokenizer's vocabulary (fast, BPE, WordPiece or SentencePiece)
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.json",
    "tokenizer.model",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
#: the JSON files of a saved tokenizer, parsed up front so a corrupt one is named
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json")


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train BPE on `texts`; the one special token serves as BOS, EOS, padding and unknown."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=int(vocab_size), min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tok.model_max_length = 1 << 30
    return tok


def check_tokenizer_files(path: str, where: str | None = None) -> None:
    """A tokenizer directory holds a vocabulary file and its JSON files parse: without the first, transformers
    builds an empty tokenizer from config.json (every text then encodes to nothing, and a later error blames a
    query); a corrupt file fails here naming it."""
    label = where or f"tokenizer directory {path}"
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InfluenceError(f"{label} is not a directory: point it at a tokenizer saved with save_pretrained")
    if not any((p / name).is_file() for name in VOCAB_FILES):
        raise InfluenceError(
            f"{label} has no tokenizer files (none of {', '.join(VOCAB_FILES[:4])}, ...): "
            f"save the tokenizer there with tokenizer.save_pretrained({str(path)!r})"
        )
    for name in JSON_FILES:
        f = p / name
        if f.is_file():
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise InfluenceError(
                    f"{label}: {f} is not valid JSON ({e}): save the tokenizer again with save_pretrained"
                ) from None


def load_tokenizer(path: str, where: str | None = None):
    """Load a local HF tokenizer and make sure it can pad (EOS doubles as padding when none is set).

    `where` names the directory in errors (e.g. "model.path=..."); a missing, corrupt or empty tokenizer fails in
    one line instead of loading as an empty one."""
    label = where or f"tokenizer directory {path}"
    check_tokenizer_files(path, where)
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(path).expanduser()))
    except Exception as e:  # noqa: BLE001 - tokenizers and transformers raise many types for a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InfluenceError(
            f"{label}: its tokenizer cannot be loaded ({msg}): save it again with save_pretrained"
        ) from None
    if len(tok) <= len(set(tok.all_special_ids)):
        raise InfluenceError(
            f"{label}: its tokenizer has no tokens besides the special ones: save the trained tokenizer there"
        )
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise InfluenceError(
                f"tokenizer in {path} has neither a pad nor an eos token: add a pad_token to its tokenizer_config.json"
            )
        tok.pad_token = tok.eos_token
    return tok
