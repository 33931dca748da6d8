"""Benchmark: our byte-level BPE trainer (solutions/ch02_tokenization.py) vs `tokenizers`.

    python benchmarks/bench_bpe.py [--text PATH] [--vocab 1024] [--repeats 3]

Both trainers run in this one process on the same text; each time is the best of
`--repeats` runs. Wall time is what the comparison is about; CPU time (summed over threads)
is shown too because it is less disturbed by other load on the machine. The default text
is tinyshakespeare.txt from the `shared/data` folder next to the repository (not part of
the repository).
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from solutions.ch02_tokenization import pretokenize, train_bpe  # noqa: E402

DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def train_tokenizers(text: str, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The reference: `tokenizers`' BPE trainer with the GPT-2 byte-level pre-tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def best_of(repeats: int, fn, *args):
    """(best wall time, best CPU time of this process (all threads), result of last call)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="UTF-8 text file")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (best taken)")
    args = parser.parse_args()
    if not args.text.is_file():
        sys.exit(f"text file not found: {args.text} (pass --text PATH)")
    text = args.text.read_text(encoding="utf-8")

    t_pre, c_pre, words = best_of(args.repeats, pretokenize, text)
    t_ours, c_ours, (vocab, merges) = best_of(args.repeats, train_bpe, text, args.vocab)
    t_ref, c_ref, (ref_vocab, ref_merges) = best_of(args.repeats, train_tokenizers, text,
                                                    args.vocab)

    print(f"text: {args.text} ({len(text):,} chars, {len(words):,} pre-tokens, "
          f"{len(set(words)):,} distinct); vocab {args.vocab}; best of {args.repeats}")
    print(f"{'':28}{'wall s':>9}{'CPU s':>9}")
    print(f"{'ours: pre-tokenization':28}{t_pre:9.3f}{c_pre:9.3f}")
    print(f"{'ours: train_bpe (total)':28}{t_ours:9.3f}{c_ours:9.3f}")
    print(f"{'tokenizers: BpeTrainer':28}{t_ref:9.3f}{c_ref:9.3f}")
    print(f"{'ratio ours / tokenizers':28}{t_ours / t_ref:9.2f}{c_ours / c_ref:9.2f}")
    print(f"merges identical: {'yes' if merges == ref_merges else 'no'} ({len(merges)} merges)")
    same_vocab = list(vocab.items()) == list(ref_vocab.items())
    print(f"vocab identical:  {'yes' if same_vocab else 'no'} ({len(vocab)} tokens, same ids)")


if __name__ == "__main__":
    main()
