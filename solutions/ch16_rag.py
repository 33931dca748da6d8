"""Chapter 16 - Retrieval-augmented generation.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. The rest is PROVIDED: the corpus
(five plays from the ``shakespeare`` package), the question set and how it is made, the
reader that answers from retrieved passages, the prompt with numbered citations and the
SQuAD-style exact match / F1.
"""
from __future__ import annotations

import math
import re
import string
import time
from collections import Counter

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch01_next_token import shakespeare_works
from solutions.ch08_objectives import minilm_dir


# --------------------------------------------------------------------------------------
# Provided: the corpus
# --------------------------------------------------------------------------------------
PLAYS = {"macbeth": "Macbeth", "julius_caesar": "Julius Caesar",
         "tempest": "The Tempest", "twelfth_night": "Twelfth Night",
         "merchant_of_venice": "The Merchant of Venice"}
SEPARATORS = ["\n\n", "\n", " ", ""]


def play_text(name: str) -> str:
    """The text of one play from its first act on (without the list of characters)."""
    text = shakespeare_works()[name]
    start = re.search(r"^(ACT|Act) (I|1)\b", text, re.M)
    return text[start.start():] if start else text


# --------------------------------------------------------------------------------------
# Exercises: chunking with overlap (LangChain's RecursiveCharacterTextSplitter)
# --------------------------------------------------------------------------------------
def merge_splits(pieces: list[str], separator: str, chunk_size: int,
                 chunk_overlap: int) -> list[str]:
    """Pack consecutive pieces into chunks of at most ``chunk_size`` characters.

    pieces: non-empty strings in text order; a chunk is ``separator.join`` of a run of
    consecutive pieces, so its length counts one separator between neighbours.
    Walk the pieces, keeping the current run and its length. When adding the next piece
    would make the run longer than ``chunk_size``: emit the run (joined, with whitespace
    stripped at both ends; skip it if that leaves nothing), then drop pieces from the
    front of the run while its length is greater than ``chunk_overlap``, or while the
    next piece still would not fit (and the run is not empty). What remains is the
    overlap: it starts the next chunk. Then add the piece. At the end, emit the last
    run.
    A single piece longer than ``chunk_size`` becomes a chunk of its own.
    Returns the list of chunks (strings).
    """
    sep = len(separator)
    chunks, run, total = [], [], 0
    for piece in pieces:
        n = len(piece)
        if run and total + n + sep > chunk_size:
            text = separator.join(run).strip()
            if text:
                chunks.append(text)
            # keep a tail of at most chunk_overlap characters, with room for `piece`
            while total > chunk_overlap or (run and total + n + sep > chunk_size):
                total -= len(run[0]) + (sep if len(run) > 1 else 0)
                run = run[1:]
        total += n + (sep if run else 0)
        run.append(piece)
    text = separator.join(run).strip()
    if text:
        chunks.append(text)
    return chunks


