"""Every API-process tokenizer, token counting and truncation.

The API process tokenizes so that it can count (usage, limits), truncate or refuse before
anything is queued, and so that the worker only ever receives token ids. Truncation keeps
the model's special tokens (``[CLS] ... [SEP]``) and cuts the content between them.

Two tokenizers: :class:`HFTokenizer` (a Hugging Face ``tokenizer.json``, the fast Rust
tokenizer) and :class:`GGUFTokenizer`, which loads only a GGUF file's vocabulary
(``vocab_only``, so the API process stays small) and tokenizes with llama.cpp's own
tokenizer, so that counting and truncation agree with what the engine sees. The engine's
row in ``catalog`` says which one a model gets.

Prompts (:class:`Prompts`): a model's named instructions ("query: ", "passage: ", ...),
from its config or its sentence-transformers ``config_sentence_transformers.json``. A
prompt is prepended to the text before tokenizing, as sentence-transformers does, so it
counts toward usage and limits, it is in the token ids the worker (and a cache keyed on
them) sees, and truncation cuts the input after it, never the prompt itself.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from embedhost import catalog
from embedhost.chunking import Encoding, align
from embedhost.config import ModelConfig
from embedhost.engines.gguf import GGUFModel
from embedhost.errors import ConfigError, InputTooLong, InvalidRequest, PayloadTooLarge

Policy = Literal["right", "left", "refuse", "chunk"]

# Bounded tokenization (issue 20): a text far longer than the model's window is cut by
# characters before it is tokenized, so a 10 MB string costs what its first window does.
# The cut is generous ((window + GUARD_TOKENS) x the longest token's characters) and then
# checked: the tokens of the cut text must reach GUARD_TOKENS past the window, so that
# what the model keeps lies well before the cut, where the cut changes nothing (only the
# word the cut splits tokenizes differently). Text that is mostly whitespace or long
# unknown words yields fewer tokens per character: its cut is widened until it does.
GUARD_TOKENS = 128
DEFAULT_TOKEN_CHARS = 32
"""Characters per token assumed for a tokenizer that cannot tell its longest token."""
INPUT_CHARS_PER_TOKEN = 128
"""``max_input_chars`` when unset: this many characters per token of the model's window."""
# Above this many characters a Hugging Face text is tokenized with ``encode_batch``, which
# releases the GIL (``encode`` holds it for the whole text, stalling the event loop even
# from a thread).
_GIL_FREE_CHARS = 4096

# A lone UTF-16 surrogate (U+D800..U+DFFF) is legal in a JSON string ("\ud800") but is no
# character: it cannot be encoded as UTF-8, so no tokenizer can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer(Protocol):
    """What the API process needs from a model's tokenizer."""

    vocab_size: int
    prefix_specials: int
    """Special tokens the model adds before the content (e.g. [CLS])."""
    suffix_specials: int
    """Special tokens the model adds after the content (e.g. [SEP])."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, without truncation."""
        ...

    def encode_offsets(self, texts: list[str], add_special: bool = True) -> list[Encoding]:
        """Tokens with their strings and character spans (chunking, /tokenize)."""
        ...

    def decode(self, seqs: list[list[int]], skip_special: bool = True) -> list[str]:
        """Texts of token-id sequences (/decode)."""
        ...


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (the fast Rust tokenizer)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = _Tok.from_file(str(file))
        # Truncation and padding are ours to do: the file's own settings would cut silently.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        probe = self._tok.encode("a")
        mask = probe.special_tokens_mask
        self.prefix_specials = _leading_ones(mask)
        self.suffix_specials = _leading_ones(mask[::-1]) if self.prefix_specials < len(mask) else 0
        vocab = self._tok.get_vocab(with_added_tokens=False)
        # WordPiece's "##" and the byte-level/SentencePiece word markers are no characters.
        self.max_token_chars = 1 + max(
            (len(t.removeprefix("##").lstrip("\u0120\u2581")) for t in vocab), default=0
        )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1 and len(texts[0]) <= _GIL_FREE_CHARS:
            return [self._tok.encode(texts[0]).ids]
        return [e.ids for e in self._tok.encode_batch(texts)]

    # -- offsets and decoding (chunking, /tokenize, /decode) -------------------------------

    def encode_offsets(self, texts: list[str], add_special: bool = True) -> list[Encoding]:
        out = []
        for e in self._tok.encode_batch(texts, add_special_tokens=add_special):
            special = [m == 1 for m in e.special_tokens_mask]
            offsets: list[tuple[int, int] | None] = [
                None if sp else (int(a), int(b))
                for sp, (a, b) in zip(special, e.offsets, strict=True)
            ]
            out.append(Encoding(list(e.ids), list(e.tokens), special, offsets))
        return out

    def decode(self, seqs: list[list[int]], skip_special: bool = True) -> list[str]:
        return list(self._tok.decode_batch(seqs, skip_special_tokens=skip_special))


