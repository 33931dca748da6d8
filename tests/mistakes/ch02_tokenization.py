"""Wrong answers to chapter 2, as learners write them."""
import re
import unicodedata
from collections import Counter

import regex

from solutions.ch02_tokenization import GPT2_PATTERN, bytes_to_unicode

from . import wrong


# -- pretokenize ----------------------------------------------------------------------------
@wrong("ch02.pretokenize", diagnosis="split-first")
def pretokenize_words_then_regex(text):
    pieces = []
    for word in text.split():
        pieces += regex.findall(GPT2_PATTERN, word)
    return pieces


@wrong("ch02.pretokenize", diagnosis="no-lookahead")
def pretokenize_simpler_whitespace(text):
    return regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+", text)


@wrong("ch02.pretokenize", diagnosis="ignore-case")
def pretokenize_case_insensitive(text):
    return regex.compile(GPT2_PATTERN, regex.IGNORECASE).findall(text)


@wrong("ch02.pretokenize", diagnosis=None)
def pretokenize_ascii_letters(text):
    # [A-Za-z] instead of \p{L}: accented letters and other scripts fall apart.
    return re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", text)


# -- train_bpe ------------------------------------------------------------------------------
def _words(text, special_tokens, pattern=GPT2_PATTERN):
    table = bytes_to_unicode()
    parts = [text]
    for s in special_tokens:
        parts = [q for p in parts for q in p.split(s)]
    counts = Counter()
    for p in parts:
        for w in regex.findall(pattern, p):
            counts[tuple(table[b] for b in w.encode("utf-8"))] += 1
    return counts


def _merge(words, pair):
    new = Counter()
    for w, f in words.items():
        out, i = [], 0
        while i < len(w):
            if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                out.append(w[i] + w[i + 1])
                i += 2
            else:
                out.append(w[i])
                i += 1
        new[tuple(out)] += f
    return new


@wrong("ch02.train_bpe", diagnosis="tie-first")
def train_bpe_most_common(text, vocab_size, special_tokens=()):
    vocab = {s: i for i, s in enumerate(special_tokens)}
    for c in sorted(bytes_to_unicode().values()):
        vocab[c] = len(vocab)
    words, merges = _words(text, special_tokens), []
    while len(vocab) < vocab_size:
        stats = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                stats[pair] += f
        if not stats:
            break
        pair = stats.most_common(1)[0][0]  # ties: whichever pair was counted first
        merges.append(pair)
        vocab[pair[0] + pair[1]] = len(vocab)
        words = _merge(words, pair)
    return vocab, merges


@wrong("ch02.train_bpe", diagnosis="tie-lexical")
def train_bpe_max_by_string(text, vocab_size, special_tokens=()):
    vocab = {s: i for i, s in enumerate(special_tokens)}
    for c in sorted(bytes_to_unicode().values()):
        vocab[c] = len(vocab)
    words, merges = _words(text, special_tokens), []
    while len(vocab) < vocab_size:
        stats = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                stats[pair] += f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges.append(pair)
        vocab[pair[0] + pair[1]] = len(vocab)
        words = _merge(words, pair)
    return vocab, merges


@wrong("ch02.train_bpe", diagnosis="specials-last")
def train_bpe_specials_appended(text, vocab_size, special_tokens=()):
    vocab = {}
    for c in sorted(bytes_to_unicode().values()):
        vocab[c] = len(vocab)
    for s in special_tokens:
        vocab[s] = len(vocab)
    words, merges = _words(text, special_tokens), []
    while len(vocab) < vocab_size:
        stats = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                stats[pair] += f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], vocab[p[0]], vocab[p[1]]))
        merges.append(pair)
        vocab[pair[0] + pair[1]] = len(vocab)
        words = _merge(words, pair)
    return vocab, merges


