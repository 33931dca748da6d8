"""Correct answers to chapter 2, in other styles than the reference."""
import codecs
import heapq
import re
import unicodedata
from collections import Counter, defaultdict

import numpy as np
import regex

from . import right

# The learner's own copies of what the chapter provides.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLITTER = regex.compile(PATTERN)


def _byte_table():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _words(text):
    return [m.group(0) for m in _SPLITTER.finditer(text)]


# -- pretokenize ----------------------------------------------------------------------------
@right("ch02.pretokenize", style="regex.finditer over a compiled pattern")
def pretokenize_finditer(text):
    out = []
    for match in _SPLITTER.finditer(text):
        out.append(match.group())
    return out


@right("ch02.pretokenize", style="regex.split with a capturing group, empty strings dropped")
def pretokenize_split(text):
    pieces = regex.split("(" + PATTERN + ")", text)
    return [p for p in pieces if p]


# -- train_bpe ------------------------------------------------------------------------------
def _initial_vocab(special_tokens):
    vocab = {}
    for tok in special_tokens:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    for ch in sorted(_byte_table().values()):
        if ch not in vocab:
            vocab[ch] = len(vocab)
    return vocab


def _word_counts(text, special_tokens):
    parts = [text]
    for tok in sorted(special_tokens, key=len, reverse=True):
        parts = [piece for part in parts for piece in part.split(tok)]
    table = _byte_table()
    counts = Counter()
    for part in parts:
        for w in _words(part):
            counts[tuple(table[b] for b in w.encode("utf-8"))] += 1
    return counts


def _merge_symbols(symbols, a, b):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


@right("ch02.train_bpe", style="strings as symbols, all pair counts recomputed every step")
def train_bpe_recount(text, vocab_size, special_tokens=()):
    vocab = _initial_vocab(special_tokens)
    words = _word_counts(text, special_tokens)
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        a, b = max(pairs, key=lambda p: (pairs[p], -vocab[p[0]], -vocab[p[1]]))
        merges.append((a, b))
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        new_words = Counter()
        for w, n in words.items():
            new_words[_merge_symbols(w, a, b) if a in w else w] += n
        words = new_words
    return vocab, merges


@right("ch02.train_bpe", style="incremental counts, best pair found with max() each step, no heap")
def train_bpe_incremental(text, vocab_size, special_tokens=()):
    vocab = _initial_vocab(special_tokens)
    counted = _word_counts(text, special_tokens)
    words = [list(w) for w in counted]
    freq = list(counted.values())
    pair_count = defaultdict(int)
    occurs = defaultdict(set)
    for k, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freq[k]
            occurs[p].add(k)
    merges = []
    while len(vocab) < vocab_size:
        live = [p for p, c in pair_count.items() if c > 0]
        if not live:
            break
        a, b = min(live, key=lambda p: (-pair_count[p], vocab[p[0]], vocab[p[1]]))
        merges.append((a, b))
        joined = a + b
        vocab.setdefault(joined, len(vocab))
        for k in list(occurs[(a, b)]):
            w, n = words[k], freq[k]
            for p in zip(w, w[1:]):
                pair_count[p] -= n
            w = list(_merge_symbols(tuple(w), a, b))
            words[k] = w
            for p in zip(w, w[1:]):
                pair_count[p] += n
                occurs[p].add(k)
        pair_count.pop((a, b), None)
    return vocab, merges