def _leading_ones(mask: list[int]) -> int:
    n = 0
    for v in mask:
        if v != 1:
            break
        n += 1
    return n


class GGUFTokenizer:
    """The model's own llama.cpp tokenizer, vocabulary only (no weights)."""

    max_token_chars = DEFAULT_TOKEN_CHARS

    def __init__(self, path: Path) -> None:
        self._model = GGUFModel(path, vocab_only=True)
        self._lock = threading.Lock()  # one token buffer per model
        self.vocab_size = self._model.n_vocab
        with_specials = self._model.tokenize("a", add_special=True)
        content = self._model.tokenize("a", add_special=False)
        self.prefix_specials, self.suffix_specials = _special_counts(with_specials, content)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        with self._lock:
            return [self._model.tokenize(t, add_special=True) for t in texts]

    # -- offsets and decoding (chunking, /tokenize, /decode) -------------------------------

    def encode_offsets(self, texts: list[str], add_special: bool = True) -> list[Encoding]:
        """llama.cpp gives no offsets: each token's printed text is found in the input
        (case- and accent-folded, as WordPiece folds it)."""
        out = []
        m = self._model
        with self._lock:
            for t in texts:
                ids = m.tokenize(t, add_special=add_special)
                head = self.prefix_specials if add_special else 0
                tail = self.suffix_specials if add_special else 0
                special = [i < head or i >= len(ids) - tail for i in range(len(ids))]
                tokens = [m.piece(i) for i in ids]
                pieces = [None if sp else tok for sp, tok in zip(special, tokens, strict=True)]
                out.append(Encoding(ids, tokens, special, align(t, pieces)))
        return out

    def decode(self, seqs: list[list[int]], skip_special: bool = True) -> list[str]:
        with self._lock:
            texts = [self._model.detokenize(s, remove_special=skip_special) for s in seqs]
        if self._model.space_prefix:
            # The vocabulary marks word starts with a space (WordPiece, SentencePiece): the
            # first word's is not part of the text.
            texts = [t.removeprefix(" ") for t in texts]
        return texts

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.free()


def _special_counts(with_specials: list[int], content: list[int]) -> tuple[int, int]:
    """How many special tokens the model adds before and after the content."""
    n = len(content)
    for start in range(len(with_specials) - n + 1):
        if with_specials[start : start + n] == content:
            return start, len(with_specials) - start - n
    return 0, 0


@dataclass(slots=True)
class Tokenized:
    ids: list[list[int]]
    counts: list[int]
    truncated: list[bool]

    @property
    def total(self) -> int:
        return sum(self.counts)


def fit(
    ids: list[int],
    max_tokens: int,
    policy: Policy,
    prefix: int,
    suffix: int,
    index: int,
    prompt: int = 0,
) -> tuple[list[int], bool]:
    """Cut one sequence to ``max_tokens`` keeping its special tokens and its first
    ``prompt`` content tokens (the prompt), or refuse."""
    n = len(ids)
    if n <= max_tokens:
        return ids, False
    if policy == "refuse":
        # A text cut before tokenizing (encode_bounded) shows only its first tokens.
        at_least = "at least " if n >= max_tokens + GUARD_TOKENS else ""
        raise InputTooLong(
            f"input {index} has {at_least}{n} tokens"
            + (f" (of them {prompt} for the prompt)" if prompt else "")
            + f", more than this model's limit of {max_tokens}; shorten it or send truncate=true",
            param="input",
        )
    head_n = prefix + prompt
    keep = max_tokens - head_n - suffix
    if keep <= 0:
        raise InvalidRequest(f"max_input_tokens {max_tokens} leaves no room for content")
    head, body, tail = ids[:head_n], ids[head_n : n - suffix], ids[n - suffix :] if suffix else []
    body = body[:keep] if policy == "right" else body[len(body) - keep :]
    return head + body + tail, True


def check_texts(texts: list[str]) -> None:
    """Refuse a text no tokenizer can take (a lone surrogate, as a client that cut a UTF-16
    string in half sends), naming the input, before any tokenizer sees it."""
    for i, t in enumerate(texts):
        # isascii() is O(1) on CPython's compact strings: only non-ASCII texts are scanned.
        if not t.isascii() and (m := _SURROGATE.search(t)) is not None:
            raise InvalidRequest(
                f"input {i} contains a lone UTF-16 surrogate (U+{ord(m.group()):04X}) at "
                f"character {m.start()}, which is not valid Unicode text; "
                "send the whole character (a surrogate pair) or drop it",
                param=f"input[{i}]",
            )


