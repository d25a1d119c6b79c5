"""Byte-level BPE for the text families, trained on the run's data with Hugging Face `tokenizers`.

Why byte-level (GPT-2, Radford et al. 2019, sec. 2.2): every UTF-8 string, Chinese, emoji,
combining marks and control characters included, is a sequence of the 256 byte symbols, so encoding
then decoding returns it exactly and nothing is ever out of vocabulary. No normaliser runs: NFC or
lower-casing would change the user's text.

Chinese has no spaces, so GPT-2's pre-tokenizer regex sees a whole sentence as one "word"; the BPE
trainer then keeps every distinct sentence with its pair positions, and its memory grows with the
corpus rather than with the vocabulary. Runs of Han characters are therefore split into pieces of
at most HAN_RUN characters before the byte-level step: merges still learn common two- and
three-character words, at a bounded cost per piece. Measured on builtin:reviews (2.6M characters,
vocabulary 8,000; benchmarks/results/tokenizer.md): plain byte-level 365 MB over the loaded texts,
17.5 s, 1.46 characters per token; pieces of at most 3: 221 MB, 7.6 s, 1.30; single characters:
57 MB, 8.8 s, 1.01 (sequences 30% longer than with pieces of 3, for the same text).

Special tokens (end of text, prompt, completion, padding) are added by id, never parsed out of
user text: `encode` treats a literal "<|endoftext|>" in a review as ordinary characters, so data
cannot inject control tokens.

The fitted form is the tokenizer's own json (`Tokenizer.to_str`), tagged FORMAT, stored as the
run's fitted state: json, never pickle, reloaded unchanged by resume, generation and serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from genforge.errors import ModelError
from genforge.models import Fitted

FORMAT = "bpe-tokenizer/1"
EOT, PROMPT, COMPLETION, PAD = "<|endoftext|>", "<|prompt|>", "<|completion|>", "<|pad|>"
SPECIALS = (EOT, PROMPT, COMPLETION, PAD)
HAN_RUN = 3  # Han characters per pre-token at most (see the module docstring)
MIN_VOCAB = 256 + len(SPECIALS)  # the byte alphabet and the special tokens


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(rf"\p{{Han}}{{1,{HAN_RUN}}}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


class TextTokenizer:
    """A trained `tokenizers.Tokenizer` with genforge's special tokens, and the ids they have."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True  # user text never yields a special token
        ids = {s: tokenizer.token_to_id(s) for s in SPECIALS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ModelError(f"the tokenizer lacks the special tokens {', '.join(missing)}")
        self.eot, self.prompt, self.completion, self.pad = (ids[s] for s in SPECIALS)
        self.special_ids = frozenset(ids.values())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        """Learn vocab_size - (256 bytes + 4 specials) merges from `texts`."""
        if vocab_size < MIN_VOCAB:
            raise ModelError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes and {len(SPECIALS)} special tokens), "
                             f"got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = _pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out. A sequence cut inside a multi-byte character
        ends in U+FFFD for that character (streaming decodes whole characters only)."""
        return self.tokenizer.decode([i for i in ids if i not in self.special_ids], skip_special_tokens=False)

    def to_fitted(self) -> Fitted:
        return Fitted(FORMAT, {"tokenizer": self.tokenizer.to_str()})

    @classmethod
    def from_fitted(cls, fitted: Fitted | None) -> "TextTokenizer":
        if fitted is None or fitted.format != FORMAT:
            raise ModelError(f"expected fitted state {FORMAT!r}, got {None if fitted is None else fitted.format!r}")
        return cls(Tokenizer.from_str(fitted.meta["tokenizer"]))