def recursive_split(text: str, separators: list[str], chunk_size: int,
                    chunk_overlap: int) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_size`` characters, recursively.

    Take the first separator of ``separators`` that occurs in the text ("" matches
    always and means single characters); the separators after it are kept for later.
    Split the text at every occurrence, keeping each separator at the START of the
    piece that follows it (``"a\\n\\nb"`` -> ``["a", "\\n\\nb"]``), and drop empty
    pieces. Then walk the pieces: those shorter than ``chunk_size`` are collected; a
    piece of ``chunk_size`` characters or more first flushes the collected ones through
    ``merge_splits(collected, "", chunk_size, chunk_overlap)`` and is then split again
    with the remaining separators (or kept whole when none remain). Flush what is left
    at the end. Returns the chunks in text order.
    """
    separator, rest = separators[-1], []
    for i, sep in enumerate(separators):
        if sep == "":
            separator = sep
            break
        if sep in text:
            separator, rest = sep, separators[i + 1:]
            break
    if separator:
        parts = text.split(separator)
        pieces = parts[:1] + [separator + p for p in parts[1:]]
    else:
        pieces = list(text)
    pieces = [p for p in pieces if p]
    chunks, good = [], []
    for piece in pieces:
        if len(piece) < chunk_size:
            good.append(piece)
            continue
        if good:
            chunks += merge_splits(good, "", chunk_size, chunk_overlap)
            good = []
        if rest:
            chunks += recursive_split(piece, rest, chunk_size, chunk_overlap)
        else:
            chunks.append(piece)
    if good:
        chunks += merge_splits(good, "", chunk_size, chunk_overlap)
    return chunks


# --------------------------------------------------------------------------------------
# Provided: chunks with their source, for citations
# --------------------------------------------------------------------------------------
def chunk_plays(plays: list[str], split, chunk_size: int = 400,
                chunk_overlap: int = 80) -> list[dict]:
    """Every play cut by ``split(text, SEPARATORS, chunk_size, chunk_overlap)``.

    Each chunk keeps where it came from: ``{"id", "play", "start", "end", "text"}`` with
    ``text == play_text(play)[start:end]``, so that an answer can cite it.
    """
    chunks = []
    for play in plays:
        text, cursor = play_text(play), 0
        for piece in split(text, SEPARATORS, chunk_size, chunk_overlap):
            start = text.find(piece, cursor)
            assert start >= 0, "a chunk that is not in the text"
            chunks.append({"id": len(chunks), "play": play, "start": start,
                           "end": start + len(piece), "text": piece})
            cursor = start + 1
    return chunks


# --------------------------------------------------------------------------------------
# Exercises: sentence embeddings with MiniLM
# --------------------------------------------------------------------------------------
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence vectors from token vectors: masked mean, then L2 normalisation.

    hidden: (B, T, D) float, the encoder's last hidden states; attention_mask: (B, T),
    1 for real tokens and 0 for padding. Average each row's vectors over its real
    tokens only (divide by their count, at least 1e-9), then scale every sentence vector
    to unit length (``F.normalize``). Returns (B, D) in the dtype of ``hidden``.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)             # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)                               # (B, D)
    count = mask.sum(dim=1).clamp(min=1e-9)                           # (B, 1)
    return F.normalize(summed / count, p=2, dim=-1)


def embed_texts(texts: list[str], tokenizer, model, batch_size: int = 32,
                max_length: int = 256) -> torch.Tensor:
    """Embed texts the way sentence-transformers' all-MiniLM-L6-v2 does.

    tokenizer, model: the Hugging Face tokenizer and ``AutoModel`` of all-MiniLM-L6-v2.
    Tokenize in batches with padding and truncation at ``max_length`` tokens (256: the
    model's setting, not the tokenizer file's 128), run the model without gradients and
    pool its ``last_hidden_state`` with ``mean_pool``. Batching texts of similar length
    together (sort by length, then restore the order) wastes less time on padding.
    Returns (len(texts), 384) float32, one unit vector per text, in the input order.
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            out[idx] = mean_pool(hidden, enc["attention_mask"])
    return out


def load_minilm():
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M parameters) and its tokenizer."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # an optional backend
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(minilm_dir())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


# --------------------------------------------------------------------------------------
# Exercise: exact vector search (faiss.IndexFlatIP on normalised vectors)
# --------------------------------------------------------------------------------------
def dense_search(queries: torch.Tensor, docs: torch.Tensor, k: int):
    """The k most similar documents of each query by cosine similarity, exactly.

    queries: (Q, D), docs: (N, D), float; k <= N. Normalise both to unit length (this
    does nothing to vectors that already are), take all inner products and keep the k
    largest per query, best first. Returns ``(scores, ids)``: float32 (Q, k) cosine
    similarities and int64 (Q, k) document indices (what faiss calls D and I).
    """
    q = F.normalize(queries.float(), dim=-1)
    d = F.normalize(docs.float(), dim=-1)
    scores, ids = (q @ d.T).topk(k, dim=-1)
    return scores, ids


# --------------------------------------------------------------------------------------
# Exercise: BM25 (rank_bm25.BM25Okapi), vectorised
# --------------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes): what BM25 indexes."""
    return re.findall(r"[a-z0-9']+", text.lower())