def input_char_limit(configured: int | None, max_tokens: int) -> int:
    """The most characters one input may have: ``configured`` (the model's or the
    ``limits`` section's ``max_input_chars``), else :data:`INPUT_CHARS_PER_TOKEN` per token
    of the model's window."""
    return configured if configured is not None else max_tokens * INPUT_CHARS_PER_TOKEN


def check_input_chars(texts: list[str], limit: int) -> None:
    """413 for the first input longer than ``limit`` characters, naming it, before any work
    (``len`` of a str is O(1): this costs nothing however large the input)."""
    for i, t in enumerate(texts):
        if len(t) > limit:
            raise PayloadTooLarge(
                f"input {i} has {len(t)} characters, more than this model's limit of "
                f"{limit} (max_input_chars); split it into smaller inputs",
                param=f"input[{i}]",
            )


def prepare_texts(
    tokenizer: Tokenizer,
    texts: list[str],
    max_tokens: int,
    policy: Policy,
    prompt: Prompt | None = None,
) -> Tokenized:
    """Tokenize ``texts`` (each prefixed with ``prompt``'s text), then cut or refuse.

    Texts far longer than the window are cut by characters first (see
    :data:`GUARD_TOKENS`): the result is the same as tokenizing them whole."""
    check_texts(texts)
    pre, suf = tokenizer.prefix_specials, tokenizer.suffix_specials
    if prompt is None or not prompt.text:
        raw = encode_bounded(tokenizer, texts, max_tokens, policy)
        return _fit_all(raw, max_tokens, policy, pre, suf)
    # The prompt alone: how many of each input's tokens are the prompt's.
    n_prompt = max(0, len(tokenizer.encode_batch([prompt.text])[0]) - pre - suf)
    if pre + n_prompt + suf >= max_tokens:
        raise InputTooLong(
            f"the prompt {prompt.name!r} takes {n_prompt} tokens, leaving no room for input "
            f"within this model's limit of {max_tokens} tokens",
            param="input_type",
        )
    raw = encode_bounded(tokenizer, texts, max_tokens, policy, prompt.text)
    return _fit_all(raw, max_tokens, policy, pre, suf, n_prompt)


def encode_bounded(
    tokenizer: Tokenizer, texts: list[str], max_tokens: int, policy: Policy, prefix: str = ""
) -> list[list[int]]:
    """``tokenizer.encode_batch([prefix + t for t in texts])`` as far as :func:`fit` will
    look: a text longer than the cut is tokenized from its kept end only, the cut widened
    (x4) until its tokens reach :data:`GUARD_TOKENS` past the window. Under ``refuse`` such
    a text keeps its first tokens, which is enough to say it is too long."""
    per = getattr(tokenizer, "max_token_chars", DEFAULT_TOKEN_CHARS)
    cut = (max_tokens + GUARD_TOKENS) * per
    enough = max_tokens + GUARD_TOKENS
    out: list[list[int]] = [[] for _ in texts]
    pending = list(range(len(texts)))
    while pending:
        batch = [prefix + _cut(texts[i], cut, policy) for i in pending]
        wider: list[int] = []
        for i, seq in zip(pending, tokenizer.encode_batch(batch), strict=True):
            if len(texts[i]) <= cut or len(seq) >= enough:
                out[i] = seq
            else:
                wider.append(i)
        pending, cut = wider, cut * 4
    return out


def _cut(text: str, chars: int, policy: Policy) -> str:
    if len(text) <= chars:
        return text
    return text[len(text) - chars :] if policy == "left" else text[:chars]


