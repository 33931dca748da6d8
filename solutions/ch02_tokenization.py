"""Chapter 2 reference solutions: tokenization.

Byte-level BPE (train, encode, decode) as in GPT-2, WordPiece as in BERT, and the
SentencePiece unigram segmentation. Each exercise function's docstring is the spec the
learner reads; its body is the reference solution. Provided helpers (pattern, tables,
normalisation, data loading) are given to learners in full.
"""

import heapq
import io
import itertools
import re
import struct
import unicodedata
from collections import Counter, defaultdict

import regex
import sentencepiece as spm

# noqa: F401  (the corpus, from chapter 1)
from solutions.ch01_next_token import shakespeare_text

# --------------------------------------------------------------------------------------
# Provided helpers

# GPT-2's pre-tokenization: contractions, letters, digits, other symbols, whitespace.
# A leading space sticks to the word after it, so " the" and "the" are different words.
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte (0..255) -> printable character.

    Printable bytes (33..126, 161..172, 174..255) map to themselves; the other 68 bytes
    (controls, space, ...) map to chr(256 + n) in order, so every token is a visible
    string (a space becomes 'Ġ', a newline 'Ċ').
    """
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    others = [b for b in range(256) if b not in printable]
    return {
        b: chr(b) if b in printable else chr(256 + others.index(b)) for b in range(256)
    }


def bert_normalize(text: str) -> list[str]:
    """Uncased BERT normalisation and pre-tokenisation: text -> list of words.

    In the order `tokenizers`' BertNormalizer + BertPreTokenizer apply them: drop NUL,
    U+FFFD and control, format, private-use characters (Cc, Cf, Co, Cs; not unassigned
    Cn) except tab/newline/CR; turn whitespace into ' '; put spaces around CJK
    ideographs; strip accents (NFD, drop category Mn); lowercase character by character;
    split on whitespace; cut every punctuation character out as a word of its own.
    """
    def is_cjk(cp):
        # CJK Unified Ideographs blocks (not Hangul or kana). `tokenizers` starts the
        # Extension E block at 0x2B920 (BERT's Python code: 0x2B820); we follow it.
        return (
            0x4E00 <= cp <= 0x9FFF
            or 0x3400 <= cp <= 0x4DBF
            or 0xF900 <= cp <= 0xFAFF
            or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F
            or 0x2B920 <= cp <= 0x2CEAF
            or 0x2F800 <= cp <= 0x2FA1F
        )

    def is_punct(ch):
        # BERT counts all ASCII non-alphanumeric symbols ('$', '+', '^', ...)
        # as punctuation.
        cp = ord(ch)
        return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
                or unicodedata.category(ch).startswith("P"))

    chars = []
    for ch in text:
        control = (
            unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") and ch not in "\t\n\r"
        )
        if control or ch in "\x00\ufffd":
            continue
        if ch.isspace():
            chars.append(" ")
        elif is_cjk(ord(ch)):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    text = unicodedata.normalize("NFD", "".join(chars))
    text = "".join(c.lower() for c in text if unicodedata.category(c) != "Mn")
    words = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if is_punct(ch):
                words += [word, ch] if word else [ch]
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


def train_sentencepiece(text: str, vocab_size: int) -> "spm.SentencePieceProcessor":
    """Train a SentencePiece unigram model in memory on the lines of `text`.

    Identity normalisation and whitespace kept as it is, so the only change made to the
    input is ' ' -> '▁' plus a '▁' in front. One thread: deterministic, and hardly
    slower.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0, num_threads=1,
        minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def sentencepiece_pieces(sp: "spm.SentencePieceProcessor") -> dict[str, float]:
    """The normal pieces of a SentencePiece model with their scores
    (log-probabilities)."""
    return {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))}


# --------------------------------------------------------------------------------------
# Exercises: byte-level BPE


def pretokenize(text: str) -> list[str]:
    """Split `text` into GPT-2 pre-tokens with `GPT2_PATTERN` (use `regex`, not `re`:
    the pattern needs \\p{L}). "Hello world!!" -> ["Hello", " world", "!!"].
    Joining the pieces gives back `text`.
    """
    return regex.findall(GPT2_PATTERN, text)