class BM25:
    """Okapi BM25 over a tokenized corpus, with rank_bm25's conventions.

    corpus: N documents, each a list of tokens. With n(t) the number of documents that
    contain term t, ``idf(t) = ln(N - n(t) + 0.5) - ln(n(t) + 0.5)``; a term with a
    negative idf (in more than half the documents) gets ``epsilon * mean idf`` instead,
    the mean taken over the raw idf of the whole vocabulary (an idf of exactly 0 stays
    0). The score of document d for a query is the sum over the query's tokens (a
    repeated token counts each time; an unknown one adds 0) of
    ``idf(t) * f (k1 + 1) / (f + k1 (1 - b + b |d| / avgdl))`` with f the count of t
    in d, |d| its length and avgdl the mean length. Build everything the scores need
    once, in ``__init__``, so that ``get_scores`` is a few tensor operations, not a loop
    over documents.
    """

    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75,
                 epsilon: float = 0.25):
        """Index the corpus: vocabulary, idf (floored), and each term's postings."""
        self.vocab: dict[str, int] = {}
        doc_ids, term_ids, counts = [], [], []
        for d, doc in enumerate(corpus):
            for term, f in Counter(doc).items():
                doc_ids.append(d)
                term_ids.append(self.vocab.setdefault(term, len(self.vocab)))
                counts.append(f)
        N, V = len(corpus), len(self.vocab)
        doc_ids, term_ids = torch.tensor(doc_ids), torch.tensor(term_ids)
        tf = torch.tensor(counts, dtype=torch.float64)
        doc_len = torch.tensor([len(doc) for doc in corpus], dtype=torch.float64)
        avgdl = doc_len.sum() / N
        n = torch.bincount(term_ids, minlength=V).double()      # documents per term
        idf = torch.log(N - n + 0.5) - torch.log(n + 0.5)
        mean_idf = idf.cumsum(0)[-1] / V        # a running sum, in rank_bm25's order
        idf = torch.where(idf < 0, epsilon * mean_idf, idf)     # rank_bm25's floor
        norm = k1 * (1 - b + b * doc_len[doc_ids] / avgdl)
        weight = idf[term_ids] * (tf * (k1 + 1) / (tf + norm))  # one per (term, doc)
        order = torch.argsort(term_ids, stable=True)            # postings by term
        self.docs, self.weights = doc_ids[order], weight[order]
        self.offsets = torch.cumsum(torch.bincount(term_ids, minlength=V), 0).tolist()
        self.n_docs = N

    def get_scores(self, query: list[str]) -> torch.Tensor:
        """BM25 scores of every document for the query tokens: float64 (N,)."""
        scores = torch.zeros(self.n_docs, dtype=torch.float64)
        for term in query:
            t = self.vocab.get(term)
            if t is None:
                continue
            start, end = (self.offsets[t - 1] if t else 0), self.offsets[t]
            scores.index_add_(0, self.docs[start:end], self.weights[start:end])
        return scores