def prepare_ids(
    tokenizer: Tokenizer, seqs: list[list[int]], max_tokens: int, policy: Policy
) -> Tokenized:
    """Token-id input is used as given (no special tokens added); ids must be in the vocabulary."""
    vocab = tokenizer.vocab_size
    for i, s in enumerate(seqs):
        bad = next((t for t in s if t >= vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"input {i}: token id {bad} is outside this model's vocabulary (size {vocab})",
                param="input",
            )
    return _fit_all(seqs, max_tokens, policy, 0, 0)


def _fit_all(
    raw: list[list[int]],
    max_tokens: int,
    policy: Policy,
    prefix: int,
    suffix: int,
    prompt: int = 0,
) -> Tokenized:
    ids: list[list[int]] = []
    truncated: list[bool] = []
    for i, seq in enumerate(raw):
        cut, was = fit(seq, max_tokens, policy, prefix, suffix, i, prompt)
        ids.append(cut)
        truncated.append(was)
    return Tokenized(ids=ids, counts=[len(s) for s in ids], truncated=truncated)


def load_tokenizer(config: ModelConfig) -> Tokenizer:
    """The tokenizer the API process uses for one model."""
    path = config.resolved_path()
    tok_path = config.engine_options.get("tokenizer")
    if tok_path:
        return HFTokenizer(Path(str(tok_path)))
    if catalog.row(config.engine).tokenizer is catalog.TokenizerKind.GGUF:
        return GGUFTokenizer(path)
    return HFTokenizer(path)


# --- prompts -------------------------------------------------------------------------------

ST_CONFIG = "config_sentence_transformers.json"

# input_type "query" / "document" use the model's prompt of that name, else the first of
# these that the model declares (the names sentence-transformers configs use in practice:
# E5 "query"/"passage", nomic "search_query"/"search_document", Qwen3 "query"/"document").
# A model that declares none of them embeds that side without a prompt.
INPUT_TYPE_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "search_query", "queries"),
    "document": ("document", "passage", "search_document", "documents", "passages", "corpus"),
}


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    text: str


@dataclass(slots=True)
class Prompts:
    """One model's named prompts and the default one (a name, or None: no prompt)."""

    texts: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def resolve(self, input_type: str | None, prompt_name: str | None) -> Prompt | None:
        """The prompt a request asks for. ``prompt_name`` (TEI's spelling) must name one of
        the model's prompts; ``input_type`` may also be ``query`` or ``document``, which
        map as :data:`INPUT_TYPE_ALIASES` says. Neither: the default prompt."""
        if input_type is not None and prompt_name is not None:
            raise InvalidRequest(
                "give input_type or prompt_name, not both (they choose the same thing)",
                param="prompt_name",
            )
        if prompt_name is not None:
            return self._named(prompt_name, "prompt_name")
        if input_type is not None:
            if input_type in self.texts:
                return Prompt(input_type, self.texts[input_type])
            aliases = INPUT_TYPE_ALIASES.get(input_type)
            if aliases is None:
                return self._named(input_type, "input_type")
            for name in aliases:
                if name in self.texts:
                    return Prompt(name, self.texts[name])
            return None
        if self.default is not None:
            return Prompt(self.default, self.texts[self.default])
        return None

    def _named(self, name: str, param: str) -> Prompt:
        text = self.texts.get(name)
        if text is None:
            available = ", ".join(sorted(self.texts)) or "none"
            also = " (input_type also takes query and document)" if param == "input_type" else ""
            raise InvalidRequest(
                f"unknown {param} {name!r}; this model's prompts: {available}{also}", param=param
            )
        return Prompt(name, text)

    def describe(self) -> dict[str, object]:
        return {"prompts": dict(self.texts), "default_prompt": self.default}


def read_st_prompts(directory: Path) -> tuple[dict[str, str], str | None] | None:
    """``prompts`` and ``default_prompt_name`` from a sentence-transformers model directory's
    ``config_sentence_transformers.json``; None when it has no such file."""
    file = directory / ST_CONFIG
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: cannot read it: {exc}") from None
    prompts = (data.get("prompts") or {}) if isinstance(data, dict) else {}
    default = data.get("default_prompt_name") if isinstance(data, dict) else None
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ConfigError(f"{file}: 'prompts' must map names to texts")
    if default is not None and (not isinstance(default, str) or default not in prompts):
        raise ConfigError(
            f"{file}: default_prompt_name {default!r} is not one of its prompts "
            f"({', '.join(prompts) or 'none'})"
        )
    return dict(prompts), default


def load_prompts(config: ModelConfig) -> Prompts:
    """A model's prompts: ``prompts`` from its config when set, else from the
    sentence-transformers config beside its files (the model directory, or the directory
    of ``engine_options.tokenizer``); ``default_prompt`` from its config when set, else
    the file's ``default_prompt_name``."""
    texts: dict[str, str] = {}
    default: str | None = None
    if config.prompts is None:
        dirs = [config.resolved_path()]
        tok_path = config.engine_options.get("tokenizer")
        if tok_path:
            dirs.append(Path(str(tok_path)))
        for d in dirs:
            found = read_st_prompts(d) if d.is_dir() else None
            if found is not None:
                texts, default = found
                break
    else:
        texts = dict(config.prompts)
    if config.default_prompt is not None:
        default = config.default_prompt or None  # "" turns a file's default off
    if default is not None and default not in texts:
        raise ConfigError(
            f"model {config.ref}: default_prompt {default!r} is not one of its prompts "
            f"({', '.join(texts) or 'none'})"
        )
    return Prompts(texts, default)
