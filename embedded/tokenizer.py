"""A byte-level BPE tokenizer trained on the corpus and saved as a Hugging Face tokenizer.

Byte-level so every script (Korean included) and every code symbol is representable; saved
with `save_pretrained` so `AutoTokenizer.from_pretrained(dir)` loads it like any hub tokenizer.
"""

from __future__ import annotations

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from influence.errors import InfluenceError

EOS = "<|endoftext|>"


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


def load_tokenizer(path: str):
    """Load any local HF tokenizer and make sure it can pad (EOS doubles as padding when none is set)."""
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise InfluenceError(
                f"tokenizer in {path} has neither a pad nor an eos token: add a pad_token to its tokenizer_config.json"
            )
        tok.pad_token = tok.eos_token
    return tok