# -- bpe_encode -----------------------------------------------------------------------------
def _split_specials(text, special_tokens):
    """(is_special, chunk) pieces, scanning for the longest special token at each position."""
    specials = sorted(special_tokens, key=len, reverse=True)
    out, start, i = [], 0, 0
    while i < len(text):
        hit = next((s for s in specials if s and text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        out.append((False, text[start:i]))
        out.append((True, hit))
        i += len(hit)
        start = i
    out.append((False, text[start:]))
    return out


@right("ch02.bpe_encode", style="GPT-2's original loop: merge every occurrence of the best pair at once")
def bpe_encode_gpt2_style(text, vocab, merges, special_tokens=()):
    table = _byte_table()
    ranks = dict(zip(map(tuple, merges), range(len(merges))))
    ids = []
    for is_special, chunk in _split_specials(text, special_tokens):
        if is_special:
            ids.append(vocab[chunk])
            continue
        for w in _words(chunk):
            word = tuple(table[b] for b in w.encode("utf-8"))
            while len(word) > 1:
                bigram = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
                if bigram not in ranks:
                    break
                word = _merge_symbols(word, *bigram)
            ids.extend(vocab[s] for s in word)
    return ids


@right("ch02.bpe_encode", style="a linked list of symbols and a heap of candidate merges")
def bpe_encode_heap(text, vocab, merges, special_tokens=()):
    table = _byte_table()
    ranks = {(a, b): r for r, (a, b) in enumerate(merges)}
    if special_tokens:
        alternation = "|".join(re.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        chunks = re.split(f"({alternation})", text)
    else:
        chunks = [text]
    specials = set(special_tokens)

    def encode_word(w):
        sym = [table[b] for b in w.encode("utf-8")]
        n = len(sym)
        nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap = []

        def push(i):
            j = nxt[i]
            if j < n:
                r = ranks.get((sym[i], sym[j]))
                if r is not None:
                    heapq.heappush(heap, (r, i, sym[i], sym[j]))

        for i in range(n - 1):
            push(i)
        while heap:
            r, i, left, rgt = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if not alive[i] or j >= n or sym[i] != left or sym[j] != rgt:
                continue  # stale entry
            sym[i] = left + rgt
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        return [vocab[sym[i]] for i in range(n) if alive[i]]

    ids = []
    for chunk in chunks:
        if chunk in specials:
            ids.append(vocab[chunk])
        elif chunk:
            for w in _words(chunk):
                ids += encode_word(w)
    return ids


# -- bpe_decode -----------------------------------------------------------------------------
@right("ch02.bpe_decode", style="list of byte values, bytes() at the end")
def bpe_decode_list(ids, vocab):
    inverse = {}
    for tok, i in vocab.items():
        inverse[i] = tok
    to_byte = {ch: b for b, ch in _byte_table().items()}
    values = []
    for i in ids:
        tok = inverse[i]
        if set(tok) <= to_byte.keys():
            values.extend(to_byte[ch] for ch in tok)
        else:
            values.extend(tok.encode("utf-8"))
    return bytes(values).decode("utf-8", "replace")


@right("ch02.bpe_decode", style="an incremental UTF-8 decoder fed token by token")
def bpe_decode_incremental(ids, vocab):
    by_id = dict(zip(vocab.values(), vocab.keys()))
    to_byte = {ch: b for b, ch in _byte_table().items()}
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = []
    for i in ids:
        tok = by_id[i]
        try:
            chunk = bytes(to_byte[ch] for ch in tok)
        except KeyError:
            chunk = tok.encode("utf-8")
        text.append(decoder.decode(chunk))
    text.append(decoder.decode(b"", final=True))
    return "".join(text)


# -- wordpiece_word -------------------------------------------------------------------------
@right("ch02.wordpiece_word", style="recursive")
def wordpiece_word_recursive(word, vocab, unk_token="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk_token]

    def split(rest, prefix):
        if not rest:
            return []
        for end in range(len(rest), 0, -1):
            if prefix + rest[:end] in vocab:
                tail = split(rest[end:], "##")
                return None if tail is None else [prefix + rest[:end]] + tail
        return None

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, len(word) + 100))
    try:
        pieces = split(word, "")
    finally:
        sys.setrecursionlimit(limit)
    return [unk_token] if pieces is None else pieces


@right("ch02.wordpiece_word", style="scan ends upwards and keep the longest match")
def wordpiece_word_scan_up(word, vocab, unk_token="[UNK]", max_chars=100):
    chars = list(word)
    if len(chars) > max_chars:
        return [unk_token]
    out, i = [], 0
    while i < len(chars):
        best = None
        for j in range(i + 1, len(chars) + 1):
            candidate = ("##" if i else "") + "".join(chars[i:j])
            if candidate in vocab:
                best = (candidate, j)
        if best is None:
            return [unk_token]
        out.append(best[0])
        i = best[1]
    return out


# -- wordpiece_tokenize ---------------------------------------------------------------------
_CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F)]


def _is_cjk(ch):
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punctuation(ch):
    return (ch.isascii() and not ch.isalnum() and not ch.isspace() and ord(ch) > 32 and ord(ch) != 127) \
        or unicodedata.category(ch)[0] == "P"


