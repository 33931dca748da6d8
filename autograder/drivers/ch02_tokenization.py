"""Chapter 2 - what the checks need to run and judge a learner's code (public).

The tokenizers' tables travel with each case as data: a BPE vocabulary and its merges as
a dict and a list of pairs, the SentencePiece pieces as a dict of scores, and the BERT
vocabulary (30,522 tokens) as one string, its tokens one per line in id order, which
``vocab_from_lines`` turns back into the dict the learner receives. Every call gets fresh
copies, so a learner who changes a table harms only that call.
"""
from __future__ import annotations

from ..core import compare_equal


def vocab_from_lines(lines: str) -> dict[str, int]:
    """``"tok0\\ntok1\\n..."`` -> ``{"tok0": 0, "tok1": 1, ...}`` (a vocabulary as one string)."""
    return {token: i for i, token in enumerate(lines.split("\n"))}


# -- train_bpe ----------------------------------------------------------------------------
def compare_bpe(expected, got):
    """Merges compared in order (the first that differs is named), then the vocabulary."""
    if not (isinstance(got, tuple) and len(got) == 2):
        return f"expected a tuple (vocab, merges), got {type(got).__name__}"
    vocab, merges = got
    if not isinstance(vocab, dict) or not isinstance(merges, (list, tuple)):
        return f"expected (dict, list), got ({type(vocab).__name__}, {type(merges).__name__})"
    exp_vocab, exp_merges = expected
    merges = [tuple(m) if isinstance(m, (list, tuple)) else m for m in merges]
    for i, (e, g) in enumerate(zip(exp_merges, merges)):
        if e != g:
            return f"merge #{i} differs: expected {e!r}, got {g!r} (the first {i} merges agree)"
    if len(merges) != len(exp_merges):
        return f"expected {len(exp_merges)} merges, got {len(merges)} (the first {min(len(merges), len(exp_merges))} agree)"
    problem = compare_equal(exp_vocab, dict(vocab))
    return None if problem is None else f"the merges agree but the vocabulary does not: {problem}"


# -- bpe_encode, bpe_decode ---------------------------------------------------------------
def encode_run(fn, text, vocab, merges, special_tokens):
    """``bpe_encode(text, vocab, merges, special_tokens)`` on copies of the tables."""
    return fn(text, dict(vocab), list(merges), list(special_tokens))


def decode_run(fn, ids, vocab):
    """``bpe_decode(ids, vocab)`` on copies of the ids and the vocabulary."""
    return fn(list(ids), dict(vocab))


# -- wordpiece_word, wordpiece_tokenize ---------------------------------------------------
def wordpiece_run(fn, text, vocab_lines, *rest):
    """``fn(text, vocab, *rest)`` with the vocabulary rebuilt from its lines."""
    return fn(text, vocab_from_lines(vocab_lines), *rest)


# -- unigram_segment ----------------------------------------------------------------------
def unigram_run(fn, text, pieces):
    """``unigram_segment(text, pieces)`` on a copy of the pieces' scores."""
    return fn(text, dict(pieces))