@wrong("ch02.train_bpe", diagnosis=None)
def train_bpe_byte_order_alphabet(text, vocab_size, special_tokens=()):
    # Byte characters numbered in byte order (0..255) instead of code-point order.
    table = bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(special_tokens)}
    for b in range(256):
        vocab[table[b]] = len(vocab)
    words, merges = _words(text, special_tokens), []
    while len(vocab) < vocab_size:
        stats = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                stats[pair] += f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], vocab[p[0]], vocab[p[1]]))
        merges.append(pair)
        vocab[pair[0] + pair[1]] = len(vocab)
        words = _merge(words, pair)
    return vocab, merges


# -- bpe_encode -----------------------------------------------------------------------------
def _encode_words(text, vocab, merges, rank_order=True, mapped=True):
    table = bytes_to_unicode()
    ranks = {tuple(m): i for i, m in enumerate(merges)}
    ids = []
    for word in regex.findall(GPT2_PATTERN, text):
        syms = [table[b] for b in word.encode("utf-8")] if mapped else list(word)
        while True:
            candidates = [(ranks[p], i) for i, p in enumerate(zip(syms, syms[1:])) if p in ranks]
            if not candidates:
                break
            _, i = min(candidates) if rank_order else min(candidates, key=lambda c: c[1])
            syms[i:i + 2] = [syms[i] + syms[i + 1]]
        ids += [vocab[s] for s in syms if s in vocab]  # skips what it cannot find
    return ids


@wrong("ch02.bpe_encode", diagnosis="leftmost-first")
def bpe_encode_left_to_right(text, vocab, merges, special_tokens=()):
    out = []
    for i, part in enumerate(regex.split("(" + "|".join(map(regex.escape, special_tokens)) + ")", text)
                             if special_tokens else [text]):
        out += [vocab[part]] if part in special_tokens else _encode_words(part, vocab, merges, rank_order=False)
    return out


@wrong("ch02.bpe_encode", diagnosis="specials-as-text")
def bpe_encode_ignores_specials(text, vocab, merges, special_tokens=()):
    return _encode_words(text, vocab, merges)


@wrong("ch02.bpe_encode", diagnosis="unmapped-bytes")
def bpe_encode_on_characters(text, vocab, merges, special_tokens=()):
    out = []
    for part in (regex.split("(" + "|".join(map(regex.escape, special_tokens)) + ")", text) if special_tokens else [text]):
        out += [vocab[part]] if part in special_tokens else _encode_words(part, vocab, merges, mapped=False)
    return out


@wrong("ch02.bpe_encode", diagnosis=None)
def bpe_encode_each_merge_once(text, vocab, merges, special_tokens=()):
    # Applies every merge once, in order, to the whole text at once: merges cross word boundaries.
    table = bytes_to_unicode()
    syms = [table[b] for b in text.encode("utf-8")]
    for a, b in merges:
        i, out = 0, []
        while i < len(syms):
            if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(syms[i])
                i += 1
        syms = out
    return [vocab.get(s, 0) for s in syms]


# -- bpe_decode -----------------------------------------------------------------------------
@wrong("ch02.bpe_decode", diagnosis="per-token")
def bpe_decode_token_by_token(ids, vocab):
    inv = {i: t for t, i in vocab.items()}
    back = {c: b for b, c in bytes_to_unicode().items()}
    text = ""
    for i in ids:
        tok = inv[i]
        if all(c in back for c in tok):
            text += bytes(back[c] for c in tok).decode("utf-8", errors="replace")
        else:
            text += tok
    return text


@wrong("ch02.bpe_decode", diagnosis="unmapped")
def bpe_decode_join_strings(ids, vocab):
    inv = {i: t for t, i in vocab.items()}
    return "".join(inv[i] for i in ids)


@wrong("ch02.bpe_decode", diagnosis="errors-ignore")
def bpe_decode_drops_bad_bytes(ids, vocab):
    inv = {i: t for t, i in vocab.items()}
    back = {c: b for b, c in bytes_to_unicode().items()}
    data = b""
    for i in ids:
        tok = inv[i]
        data += bytes(back[c] for c in tok) if all(c in back for c in tok) else tok.encode()
    return data.decode("utf-8", errors="ignore")