# --------------------------------------------------------------------------------------
# Exercise: hybrid search by reciprocal-rank fusion
# --------------------------------------------------------------------------------------
def reciprocal_rank_fusion(results: list, k: int = 60):
    """Fuse several ranked lists by reciprocal rank (Cormack et al., 2009).

    results: one ``(scores, ids)`` pair per retriever for the same query, each a 1-D
    tensor sorted best first (what ``dense_search`` or a BM25 top-k returns for one
    query). The scores of different retrievers are not comparable, so only the RANKS are
    used: a document at rank r (1 for the first) in a list receives ``1 / (k + r)`` from
    it, and its fused score is the sum over the lists it appears in.
    Returns ``(fused_scores, ids)``: float64 and int64, every document that appears in
    any list, sorted by fused score, highest first (ties in any order).
    """
    fused: dict[int, float] = {}
    for _, ids in results:
        for rank, doc in enumerate(ids.tolist(), start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    return (torch.tensor([s for _, s in ranked], dtype=torch.float64),
            torch.tensor([d for d, _ in ranked], dtype=torch.long))


# --------------------------------------------------------------------------------------
# Exercise: recall@k and MRR
# --------------------------------------------------------------------------------------
def recall_mrr(retrieved: list[list[int]], relevant: list[list[int]], k: int):
    """Recall@k and mean reciprocal rank (cut at k) over a set of queries.

    retrieved[q]: the ids returned for query q, best first (at least k of them);
    relevant[q]: the ids that answer it (at least one). Recall@k of a query is the
    fraction of ITS RELEVANT ids found among the first k retrieved; its reciprocal rank
    is 1 / r for the first relevant id at rank r (1-based) within the first k, and 0 if
    none is there. Returns ``(recall, mrr)``, both averaged over queries, as floats.
    """
    recall = mrr = 0.0
    for got, gold in zip(retrieved, relevant):
        top, gold = list(got[:k]), set(gold)
        recall += len(gold.intersection(top)) / len(gold)
        rank = next((r for r, doc in enumerate(top, start=1) if doc in gold), None)
        mrr += 1.0 / rank if rank else 0.0
    return recall / len(relevant), mrr / len(relevant)


# --------------------------------------------------------------------------------------
# Exercise: a grounding check
# --------------------------------------------------------------------------------------
def support_score(answer: str, passage: str) -> float:
    """How much of an answer its passage supports: a number in [0, 1].

    Normalise both texts the SQuAD way: lower case, remove every character of
    ``string.punctuation``, split on whitespace and drop the articles a, an and the.
    Return the fraction of the answer's words (each occurrence counts) that are words of
    the passage; an answer with no words is not supported (0.0).
    """
    def words(text):
        text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
        return [w for w in text.split() if w not in ("a", "an", "the")]

    said = words(answer)
    if not said:
        return 0.0
    vocab = set(words(passage))
    return sum(w in vocab for w in said) / len(said)


# --------------------------------------------------------------------------------------
# Provided: the question set
# --------------------------------------------------------------------------------------
SPEAKER = re.compile(r"^([A-Z][A-Z'-]+(?: [A-Za-z'-]+){0,3})\.$")  # "LADY MACBETH."
STOPWORDS = set("""a an the and or but if of to in on at by for with from as is are was
were be been am i me my you your he him his she her it its we us our they them their
this that these those what which who whom not no so do does did have has had will would
shall should can could may might must o oh let than then there here when where why how
all some any such more most own same too very just now yet one says say""".split())

# Modern paraphrases of famous lines, written by hand: (a fragment that finds the line,
# the question). Each shares no content word with its line (make_questions checks it).
PARAPHRASES = [
    ("see before me",
     "Who sees a floating knife in front of him, grip turned to his palm?"),
    ("brief candle", "Who tells a short-lived taper to be extinguished?"),
    ("walking shadow",
     "Who compares existence to a wandering silhouette and a bad actor?"),
    ("damned spot", "Who, sleepwalking, orders a cursed stain to vanish?"),
    ("wicked this way", "Who senses that an evil creature is approaching?"),
    ("innocent flower",
     "Who advises seeming as harmless as a blossom while being a snake?"),
    ("milk of human", "Who worries that her husband is too soaked in compassion?"),
    ("Stars, hide", "Who asks the lights of the sky to conceal their flames?"),
    ("great Neptune",
     "Who wonders whether the whole sea could rinse the gore off his palm?"),
    ("Vaulting", "Who admits that only leaping desire for power drives his plan?"),
    ("lay on, Macduff", "Who dares his rival to attack, holding up his buckler?"),
    ("cannot be undone",
     "Who says while sleepwalking that a deed is impossible to reverse?"),
    ("daggers in men", "Who warns that grins hide knives and relatives are dangerous?"),
    ("Hell is murky", "Who, walking in her sleep, calls the underworld gloomy?"),
    ("three meet", "Who asks when the trio of them will gather once more?"),
    ("unsex", "Who begs the spirits to strip away her womanhood?"),
    ("morrow, and",
     "Who despairs of the coming days, one after another after another?"),
    ("Et tu", "Who, stabbed, asks whether even his friend is among the killers?"),
    ("Friends, Romans", "Who asks his fellow citizens to give him their attention?"),
    ("lean and hungry", "Who distrusts a thin man who looks starved?"),
    ("noblest Roman", "Who praises his dead enemy as the most honourable citizen?"),
    ('Cry "Havoc', "Who predicts that vengeance will unleash the hounds of battle?"),
    ("tide in the", "Who says human matters have a current that can carry us to luck?"),
    ("loved Rome",
     "Who explains to the crowd that he cared for his country above his friend?"),
    ("Greek to me",
     "Who confesses he understood nothing of a speech in a foreign language?"),
    ("evil that men", "Who says that wicked deeds outlast the people who did them?"),
    ("about me that are fat", "Who wants plump companions around him?"),
    ("bleeding piece", "Who apologises to a corpse for being gentle with its killers?"),
    ("masters of their fates", "Who says people can sometimes control their destiny?"),
    ("bright day", "Who says sunny weather draws out the snake?"),
    ("Cowards die",
     "Who says the fearful perish again and again, the courageous only once?"),
    ("now be still", "Who, dying, tells the ghost of the murdered ruler to rest?"),
    ("brave new",
     "Who marvels at a wonderful fresh planet full of beautiful creatures?"),
    ("Full fathom",
     "Who sings that the young man's dad is lying thirty feet under the sea?"),
    ("Hell is empty", "Who reports someone shouting that the underworld is vacant?"),
    ("know how to curse",
     "Who says the only benefit of learning to speak was learning to swear?"),
    ("drown my book", "Who promises to sink his volume of spells deep in the ocean?"),
    ("Our revels",
     "Who announces that the entertainment is over and the performers were spirits?"),
    ("rough magic", "Who renounces his crude sorcery?"),
    ("past is prologue", "Who says that history is merely the introduction?"),
    ("full of noises",
     "Who tells his companions not to fear the sounds of the island?"),
    ("Misery acquaints",
     "Who says that hardship makes a person share a bed with odd company?"),
    ("food of love",
     "Who asks the musicians to keep performing, since melody feeds romance?"),
    ("willow cabin", "Who would build a hut of branches outside the lady's entrance?"),
    ("untangle", "Who hopes that the passing hours will sort out this knot for her?"),
    ("Love sought",
     "Who says affection that arrives unasked beats affection that is chased?"),
    ("wise enough to play the fool",
     "Who says the jester must be clever to act so silly?"),
    ("no blemish", "Who says the only true flaw is a flaw of the spirit?"),
    ("adored once", "Who says that someone worshipped him in the past as well?"),
    ("Journeys end", "Who sings that trips finish when sweethearts come together?"),
    ("Present mirth",
     "Who sings that joy belongs to this moment, while the future is unsure?"),
    ("good hanging",
     "Who jokes that an execution often saves a man from an unhappy wedding?"),
    ("quality of mercy",
     "Who says compassion cannot be forced but falls like gentle rain?"),
    ("glisters", "Who reads that not everything that glitters is precious metal?"),
    ("cite Scripture", "Who warns that Satan can quote the Bible to serve himself?"),
    ("know not why I am so sad", "Who admits he has no idea why he feels so gloomy?"),
    ("no music in himself", "Who distrusts anyone who is not moved by melody?"),
    ("little candle", "Who marvels at how widely the light of a small taper reaches?"),
    ("love is blind",
     "Who says that sweethearts are sightless to their own silly mistakes?"),
    ("Mislike me not",
     "Who asks not to be disliked because of the colour of his skin?"),
    ("wise father", "Who jokes that only a clever dad recognises his own kid?"),
    ("naughty world", "Who says a kind act glows like that in a wicked place?"),
    ("you prick us", "Who asks whether his people shed blood when they are pierced?"),
]


def title_case(name: str) -> str:
    """'LADY MACBETH' -> 'Lady Macbeth' (how answers are written)."""
    return " ".join(w.capitalize() for w in name.split())


def spoken_lines(play: str) -> list[dict]:
    """Every spoken line of a play, with its speaker and where both are.

    A speech starts after a blank line with the speaker's name in capitals and a full
    stop on a line of its own; stage directions (in brackets) and headings are skipped.
    Returns ``{"play", "start", "end", "speaker", "tag", "text"}`` (offsets in
    ``play_text(play)``; ``tag`` is where the speaker's name stands).
    """
    text = play_text(play)
    lines, speaker, tag, after_blank, pos, direction = [], None, 0, True, 0, False
    for raw in text.split("\n"):
        s = raw.strip()
        start = pos + len(raw) - len(raw.lstrip())
        pos += len(raw) + 1
        if direction or s.startswith("["):      # a stage direction may run over lines
            direction = "]" not in s
            song = re.match(r"^\[([A-Z][A-Z]+) sings", s)  # "[ARIEL sings]"
            if song:
                speaker, tag = song.group(1), start
            after_blank = not s
            continue
        if not s:
            after_blank = True
            continue
        m = SPEAKER.match(s)
        if after_blank and m and not s.startswith(("ACT", "SCENE")):
            speaker, tag = m.group(1), start
        elif speaker and "[" not in s and "]" not in s and not re.match(
                r"^(ACT|SCENE|Enter|Exit|Exeunt)\b", s):
            lines.append({"play": play, "start": start, "end": start + len(s),
                          "speaker": speaker, "tag": tag, "text": s})
        after_blank = False
    return lines


def content_words(text: str) -> set[str]:
    return {w for w in tokenize(text) if w not in STOPWORDS}


def make_questions(chunks: list[dict], n_quotes: int = 150,
                   seed: int = 0) -> list[dict]:
    """The question set: "Who says ...?", with the speaker as the answer.

    Quote questions (lexical): a random sample (``random.Random(seed)``) of the spoken
    lines of 7 to 16 words that occur once in the corpus, lie inside exactly one chunk
    together with their speaker's name, do not name their speaker, are not spoken by
    "ALL" or "BOTH", and hold no double quote; the question quotes the line word for
    word. Paraphrase questions: the lines of ``PARAPHRASES``, kept when the fragment
    finds exactly one spoken line of the chunked plays and the question shares no
    content word with that line.
    Each question: ``{"kind", "question", "answer", "play", "line", "gold"}``, ``gold``
    the ids of the chunks that contain the line.
    """
    import random

    plays = sorted({c["play"] for c in chunks}, key=list(PLAYS).index)
    corpus = "\n".join(play_text(p) for p in plays)
    by_play = {p: [c for c in chunks if c["play"] == p] for p in plays}
    lines = [line for p in plays for line in spoken_lines(p)]

    def holders(line):
        return [c for c in by_play[line["play"]]
                if c["start"] <= line["start"] and line["end"] <= c["end"]]

    def item(kind, question, line):
        return {"kind": kind, "question": question,
                "answer": title_case(line["speaker"]), "play": line["play"],
                "line": line["text"], "gold": [c["id"] for c in holders(line)]}

    quotes = []
    for line in lines:
        inside = holders(line)
        if (7 <= len(tokenize(line["text"])) <= 16 and '"' not in line["text"]
                and len(inside) == 1 and inside[0]["start"] <= line["tag"]
                and corpus.count(line["text"]) == 1
                and line["speaker"] not in ("ALL", "BOTH")
                and not set(line["speaker"].lower().split())
                & set(tokenize(line["text"]))):
            quotes.append(line)
    picked = random.Random(seed).sample(quotes, min(n_quotes, len(quotes)))
    picked.sort(key=lambda line: (plays.index(line["play"]), line["start"]))
    questions = [item("quote", f'Who says: "{line["text"]}"?', line) for line in picked]
    for fragment, question in PARAPHRASES:
        found = [line for line in lines if fragment.lower() in line["text"].lower()]
        if len(found) == 1 and holders(found[0]) and not (
                content_words(question) & content_words(found[0]["text"])):
            questions.append(item("paraphrase", question, found[0]))
    return questions


# --------------------------------------------------------------------------------------
# Provided: retrieval for a whole question set
# --------------------------------------------------------------------------------------
def bm25_search(index, queries: list[str], k: int):
    """Top-k of a BM25 index for each query: ``(scores, ids)``, each (Q, k)."""
    scores = torch.stack([index.get_scores(tokenize(q)) for q in queries])
    return scores.topk(k, dim=-1)


def hybrid_search(bm25_hits, dense_hits, fuse, k: int):
    """Reciprocal-rank fusion of two retrievers' top lists, per query: ids (Q, k)."""
    ids = []
    for q in range(bm25_hits[1].shape[0]):
        _, fused = fuse([(bm25_hits[0][q], bm25_hits[1][q]),
                         (dense_hits[0][q], dense_hits[1][q])])
        ids.append(fused[:k])
    return torch.stack(ids)


# --------------------------------------------------------------------------------------
# Provided: prompts with numbered citations, a reader, a grounding check, EM and F1
# --------------------------------------------------------------------------------------
def source_of(chunk: dict) -> str:
    """Where a chunk comes from, for a citation: "Macbeth, characters 1200-1598"."""
    return f"{PLAYS[chunk['play']]}, characters {chunk['start']}-{chunk['end']}"


def build_prompt(question: str, passages: list[dict]) -> str:
    """The prompt a generative model would receive: numbered passages, the question."""
    lines = ["Answer the question using only the passages below. Cite the passage",
             "you used by its number in brackets, e.g. [2]. If they do not contain the",
             "answer, say that you do not know.", ""]
    for i, chunk in enumerate(passages, start=1):
        lines.append(f"[{i}] ({source_of(chunk)})")
        lines.append(chunk["text"].strip())
        lines.append("")
    lines.append(f"Question: {question}")
    lines.append("Answer:")
    return "\n".join(lines)


def passage_lines(text: str) -> list[tuple[str, str]]:
    """(speaker, line) for every spoken line of a passage whose speaker it names."""
    out, speaker, after_blank, direction = [], None, True, False
    for raw in text.split("\n"):
        s = raw.strip()
        if direction or s.startswith("["):
            direction = "]" not in s
            after_blank = not s
            continue
        if not s:
            after_blank = True
            continue
        m = SPEAKER.match(s)
        if after_blank and m and not s.startswith(("ACT", "SCENE")):
            speaker = m.group(1)
        elif speaker and "[" not in s:
            out.append((title_case(speaker), s))
        after_blank = False
    return out


class Reader:
    """An extractive reader built on MiniLM: it answers "Who says ...?" from passages.

    It embeds the question (the quoted words if there are any) and every spoken line of
    the passages whose speaker the passage names, picks the line closest in meaning
    (cosine), and answers with that line's speaker, citing its passage:
    "Lady Macbeth [2]".
    Without passages it can only guess the most frequent speaker of the corpus.
    Line embeddings are cached: passages come back often.
    """

    def __init__(self, embed, prior: str):
        self.embed, self.prior, self.cache = embed, prior, {}

    def vectors(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            for t, v in zip(new, self.embed(new)):
                self.cache[t] = v
        return torch.stack([self.cache[t] for t in texts])

    def prepare(self, questions: list[str], passage_lists: list[list[dict]],
                block: int = 512):
        """Embed every question and line ahead, in large batches (much faster)."""
        texts = [self.query_text(q) for q in questions]
        texts += [line for passages in passage_lists for chunk in passages
                  for _, line in passage_lines(chunk["text"])]
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for i in tqdm(range(0, len(new), block), desc="embedding lines", leave=False):
            self.vectors(new[i:i + block])

    @staticmethod
    def query_text(question: str) -> str:
        quoted = re.findall(r'"([^"]+)"', question)
        return quoted[0] if quoted else question

    def answer(self, question: str, passages: list[dict]) -> str:
        candidates = [(i, who, line) for i, chunk in enumerate(passages, start=1)
                      for who, line in passage_lines(chunk["text"])]
        if not candidates:
            return self.prior
        q = self.vectors([self.query_text(question)])[0]
        scores = self.vectors([line for _, _, line in candidates]) @ q
        i, who, _ = candidates[int(scores.argmax())]
        return f"{who} [{i}]"


def split_citation(answer: str) -> tuple[str, int | None]:
    """"Lady Macbeth [2]" -> ("Lady Macbeth", 2); no citation -> (answer, None)."""
    m = re.match(r"^(.*?)\s*\[(\d+)\]\s*$", answer)
    return (m.group(1), int(m.group(2))) if m else (answer.strip(), None)


def grounded(answer: str, passages: list[dict], support,
             threshold: float = 1.0) -> bool:
    """Is the answer supported by the passage it cites? (``support`` is in [0, 1])"""
    text, cited = split_citation(answer)
    if cited is None or not 1 <= cited <= len(passages):
        return False
    return support(text, passages[cited - 1]["text"]) >= threshold


def squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return [w for w in text.split() if w not in ("a", "an", "the")]


def exact_match_f1(prediction: str, truth: str) -> tuple[float, float]:
    """SQuAD's exact match and token F1 of one answer (the citation removed first)."""
    pred, gold = squad_tokens(split_citation(prediction)[0]), squad_tokens(truth)
    em = float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return em, 0.0
    p, r = common / len(pred), common / len(gold)
    return em, 2 * p * r / (p + r)
