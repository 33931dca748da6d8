"""Chapter 16: the re-derivations the checks use are the libraries' numbers, and the claims
the chapter makes about its data hold."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from solutions.ch16_rag import (BM25, PLAYS, SEPARATORS, chunk_plays, content_words, dense_search,
                                embed_texts, load_minilm, make_questions, mean_pool, merge_splits,
                                play_text, recursive_split, spoken_lines, tokenize)


@pytest.fixture(scope="module")
def chunks():
    return chunk_plays(list(PLAYS), recursive_split)


# -- chunking ------------------------------------------------------------------------------
def test_recursive_split_equals_langchain_on_the_plays():
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    for play in PLAYS:
        text = play_text(play)
        for size, overlap in [(400, 80), (1000, 200), (120, 0)]:
            ref = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap).split_text(text)
            assert recursive_split(text, SEPARATORS, size, overlap) == ref, (play, size, overlap)


def test_merge_and_split_equal_langchain_on_random_texts():
    from langchain_text_splitters import CharacterTextSplitter, RecursiveCharacterTextSplitter

    logging.getLogger("langchain_text_splitters").setLevel(logging.ERROR)
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab \n.") for _ in range(rng.randint(0, 200)))
        size = rng.randint(1, 30)
        overlap = rng.randint(0, size)
        seps = rng.choice([SEPARATORS, [". ", " "], ["\n", ""], ["b", "a", ""]])
        ref = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, separators=seps).split_text(text)
        assert recursive_split(text, seps, size, overlap) == ref
        sep = rng.choice([" ", "\n", ", "])
        pieces = [p for p in text.split(sep) if p]
        ref = CharacterTextSplitter(separator=sep, chunk_size=size, chunk_overlap=overlap).split_text(sep.join(pieces))
        assert merge_splits(pieces, sep, size, overlap) == ref


def test_chunks_know_their_source(chunks):
    assert len(chunks) > 1500
    for c in chunks[::50]:
        assert play_text(c["play"])[c["start"]:c["end"]] == c["text"]


# -- embeddings ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sentence_transformer():
    import transformers

    transformers.logging.set_verbosity_error()
    from sentence_transformers import SentenceTransformer

    from solutions.ch08_objectives import minilm_dir

    return SentenceTransformer(str(minilm_dir()), device="cpu")


def test_embed_texts_equals_sentence_transformers(sentence_transformer, chunks):
    from autograder.exercises.ch16_rag import _embed_expected

    assert sentence_transformer.max_seq_length == 256
    long_text = play_text("macbeth")[5000:8000]                  # > 256 tokens: truncation matters
    texts = [c["text"] for c in chunks[:40]] + [long_text, "Who says this?", "Out, damned spot!"]
    theirs = sentence_transformer.encode(texts, batch_size=16, convert_to_tensor=True).cpu()
    tokenizer, model = load_minilm()
    ours = embed_texts(texts, tokenizer, model, batch_size=7)
    assert (ours - theirs).abs().max() < 1e-5
    # the check's own re-derivation (one text at a time) is the library's numbers too
    assert (_embed_expected(texts) - theirs).abs().max() < 1e-5


def test_mean_pool_equals_the_sentence_transformers_modules():
    from sentence_transformers.models import Normalize, Pooling

    from autograder.exercises.ch16_rag import _pool_expected

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 9, 384, generator=g)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 1 + [0] * 8, [1] * 7 + [0] * 2])
    features = {"token_embeddings": hidden, "attention_mask": mask}
    theirs = Normalize()(Pooling(384, pooling_mode="mean")(features))["sentence_embedding"]
    assert (mean_pool(hidden, mask) - theirs).abs().max() < 1e-6
    assert (_pool_expected(hidden, mask) - theirs).abs().max() < 1e-6


# -- search --------------------------------------------------------------------------------
def test_dense_search_equals_faiss():
    import faiss

    g = torch.Generator().manual_seed(1)
    docs, queries = torch.randn(2000, 384, generator=g), torch.randn(30, 384, generator=g)
    d, q = docs.numpy().copy(), queries.numpy().copy()
    faiss.normalize_L2(d)
    faiss.normalize_L2(q)
    index = faiss.IndexFlatIP(384)
    index.add(d)
    D, I = index.search(q, 10)
    scores, ids = dense_search(queries, docs, 10)
    assert torch.equal(ids, torch.from_numpy(I).long())
    assert (scores - torch.from_numpy(D)).abs().max() < 1e-5


def test_bm25_is_bit_for_bit_rank_bm25(chunks):
    from rank_bm25 import BM25Okapi

    corpus = [tokenize(c["text"]) for c in chunks]
    ref, ours = BM25Okapi(corpus), BM25(corpus)
    rng = random.Random(0)
    queries = [corpus[rng.randrange(len(corpus))][:10] + ["zzz"] for _ in range(20)] + [["the", "the", "and"]]
    for query in queries:
        assert np.array_equal(ref.get_scores(query), ours.get_scores(query).numpy())


# -- the question set ----------------------------------------------------------------------
def test_question_set_is_reproducible_and_well_formed(chunks):
    questions = make_questions(chunks)
    assert questions == make_questions(chunks)                    # same procedure, same set
    assert len(questions) >= 200
    kinds = {q["kind"] for q in questions}
    assert kinds == {"quote", "paraphrase"}
    assert sum(q["kind"] == "paraphrase" for q in questions) >= 50
    lines = {(l["play"], l["text"]): l for p in PLAYS for l in spoken_lines(p)}
    for q in questions:
        assert q["gold"], q
        for g in q["gold"]:
            assert q["line"] in chunks[g]["text"]
        if q["kind"] == "quote":
            assert len(q["gold"]) == 1 and q["line"] in q["question"]
            assert q["answer"].lower() in chunks[q["gold"][0]]["text"].lower()  # the passage names the speaker
        else:
            assert not content_words(q["question"]) & content_words(q["line"])
        assert (q["play"], q["line"]) in lines


@pytest.mark.slow
def test_each_retriever_wins_somewhere(chunks):
    """The chapter's claim: BM25 wins on quotes, dense retrieval on paraphrases."""
    from solutions.ch16_rag import bm25_search, recall_mrr

    questions = make_questions(chunks)
    # The store: every gold chunk and 400 others drawn with a seed (embedding all ~2,000
    # chunks with MiniLM costs minutes on two cores; the chapter does that, here a quarter
    # of the haystack is enough to see which retriever finds which kind of question).
    assert all(c["id"] == i for i, c in enumerate(chunks))
    gold = {g for q in questions for g in q["gold"]}
    rest = sorted(set(range(len(chunks))) - gold)
    pool = np.array(sorted(gold | set(random.Random(0).sample(rest, 400))))
    store = [chunks[i]["text"] for i in pool]
    tokenizer, model = load_minilm()
    vecs = embed_texts(store, tokenizer, model, batch_size=64)
    q_vecs = embed_texts([q["question"] for q in questions], tokenizer, model)
    bm = BM25([tokenize(t) for t in store])
    hits = {"bm25": pool[np.asarray(bm25_search(bm, [q["question"] for q in questions], 10)[1])],
            "dense": pool[np.asarray(dense_search(q_vecs, vecs, 10)[1])]}
    for kind, winner, loser in [("quote", "bm25", "dense"), ("paraphrase", "dense", "bm25")]:
        sel = [i for i, q in enumerate(questions) if q["kind"] == kind]
        gold = [questions[i]["gold"] for i in sel]
        win = recall_mrr(hits[winner][sel].tolist(), gold, 10)[0]
        lose = recall_mrr(hits[loser][sel].tolist(), gold, 10)[0]
        assert win > lose + 0.2, (kind, win, lose)