def _clean(text):
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\t\n\r" or ch.isspace():
            if ch in "\t\n\r" or cat not in ("Cc", "Cf", "Co", "Cs"):
                out.append(" ")
            continue
        if ch in ("\x00", "\ufffd") or cat in ("Cc", "Cf", "Co", "Cs"):
            continue
        out.append(" " + ch + " " if _is_cjk(ch) else ch)
    decomposed = unicodedata.normalize("NFD", "".join(out))
    return "".join(ch.lower() for ch in decomposed if unicodedata.category(ch) != "Mn")


def _wordpiece(word, vocab, unk="[UNK]"):
    if len(word) > 100:
        return [unk]
    out, i = [], 0
    while i < len(word):
        for j in range(len(word), i, -1):
            piece = word[i:j] if i == 0 else "##" + word[i:j]
            if piece in vocab:
                out.append(piece)
                i = j
                break
        else:
            return [unk]
    return out


@right("ch02.wordpiece_tokenize", style="own normaliser, punctuation split with itertools.groupby")
def wordpiece_tokenize_groupby(text, vocab):
    import itertools

    tokens = []
    for chunk in _clean(text).split():
        # consecutive punctuation characters must still be separate words
        for is_p, group in itertools.groupby(chunk, key=_is_punctuation):
            if is_p:
                for ch in group:
                    tokens += _wordpiece(ch, vocab)
            else:
                tokens += _wordpiece("".join(group), vocab)
    return tokens


_PUNCT = r"[!-/:-@\[-`{-~\p{P}]"


@right("ch02.wordpiece_tokenize", style="regex findall for the pre-tokenisation")
def wordpiece_tokenize_regex(text, vocab):
    normalised = _clean(text)
    words = regex.findall(_PUNCT + r"|[^\s!-/:-@\[-`{-~\p{P}]+", normalised)
    out = []
    for w in words:
        out.extend(_wordpiece(w, vocab))
    return out


# -- unigram_segment ------------------------------------------------------------------------
@right("ch02.unigram_segment", style="pull-style Viterbi in float64, unknown runs joined afterwards")
def unigram_segment_float64(text, pieces):
    if text == "":
        return []
    s = "\u2581" + text.replace(" ", "\u2581")
    n = len(s)
    max_len = max(len(p) for p in pieces)
    unk = min(pieces.values()) - 10.0
    score = [0.0] + [-float("inf")] * n
    start = [0] * (n + 1)
    is_unk = [False] * (n + 1)
    for e in range(1, n + 1):
        for b in range(max(0, e - max_len), e):
            piece = s[b:e]
            if piece in pieces:
                cand, u = score[b] + pieces[piece], False
            elif e - b == 1:
                cand, u = score[b] + unk, True
            else:
                continue
            if cand > score[e]:
                score[e], start[e], is_unk[e] = cand, b, u
    segs = []
    e = n
    while e > 0:
        segs.append((s[start[e]:e], is_unk[e]))
        e = start[e]
    segs.reverse()
    out = []
    for piece, u in segs:
        if u and out and out[-1][1]:
            out[-1] = (out[-1][0] + piece, True)
        else:
            out.append((piece, u))
    return [p for p, _ in out]


@right("ch02.unigram_segment", style="push-style Viterbi over a trie of the pieces, numpy float32 sums")
def unigram_segment_trie(text, pieces):
    if not text:
        return []
    s = "▁" + "▁".join(text.split(" "))
    trie = {}
    for piece, sc in pieces.items():
        node = trie
        for ch in piece:
            node = node.setdefault(ch, {})
        node[None] = np.float32(sc)
    unk_score = np.float32(min(pieces.values()) - 10.0)
    n = len(s)
    best = [None] * (n + 1)
    best[0] = (np.float32(0.0), -1, False)
    for b in range(n):
        if best[b] is None:
            continue
        base = best[b][0]
        node, e = trie, b
        found_single = False
        while e < n and s[e] in node:
            node = node[s[e]]
            e += 1
            if None in node:
                found_single |= e == b + 1
                total = np.float32(base + node[None])
                if best[e] is None or total > best[e][0]:
                    best[e] = (total, b, False)
        if not found_single:
            total = np.float32(base + unk_score)
            if best[b + 1] is None or total > best[b + 1][0]:
                best[b + 1] = (total, b, True)
    path, e = [], n
    while e > 0:
        _, b, u = best[e]
        path.append((b, e, u))
        e = b
    result, prev_unknown = [], False
    for b, e, u in reversed(path):
        if u and prev_unknown:
            result[-1] += s[b:e]
        else:
            result.append(s[b:e])
        prev_unknown = u
    return result