@wrong("ch02.bpe_decode", diagnosis=None)
def bpe_decode_strict(ids, vocab):
    inv = {i: t for t, i in vocab.items()}
    back = {c: b for b, c in bytes_to_unicode().items()}
    data = b"".join(bytes(back[c] for c in inv[i]) if all(c in back for c in inv[i]) else inv[i].encode() for i in ids)
    return data.decode("utf-8")  # raises on half a character


# -- wordpiece_word -------------------------------------------------------------------------
@wrong("ch02.wordpiece_word", diagnosis="shortest-first")
def wordpiece_shortest(word, vocab, unk_token="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk_token]
    out, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            return [unk_token]
    return out


@wrong("ch02.wordpiece_word", diagnosis="no-prefix")
def wordpiece_without_hashes(word, vocab, unk_token="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk_token]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                out.append(word[start:end])
                start = end
                break
        else:
            return [unk_token]
    return out


@wrong("ch02.wordpiece_word", diagnosis="partial-unk")
def wordpiece_keeps_pieces(word, vocab, unk_token="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk_token]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            out.append(unk_token)
            break
    return out


@wrong("ch02.wordpiece_word", diagnosis="no-max-chars")
def wordpiece_no_length_limit(word, vocab, unk_token="[UNK]", max_chars=100):
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            return [unk_token]
    return out


# -- wordpiece_tokenize ---------------------------------------------------------------------
def _greedy(word, vocab):
    out, start = [], 0
    if len(word) > 100:
        return ["[UNK]"]
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return out


def _strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _split_punct(text):
    words = []
    for w in text.split():
        cur = ""
        for c in w:
            if unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                if cur:
                    words.append(cur)
                words.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            words.append(cur)
    return words


@wrong("ch02.wordpiece_tokenize", diagnosis="no-lowercase")
def wordpiece_tokenize_cased(text, vocab):
    return [p for w in _split_punct(_strip_accents(text)) for p in _greedy(w, vocab)]


@wrong("ch02.wordpiece_tokenize", diagnosis="accents-kept")
def wordpiece_tokenize_keeps_accents(text, vocab):
    return [p for w in _split_punct(text.lower()) for p in _greedy(w, vocab)]


@wrong("ch02.wordpiece_tokenize", diagnosis="whitespace-only")
def wordpiece_tokenize_whitespace(text, vocab):
    return [p for w in _strip_accents(text.lower()).split() for p in _greedy(w, vocab)]


# -- unigram_segment ------------------------------------------------------------------------
@wrong("ch02.unigram_segment", diagnosis="greedy")
def unigram_longest_match(text, pieces):
    s = "▁" + text.replace(" ", "▁")
    out, i = [], 0
    while i < len(s):
        j = len(s)
        while j > i + 1 and s[i:j] not in pieces:
            j -= 1
        out.append(s[i:j])
        i = j
    return out


def _viterbi(s, score):
    n = len(s)
    best = [float("-inf")] * (n + 1)
    best[0], back = 0.0, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - 16), end):
            value = score(s[start:end])
            if value is not None and best[start] + value > best[end]:
                best[end], back[end] = best[start] + value, start
    out, end = [], n
    while end > 0:
        out.append(s[back[end]:end])
        end = back[end]
    return out[::-1]


@wrong("ch02.unigram_segment", diagnosis="no-dummy-prefix")
def unigram_without_prefix(text, pieces):
    return _viterbi(text.replace(" ", "▁"), lambda p: pieces.get(p))


@wrong("ch02.unigram_segment", diagnosis="fewest-pieces")
def unigram_fewest_pieces(text, pieces):
    return _viterbi("▁" + text.replace(" ", "▁"), lambda p: -1.0 if p in pieces else None)


@wrong("ch02.unigram_segment", diagnosis=None)
def unigram_spaces_kept(text, pieces):
    return _viterbi("▁" + text, lambda p: pieces.get(p))  # spaces are never replaced by '▁'