def train_bpe(text: str, vocab_size: int, special_tokens: list[str] = ()
              ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE tokenizer; returns (vocab, merges) like `tokenizers` does.

    Tokens are strings of byte-level characters (`bytes_to_unicode`), e.g. 'Ġthe'.
    Ids: the special tokens first (given order), then the 256 byte characters sorted by
    code point, then each new token in the order it was created.
    Training text: split `text` on the special tokens (longest match first, as in
    `bpe_encode`) and drop them, pre-tokenize each part with `pretokenize`, count the
    words. Every merge step: among adjacent pairs inside words, counted with the word's
    frequency, take the pair with the highest count, ties broken by the smallest
    (id_left, id_right); append it to `merges`, add the joined string to `vocab` (unless
    it is there already) and replace the pair, left to right, in every word that has it.
    Stop at len(vocab) == vocab_size or when no pair is left (count 0).
    Update pair counts incrementally: recounting everything every step is too slow.
    """
    vocab = {}
    for tok in list(special_tokens) + sorted(bytes_to_unicode().values()):
        vocab.setdefault(tok, len(vocab))
    id_to_tok = list(vocab)
    byte_ids = [vocab[ch] for _, ch in sorted(bytes_to_unicode().items())]

    parts = [text]
    if special_tokens:  # longest first, so "<|endoftext|>" wins over a prefix "<|end"
        longest_first = sorted(special_tokens, key=len, reverse=True)
        parts = re.split("|".join(map(re.escape, longest_first)), text)
    counts = Counter(w for part in parts for w in pretokenize(part))
    words = [[byte_ids[b] for b in w.encode("utf-8")] for w in counts]
    freqs = list(counts.values())

    # pair -> count over the corpus, pair -> indices of the words it occurs in
    stats, where = defaultdict(int), defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            stats[pair] += freqs[i]
            where[pair].add(i)
    # Max-heap via negated counts; (-count, pair) pops the highest count, then the
    # smallest pair. Entries go stale when counts drop: they are re-queued when popped
    # (lazy).
    tiebreak = itertools.count()
    heap = [(-stats[p], p, next(tiebreak), pos) for p, pos in where.items()]
    heapq.heapify(heap)

    def merge_word(w, a, b, new):
        """Merge (a, b) -> new in list `w` in place; return the pair count changes."""
        changes, i = [], 0
        while i < len(w) - 1:
            if w[i] == a and w[i + 1] == b:
                if i > 0:
                    changes += [((w[i - 1], a), -1), ((w[i - 1], new), 1)]
                w[i:i + 2] = [new]
                if i < len(w) - 1:
                    changes += [((b, w[i + 1]), -1), ((new, w[i + 1]), 1)]
            i += 1
        return changes

    merges = []
    while len(vocab) < vocab_size and heap:
        neg, pair, _, pos = heapq.heappop(heap)
        if -neg != stats[pair]:  # stale: put it back with its true count
            heapq.heappush(heap, (-stats[pair], pair, next(tiebreak), pos))
            continue
        if stats[pair] < 1:
            break
        a, b = pair
        new_tok = id_to_tok[a] + id_to_tok[b]
        if new_tok not in vocab:  # two merges can spell the same string: keep one id
            vocab[new_tok] = len(vocab)
            id_to_tok.append(new_tok)
        merges.append((id_to_tok[a], id_to_tok[b]))
        new_pos = defaultdict(set)  # pairs created by this merge -> where
        for i in pos:
            for p, d in merge_word(words[i], a, b, vocab[new_tok]):
                stats[p] += d * freqs[i]
                if d > 0:
                    new_pos[p].add(i)
        for p, ws in new_pos.items():
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p, next(tiebreak), ws))
    return vocab, merges


def bpe_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]],
               special_tokens: list[str] = ()) -> list[int]:
    """Encode `text` to token ids with a trained byte-level BPE.

    Special tokens found in `text` become their own id (the longest wins where two start
    at the same place). The rest is pre-tokenized (`pretokenize`); each word's UTF-8
    bytes are mapped with `bytes_to_unicode`, then merges are applied inside the word:
    repeatedly merge the adjacent pair of lowest rank (its index in `merges`), the
    leftmost one first, until no adjacent pair is in `merges`. Output: vocab ids of the
    final pieces.
    """
    byte_chr = bytes_to_unicode()
    rank = {pair: r for r, pair in enumerate(merges)}
    cache = {}  # words repeat a lot: encode each distinct one once

    def encode_word(word):
        parts = [byte_chr[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            pairs = zip(parts, parts[1:])
            r, i = min((rank.get(p, float("inf")), i) for i, p in enumerate(pairs))
            if r == float("inf"):  # no adjacent pair is a merge: done
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [vocab[p] for p in parts]

    specials = sorted(special_tokens, key=len, reverse=True)  # longest first
    chunks = [text]
    if specials:
        chunks = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    ids = []
    for k, chunk in enumerate(chunks):
        if k % 2 == 1:  # re.split with a group puts the separators at odd positions
            ids.append(vocab[chunk])
            continue
        for word in pretokenize(chunk):
            if word not in cache:
                cache[word] = encode_word(word)
            ids += cache[word]
    return ids


def bpe_decode(ids: list[int], vocab: dict[str, int]) -> str:
    """Decode token ids back to text: map each token's characters back to bytes with the
    inverse of `bytes_to_unicode` (a token with a character outside that table, such as
    some special tokens, contributes its own UTF-8 bytes), join all bytes, decode UTF-8
    with errors="replace" (an incomplete character becomes '\\ufffd').
    """
    id_to_tok = {i: t for t, i in vocab.items()}
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    out = bytearray()
    for i in ids:
        tok = id_to_tok[i]
        if all(c in byte_of for c in tok):
            out += bytes(byte_of[c] for c in tok)
        else:
            out += tok.encode("utf-8")
    return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------
# Exercises: WordPiece


def wordpiece_word(word: str, vocab: dict[str, int], unk_token: str = "[UNK]",
                   max_chars: int = 100) -> list[str]:
    """Split one pre-tokenized word into WordPiece tokens, greedy longest match first.

    From the start of the word take the longest prefix in `vocab`; then from where it
    ended, the longest '##'-prefixed continuation in `vocab`, and so on. "unaffable" ->
    ["una", "##ffa", "##ble"] (if those are in vocab). If some position has no match, or
    the word has more than `max_chars` characters, return [unk_token].
    """
    if len(word) > max_chars:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:  # nothing matched at `start`: the whole word is unknown
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


def wordpiece_tokenize(text: str, vocab: dict[str, int]) -> list[str]:
    """BERT (uncased) tokenization: `bert_normalize` the text into words, then
    `wordpiece_word` on each word. Returns the token strings (no [CLS]/[SEP]).
    """
    return [
        piece for word in bert_normalize(text) for piece in wordpiece_word(word, vocab)
    ]


# --------------------------------------------------------------------------------------
# Exercises: SentencePiece unigram


def unigram_segment(text: str, pieces: dict[str, float]) -> list[str]:
    """Most likely segmentation of `text` under a unigram language model
    (SentencePiece).

    First make whitespace a symbol: s = '▁' + text.replace(' ', '▁') ('' gives []). Then
    pick the split of s into pieces that maximises the sum of their scores
    (log-probabilities), by dynamic programming (Viterbi) over end positions: best[e] =
    max over pieces s[b:e] of best[b] + score. A character that is not a piece by itself
    may also be taken as an unknown one-character piece of score min(scores) - 10; in
    the result, runs of adjacent unknowns are joined into one piece.
    Returns the pieces in order; ''.join(result) == s. Equal-score splits (the same
    pieces in another order) are rare; any of them is accepted.
    """
    if not text:
        return []
    s = "▁" + text.replace(" ", "▁")
    n, longest = len(s), max(map(len, pieces))

    def f32(x):
        # SentencePiece adds scores in float32; rounding like it picks the
        # same split on ties
        return struct.unpack("f", struct.pack("f", x))[0]

    unk_score = f32(min(pieces.values()) - 10.0)
    best = [float("-inf")] * (n + 1)  # best[e]: best score of s[:e]
    # back[e]: start of the last piece of that best split
    back = [0] * (n + 1)
    unk = [False] * (n + 1)           # unk[e]: that last piece is an unknown character
    best[0] = 0.0
    for b in range(n):
        # candidates s[b:e]; a char without a piece of its own may also be an unknown
        cands = [
            (e, pieces[s[b:e]], False)
            for e in range(b + 1, min(n, b + longest) + 1)
            if s[b:e] in pieces
        ]
        if s[b] not in pieces:
            cands.append((b + 1, unk_score, True))
        for e, score, is_unk in cands:
            total = f32(best[b] + score)
            if total > best[e]:  # strict: on an exact tie the earliest start b wins
                best[e], back[e], unk[e] = total, b, is_unk
    out, e = [], n  # walk back from the end; (piece, is_unknown) in reverse order
    while e > 0:
        b = back[e]
        if unk[e] and out and out[-1][1]:  # SentencePiece joins a run of unknowns
            out[-1] = (s[b:e] + out[-1][0], True)
        else:
            out.append((s[b:e], unk[e]))
        e = b
    return [piece for piece, _ in reversed(out)]
