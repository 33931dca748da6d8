"""Chapter 17 - Test-time compute and self-improvement.

References, all independent of the course's solutions:
- scratchpad: the columns re-derived from the digit strings (``str.zfill``, reversed),
  the answer from Python's integer addition;
- parse_answer and verifiable_reward: regular expressions (``re.fullmatch`` on ASCII
  digits) and Python's integer arithmetic;
- calculator: one regular expression anchored at the end of the text, ``operator``;
- majority_vote: ``collections.Counter.most_common`` (equal counts keep the order in
  which the answers were first met, as the documentation promises);
- best_of_n: ``numpy.argmax`` (the first maximum) on the scores of the valid candidates;
- pass_at_k: ``scipy.special.comb(exact=True)`` in exact rational arithmetic
  (``fractions.Fraction``); the project's tests also enumerate the subsets;
- completion_mask: a plain Python loop over each row;
- replay_mix: the number of replayed rows and the uniform law of a draw without
  replacement, R/M per old row, written out (the draw itself is the learner's).
"""
from __future__ import annotations

import collections
import functools
import operator
import re
from fractions import Fraction

import torch

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch17_test_time import compare_calls, compare_replay, each_call, replay_run

CH = "ch17"
SOL = "solutions.ch17_test_time"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=g))


def _calls_case(name, calls, ref, fn_name, **tolerance):
    """One case: the learner's function on every call of ``calls``, against ``ref``."""
    calls = [list(c) for c in calls]
    return Case(name, (calls,), run=each_call,
                expected=lambda calls=calls: [ref(*c) for c in calls],
                compare=functools.partial(compare_calls, calls=calls, name=fn_name, **tolerance))


def _lift(produce):
    """A mistake written for one call, applied to a list of calls (``each_call``)."""
    return produce


# ========================================================================================
# scratchpad
# ========================================================================================
def _ref_scratchpad(a, b, digits=3):
    da, db = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]   # units first
    columns, carry = [], 0
    for x, y in zip(da, db):
        total = int(x) + int(y) + carry
        columns.append(str(total).zfill(2))
        carry = 1 if total >= 10 else 0
    return ",".join(columns) + ";" + str(a + b).zfill(digits + 1) + "\n"


def _scratchpad_cases(hidden: bool):
    yield _calls_case("357 + 486 (the example), 3 digits", [(357, 486)], _ref_scratchpad, "scratchpad")
    yield _calls_case("carries that run through every column: 999 + 1, 999 + 999, 505 + 495",
                      [(999, 1), (999, 999), (505, 495)], _ref_scratchpad, "scratchpad")
    yield _calls_case("small operands are zero-padded: 0 + 0, 5 + 7, 40 + 2",
                      [(0, 0), (5, 7), (40, 2)], _ref_scratchpad, "scratchpad")
    yield _calls_case("other widths: digits = 1, 2 and 5",
                      [(9, 9, 1), (99, 1, 2), (12345, 98765, 5), (7, 3, 2)], _ref_scratchpad, "scratchpad")
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch17.scratchpad", i))
            digits = [2, 3, 4][i]
            calls = [(_randint(g, 0, 10 ** digits), _randint(g, 0, 10 ** digits), digits) for _ in range(6)]
            yield _calls_case(f"hidden case {i + 1}: six random sums of {digits} digits", calls,
                              _ref_scratchpad, "scratchpad")


def _scratch_wrong(kind):
    def fn(a, b, digits=3):
        cols, carry = [], 0
        order = range(digits - 1, -1, -1) if kind == "msb-first" else range(digits)
        for i in order:
            s = (a // 10 ** i) % 10 + (b // 10 ** i) % 10 + (0 if kind == "no-carry" else carry)
            cols.append(str(s % 10) if kind == "one-digit" else f"{s:02d}")
            carry = s // 10
        answer = str(a + b) if kind == "unpadded" else f"{a + b:0{digits + 1}d}"
        return ",".join(cols) + ";" + answer + "\n"
    return fn


register(Exercise(
    id="ch17.scratchpad", chapter=CH, title="A scratchpad for addition", points=1, name="scratchpad",
    signature="scratchpad(a: int, b: int, digits: int = 3) -> str",
    reference="the columns re-derived from the zero-padded digit strings; the sum from Python's int addition",
    solution=f"{SOL}:scratchpad", cases=_scratchpad_cases,
    mistakes=[
        Mistake("msb-first", "your columns start at the leftmost digit: work from the units up, as the carries "
                "travel (column 0 is the units)", _lift(_scratch_wrong("msb-first"))),
        Mistake("no-carry", "your columns ignore the carry coming in: s_i = a_i + b_i + c_i, where c_i is the tens "
                "digit of the previous column", _lift(_scratch_wrong("no-carry"))),
        Mistake("one-digit", "each column is written with one digit: write s_i on two digits, f\"{s:02d}\", so that "
                "its tens digit (the carry) is on the page", _lift(_scratch_wrong("one-digit"))),
        Mistake("unpadded", "the final answer is not zero-padded: write it on digits + 1 digits "
                "(357 + 486 -> \"0843\")", _lift(_scratch_wrong("unpadded"))),
    ]))


# ========================================================================================
# parse_answer
# ========================================================================================
_DIGITS = re.compile(r"[0-9]+")


def _ref_parse(completion):
    line = re.match(r"[^\n]*", completion).group(0)
    tail = line[line.rfind(";") + 1:]          # the whole line when there is no ";"
    return int(tail) if _DIGITS.fullmatch(tail) else None


PARSE_CALLS = {
    "well-formed completions: scratchpad, direct, tool call": [
        ("13,14,08;0843\n",), ("0843\n",), ("[357+486]843;0843\n",), ("07;07\n",), ("0000\n",)],
    "text after the first end of line is ignored": [
        ("13,14,08;0843\n17;0001\n",), ("0843\n;12",), ("\n0843",), ("12;0843\n\n",)],
    "no end of line: the whole text": [("13,14,08;0843",), ("42",), ("13,14,08;",)],
    "several ';': the last one counts": [("13;14;0843\n",), ("1;2;3\n",), (";;7\n",)],
    "malformed answers are None": [
        ("13,14,08;08a3\n",), ("13,14,08\n",), (";\n",), ("\n",), ("",), ("0843 \n",), (" 843\n",),
        ("+843\n",), ("-12\n",), ("8_43\n",), ("843.0\n",)],
}


def _parse_cases(hidden: bool):
    for name, calls in PARSE_CALLS.items():
        yield _calls_case(name, calls, _ref_parse, "parse_answer")
    if hidden:
        alphabet = "0123456789;,\n+-_ "
        for i in range(2):
            g = _gen(hidden_seed("ch17.parse_answer", i))
            calls = []
            for _ in range(12):
                n = _randint(g, 1, 14)
                text = "".join(alphabet[_randint(g, 0, len(alphabet))] for _ in range(n))
                calls.append((text,))
            calls.append(("13,14,08;" + str(_randint(g, 0, 10000)).zfill(4) + "\n",))
            yield _calls_case(f"hidden case {i + 1}: random strings", calls, _ref_parse, "parse_answer")


def _parse_wrong(kind):
    def fn(completion):
        text = completion if kind == "no-cut" else completion.split("\n")[0]
        if kind == "first-semicolon":
            answer = text.split(";")[1] if ";" in text else text
        else:
            answer = text.split(";")[-1]
        if kind in ("no-cut",):
            answer = answer.strip()
        if kind == "int-accepts":
            try:
                return int(answer)
            except ValueError:
                return None
        return int(answer) if answer.isdigit() else None
    return fn


register(Exercise(
    id="ch17.parse_answer", chapter=CH, title="Reading the final answer", points=1, name="parse_answer",
    signature="parse_answer(completion: str) -> int | None",
    reference="re.match up to the first end of line, re.fullmatch('[0-9]+') on what follows the last ';'",
    solution=f"{SOL}:parse_answer", cases=_parse_cases,
    mistakes=[
        Mistake("no-cut", "you read past the end of the line: the completion ends at its first \"\\n\"; cut it "
                "there before looking for the answer", _parse_wrong("no-cut")),
        Mistake("first-semicolon", "you took what follows the FIRST ';': the answer follows the last one",
                _parse_wrong("first-semicolon")),
        Mistake("int-accepts", "int() accepts more than digits (\" 843\", \"+843\", \"8_43\", \"-12\"): check that the "
                "answer is made of the characters 0-9 only before converting it", _parse_wrong("int-accepts")),
    ]))


# ========================================================================================
# verifiable_reward (built on parse_answer)
# ========================================================================================
def _ref_reward(prompt, completion):
    m = re.fullmatch(r"([0-9]+)([+-])([0-9]+)=", prompt)
    value = (operator.add if m.group(2) == "+" else operator.sub)(int(m.group(1)), int(m.group(3)))
    return 1.0 if _ref_parse(completion) == value else 0.0


REWARD_CALLS = {
    "addition: right, wrong, right with a scratchpad": [
        ("357+486=", "0843\n"), ("357+486=", "0842\n"), ("357+486=", "13,14,08;0843\n"),
        ("357+486=", "13,14,08;0844\n"), ("000+000=", "0000\n")],
    "subtraction": [("503-127=", "16,17,03;0376\n"), ("503-127=", "0376\n"), ("503-127=", "0630\n"),
                    ("999-999=", "0000\n"), ("100-001=", "0099\n")],
    "unreadable answers earn 0": [("357+486=", "0843 \n"), ("357+486=", "13,14,08\n"), ("357+486=", ""),
                                  ("012+030=", "+42\n")],
    "only the first line counts": [("357+486=", "0843\n0001\n"), ("357+486=", "0001\n0843\n")],
    "a partly right answer earns nothing": [("357+486=", "0853\n"), ("503-127=", "0366\n")],
}


def _reward_cases(hidden: bool):
    for name, calls in REWARD_CALLS.items():
        yield _calls_case(name, calls, _ref_reward, "verifiable_reward")
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.verifiable_reward", i))
            calls = []
            for j in range(10):
                a, b = _randint(g, 0, 1000), _randint(g, 0, 1000)
                op = "+-"[j % 2]
                if op == "-" and a < b:
                    a, b = b, a
                value = a + b if op == "+" else a - b
                answer = value + [0, 0, 1, -1, 10][_randint(g, 0, 5)]
                calls.append((f"{a:03d}{op}{b:03d}=", f"{max(answer, 0):04d}\n"))
            yield _calls_case(f"hidden case {i + 1}: ten random problems", calls, _ref_reward, "verifiable_reward")


def _reward_with(parse, kind="ok"):
    def fn(prompt, completion):
        op = "-" if "-" in prompt and kind != "always-add" else "+"
        left, right = prompt.rstrip("=").split(op) if op in prompt else prompt.rstrip("=").split("-")
        value = int(left) + int(right) if op == "+" else int(left) - int(right)
        if kind == "string-compare":
            line = completion.split("\n")[0]
            return 1.0 if line.split(";")[-1] == str(value) else 0.0
        if kind == "partial":
            line = completion.split("\n")[0].split(";")[-1]
            want = f"{value:04d}"
            if len(line) != len(want):
                return 0.0
            return sum(x == y for x, y in zip(line, want)) / len(want)
        return 1.0 if parse(completion) == value else 0.0
    return fn


register(Exercise(
    id="ch17.verifiable_reward", chapter=CH, title="A verifiable reward", points=1, name="verifiable_reward",
    signature="verifiable_reward(prompt: str, completion: str) -> float",
    reference="re.fullmatch on the prompt, operator.add / operator.sub, the answer read by regular expressions",
    solution=f"{SOL}:verifiable_reward", cases=_reward_cases,
    mistakes=[
        Mistake("always-add", "you add the operands whatever the operator: \"503-127=\" asks for a difference",
                _reward_with(_ref_parse, "always-add")),
        Mistake("string-compare", "you compared the answer as text with str(value): \"0843\" is the right answer to "
                "357+486 but is not the string \"843\"; compare numbers (use parse_answer)",
                _reward_with(_ref_parse, "string-compare")),
        Mistake("partial", "you gave partial credit for the digits that are right: a verifiable reward is 1.0 for a "
                "right answer and 0.0 for anything else", _reward_with(_ref_parse, "partial")),
        *inherit("ch17.parse_answer", lambda part: _reward_with(part)),
    ]))


# ========================================================================================
# calculator
# ========================================================================================
_CALL_AT_END = re.compile(r"\[([0-9]+)([-+*])([0-9]+)\]\Z")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _ref_calculator(text):
    m = _CALL_AT_END.search(text)
    if m is None:
        return None
    return str(_OPS[m.group(2)](int(m.group(1)), int(m.group(3))))


CALC_CALLS = {
    "a request at the end is answered": [
        ("357+486=[357+486]",), ("[12-30]",), ("[12*12]",), ("5*5=[005*005]",), ("[0+0]",)],
    "leading zeros are digits, not octal": [("[007+010]",), ("[099-001]",), ("[000*123]",)],
    "the LAST request is the one to answer": [("[1+2]3;[40+2]",), ("[9*9]81[1+1]",)],
    "no request at the end: None": [
        ("[1+2]3",), ("357+486=",), ("[357+486",), ("357+486]",), ("",), ("[1+2][",), ("[40+2]\n",)],
    "anything else between the brackets: None": [
        ("[2**10]",), ("[1+2+3]",), ("[+5]",), ("[5+]",), ("[]",), ("[1 + 2]",), ("[-3+4]",), ("[3/4]",),
        ("[(1)+2]",), ("[1e3+1]",), ("[0x10+1]",)],
}


def _calc_cases(hidden: bool):
    for name, calls in CALC_CALLS.items():
        yield _calls_case(name, calls, _ref_calculator, "calculator")
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.calculator", i))
            calls = []
            for j in range(8):
                x, y = _randint(g, 0, 10 ** 4), _randint(g, 0, 10 ** 4)
                op = "+-*"[j % 3]
                width = _randint(g, 1, 6)
                call = f"[{str(x).zfill(width)}{op}{str(y).zfill(width)}]"
                calls.append((("357+486=" if j % 2 else "") + call,))
            calls.append((f"[{_randint(g, 1, 99)}+{_randint(g, 1, 99)}]x",))
            yield _calls_case(f"hidden case {i + 1}: random requests", calls, _ref_calculator, "calculator")


def _calc_wrong(kind):
    def fn(text):
        if kind != "not-at-end" and not text.endswith("]"):
            return None
        start = text.find("[") if kind == "first-bracket" else text.rfind("[")
        end = text.rfind("]")
        if start < 0 or end < start:
            return None
        body = text[start + 1:end]
        if kind == "eval":
            if not body or any(c not in "0123456789+-*/(). " for c in body):
                return None
            try:
                return str(eval(body))
            except Exception:
                return None
        m = re.fullmatch(r"([0-9]+)([-+*])([0-9]+)", body)
        if m is None:
            return None
        return str(_OPS[m.group(2)](int(m.group(1)), int(m.group(3))))
    return fn


register(Exercise(
    id="ch17.calculator", chapter=CH, title="A calculator tool call", points=2, name="calculator",
    signature="calculator(text: str) -> str | None",
    reference="a regular expression anchored at the end of the text, [0-9]+ [-+*] [0-9]+, and the operator module",
    solution=f"{SOL}:calculator", cases=_calc_cases, difficulty="**",
    mistakes=[
        Mistake("eval", "you evaluated the request with eval: it refuses leading zeros (\"007+010\" is a "
                "SyntaxError) and computes things that are not requests (\"2**10\"); parse number, operator, number "
                "yourself", _calc_wrong("eval")),
        Mistake("first-bracket", "you read from the FIRST '[' of the text: when earlier requests were already "
                "answered, the request to answer is the one opened by the last '['", _calc_wrong("first-bracket")),
        Mistake("not-at-end", "you answered a request that is not at the end of the text: the runtime calls you "
                "after every token, so a request already followed by its result must not be answered again",
                _calc_wrong("not-at-end")),
    ]))


# ========================================================================================
# majority_vote
# ========================================================================================
def _ref_vote(answers):
    counts = collections.Counter(x for x in answers if x is not None)
    return counts.most_common(1)[0][0] if counts else None


VOTE_CALLS = {
    "a clear majority": [([843, 843, 842, 843],), ([1, 2, 3, 3],), ([7],)],
    "None is not an answer": [([None, None, None, 5],), ([None, 4, None, 4, 9],), ([None, None],), ([],)],
    "ties go to the answer seen first": [([5, 7],), ([7, 5],), ([3, 9, 9, 3],), ([None, 2, 8, 8, 2],),
                                         ([10, 20, 30],)],
    "zero is an answer": [([0, 0, 5],), ([0, None, None],), ([0, 7, 7, 0],)],
}


def _vote_cases(hidden: bool):
    for name, calls in VOTE_CALLS.items():
        yield _calls_case(name, calls, _ref_vote, "majority_vote")
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.majority_vote", i))
            calls = []
            for _ in range(8):
                n = _randint(g, 1, 17)
                pool = [_randint(g, 0, 2000) for _ in range(3)] + [None]
                calls.append(([pool[_randint(g, 0, 4)] for _ in range(n)],))
            pool = [_randint(g, 0, 2000) for _ in range(2)]
            calls.append(([pool[1], pool[0], pool[0], pool[1]] if pool[0] != pool[1] else [pool[0]],))  # a tie
            yield _calls_case(f"hidden case {i + 1}: random votes", calls, _ref_vote, "majority_vote")


def _vote_wrong(kind):
    def fn(answers):
        counts = {}
        for x in answers:
            if kind == "none-votes" or (x if kind == "zero-skipped" else x is not None):
                counts[x] = counts.get(x, 0) + 1
        if not counts:
            return None
        if kind == "tie-largest":
            return max(counts, key=lambda x: (counts[x], x if x is not None else -1))
        if kind == "tie-last":
            best = None
            for x in answers:
                if x in counts and (best is None or counts[x] >= counts[best]):
                    best = x
            return best
        return max(counts, key=counts.get)
    return fn


register(Exercise(
    id="ch17.majority_vote", chapter=CH, title="Self-consistency: the majority vote", points=1,
    name="majority_vote", signature="majority_vote(answers: list[int | None]) -> int | None",
    reference="collections.Counter(...).most_common(1) over the answers that are not None",
    solution=f"{SOL}:majority_vote", cases=_vote_cases,
    mistakes=[
        Mistake("none-votes", "you counted None as an answer: an unreadable sample has no answer and must not win "
                "the vote", _vote_wrong("none-votes")),
        Mistake("tie-largest", "on a tie you chose the largest answer: ties go to the answer seen first",
                _vote_wrong("tie-largest")),
        Mistake("tie-last", "on a tie you chose the answer seen last: ties go to the answer seen first",
                _vote_wrong("tie-last")),
        Mistake("zero-skipped", "you skipped the answer 0 (`if x:` is False for 0): test `x is not None`",
                _vote_wrong("zero-skipped")),
    ]))


# ========================================================================================
# best_of_n
# ========================================================================================
def _ref_best(scores, valid):
    import numpy as np

    s, v = scores.double().numpy(), valid.numpy()
    out = []
    for row, ok in zip(s, v):
        if not ok.any():
            out.append(-1)
            continue
        idx = np.flatnonzero(ok)
        out.append(int(idx[np.argmax(row[idx])]))     # numpy's argmax: the first maximum
    return torch.tensor(out, dtype=torch.long)


def _best_inputs(g, B, N, kind):
    if kind == "logprob":
        scores = -torch.rand(B, N, generator=g) * 10          # log-probabilities: all negative
    else:
        scores = (torch.rand(B, N, generator=g) < 0.4).float()  # a 0/1 verifier: ties everywhere
    valid = torch.rand(B, N, generator=g) < 0.7
    valid[0] = False                                          # a row with nothing readable
    if B > 1:
        valid[1] = True
        scores[1, -1] = scores[1, 0] = scores[1].max() + 1    # a tie at the top: first and last
    if B > 2:
        k = _randint(g, 0, N)                                 # the best score is unreadable
        valid[2] = True
        valid[2, k] = False
        scores[2, k] = scores[2].max() + 5
    return scores, valid


def _best_cases(hidden: bool):
    specs = [("log-probability scores, 6 problems x 8 candidates", 0, 6, 8, "logprob"),
             ("a 0/1 verifier: ties broken by the lowest index", 1, 5, 4, "verifier"),
             ("N = 1", 2, 4, 1, "logprob"),
             ("32 candidates", 3, 8, 32, "verifier")]
    if hidden:
        specs += [(f"hidden case {i + 1}", hidden_seed("ch17.best_of_n", i), 5 + i, 6 + 3 * i,
                   ["logprob", "verifier"][i % 2]) for i in range(2)]
    for name, seed, B, N, kind in specs:
        scores, valid = _best_inputs(_gen(seed), B, N, kind)
        yield Case(name, (scores, valid), expected=lambda s=scores, v=valid: _ref_best(s, v),
                   compare=close_tensors(atol=0, rtol=0))


def _best_wrong(kind):
    def fn(scores, valid):
        if kind == "multiply-mask":
            masked = scores * valid
        elif kind == "ignore-valid":
            masked = scores.clone()
        else:
            masked = scores.masked_fill(~valid, float("-inf"))
        if kind == "tie-last":
            best = masked.shape[1] - 1 - masked.flip(1).argmax(1)
        else:
            best = masked.argmax(1)
        if kind == "none-zero":
            return best
        return torch.where(valid.any(1), best, torch.full_like(best, -1))
    return fn


register(Exercise(
    id="ch17.best_of_n", chapter=CH, title="Best-of-N selection", points=1, name="best_of_n",
    signature="best_of_n(scores: Tensor[B, N], valid: BoolTensor[B, N]) -> LongTensor[B]",
    reference="numpy.argmax (first maximum) over each row's valid candidates; -1 for a row without one",
    solution=f"{SOL}:best_of_n", cases=_best_cases,
    mistakes=[
        Mistake("ignore-valid", "you chose a candidate whose answer cannot be read: only valid candidates may win",
                _best_wrong("ignore-valid")),
        Mistake("multiply-mask", "you masked by multiplying the scores by `valid`: an invalid candidate then scores "
                "0, which beats every valid log-probability (they are negative); fill with -inf instead",
                _best_wrong("multiply-mask")),
        Mistake("tie-last", "on a tie you chose the last candidate: ties go to the lowest index",
                _best_wrong("tie-last")),
        Mistake("none-zero", "a problem with no valid candidate must get -1, not index 0", _best_wrong("none-zero")),
    ]))


# ========================================================================================
# pass_at_k
# ========================================================================================
def _ref_pass_at_k(n, c, k):
    from scipy.special import comb

    return float(1 - Fraction(comb(n - c, k, exact=True), comb(n, k, exact=True)))


PASS_CALLS = {
    "n = 5, c = 2, every k": [(5, 2, 1), (5, 2, 2), (5, 2, 3), (5, 2, 4), (5, 2, 5)],
    "no correct sample, all correct, n - c < k": [(10, 0, 3), (10, 10, 1), (10, 8, 3), (4, 1, 4)],
    "k = 1 is the fraction correct": [(20, 7, 1), (1, 1, 1), (1, 0, 1)],
    "n = 200, the HumanEval setting": [(200, 13, 1), (200, 13, 10), (200, 13, 100), (200, 1, 100)],
    "large n: C(n, k) overflows a float": [(2000, 10, 100), (5000, 2500, 1000), (4000, 3, 1500)],
}


def _pass_cases(hidden: bool):
    for name, calls in PASS_CALLS.items():
        yield _calls_case(name, calls, _ref_pass_at_k, "pass_at_k", rtol=1e-7, atol=1e-10)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.pass_at_k", i))
            calls = []
            for j in range(8):
                n = _randint(g, 1, [40, 3000][j % 2])
                c, k = _randint(g, 0, n + 1), _randint(g, 1, n + 1)
                calls.append((n, c, k))
            yield _calls_case(f"hidden case {i + 1}: random n, c, k", calls, _ref_pass_at_k, "pass_at_k",
                              rtol=1e-7, atol=1e-10)


def _pass_wrong(kind):
    def fn(n, c, k):
        if kind == "with-replacement":
            return 1 - (1 - c / n) ** k
        if kind == "float-comb":
            import numpy as np
            from scipy.special import comb

            with np.errstate(all="ignore"):
                return float(1 - comb(n - c, k) / comb(n, k))
        if n - c < k:
            return 1.0
        ratio = 1.0
        for i in range(n - c, n):        # off by one
            ratio *= 1 - k / i if i else 1.0
        return 1 - ratio
    return fn


register(Exercise(
    id="ch17.pass_at_k", chapter=CH, title="The unbiased pass@k estimator", points=1, name="pass_at_k",
    signature="pass_at_k(n: int, c: int, k: int) -> float",
    reference="1 - C(n-c, k) / C(n, k) with scipy.special.comb(exact=True) in exact fractions",
    solution=f"{SOL}:pass_at_k", cases=_pass_cases, difficulty="**",
    mistakes=[
        Mistake("with-replacement", "you computed 1 - (1 - c/n)^k, drawing WITH replacement: that estimate is biased; "
                "pass@k draws k distinct samples, 1 - C(n-c, k) / C(n, k)", _pass_wrong("with-replacement")),
        Mistake("float-comb", "C(n, k) in floating point overflows for large n (inf / inf = nan): use the product "
                "form prod_{i=n-c+1}^{n} (1 - k/i)", _pass_wrong("float-comb")),
        Mistake("off-by-one", "your product runs over i = n-c .. n-1: it runs over i = n-c+1 .. n",
                _pass_wrong("off-by-one")),
    ]))


# ========================================================================================
# completion_mask
# ========================================================================================
def _ref_mask(ids, prompt_len, eos_id):
    B, T = ids.shape
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(prompt_len, T):
            out[b, t] = 1.0
            if int(ids[b, t]) == eos_id:
                break
    return out


def _mask_inputs(g, B, T, P, eos, vocab=18):
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ids[ids == eos] = (eos + 1) % vocab
    for b in range(B):
        kind = b % 4
        if kind == 0:
            ids[b, _randint(g, P, T)] = eos                   # ends somewhere
        elif kind == 1:
            ids[b, P] = eos                                   # ends at once
        elif kind == 2:
            pass                                              # never ends
        else:
            ids[b, _randint(g, 0, P)] = eos                   # an end token inside the prompt
            ids[b, _randint(g, P, T)] = eos
    ids[0, -1] = eos                                          # a second end token after the first
    return ids


def _mask_cases(hidden: bool):
    specs = [("8 rows, prompt of 8, 14 new tokens", 0, 8, 22, 8, 17),
             ("an end token inside the prompt does not count", 1, 4, 12, 5, 3),
             ("prompt of 1 token", 2, 6, 9, 1, 0),
             ("one row", 3, 1, 10, 4, 17)]
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.completion_mask", i, "shape"))
            specs.append((f"hidden case {i + 1}", hidden_seed("ch17.completion_mask", i), _randint(g, 4, 12),
                          _randint(g, 12, 30), _randint(g, 2, 10), _randint(g, 0, 18)))
    for name, seed, B, T, P, eos in specs:
        ids = _mask_inputs(_gen(seed), B, T, P, eos)
        yield Case(name, (ids, P, eos), expected=lambda i=ids, p=P, e=eos: _ref_mask(i, p, e),
                   compare=close_tensors(atol=0, rtol=0))


def _mask_wrong(kind):
    def fn(ids, prompt_len, eos_id):
        B, T = ids.shape
        out = torch.zeros(B, T)
        for b in range(B):
            start = 0 if kind == "eos-in-prompt" else prompt_len
            for t in range(start, T):
                if int(ids[b, t]) == eos_id and kind != "ignore-eos":
                    if kind != "exclude-eos" and t >= prompt_len:
                        out[b, t] = 1.0
                    break
                if t >= prompt_len:
                    out[b, t] = 1.0
        return out
    return fn


register(Exercise(
    id="ch17.completion_mask", chapter=CH, title="The completion mask", points=1, name="completion_mask",
    signature="completion_mask(ids: LongTensor[B, T], prompt_len: int, eos_id: int) -> Tensor[B, T]",
    reference="a plain Python loop over each row, from the prompt's end to the first end token",
    solution=f"{SOL}:completion_mask", cases=_mask_cases,
    mistakes=[
        Mistake("exclude-eos", "your mask stops before the end token: the end token was sampled too, and GRPO must "
                "learn when to stop, so it is part of the completion", _mask_wrong("exclude-eos")),
        Mistake("ignore-eos", "your mask runs to the end of the row: the tokens after the first end token were "
                "sampled after the answer was over and must not be trained", _mask_wrong("ignore-eos")),
        Mistake("eos-in-prompt", "you looked for the end token from position 0: an end token inside the prompt "
                "does not end the completion; search from prompt_len", _mask_wrong("eos-in-prompt")),
    ]))


# ========================================================================================
# replay_mix
# ========================================================================================
def _replay_inputs(g, N, M, T=6):
    new = torch.randint(0, 18, (N, T), generator=g)
    old = torch.randint(0, 18, (M, T), generator=g)
    new[:, 0] = torch.arange(N)                       # every row distinct
    old[:, 0] = torch.arange(M) + 100
    return new, old


def _ref_replay_summary(N, M, T, f):
    R = round(N * f / (1 - f))
    return {"shape": [N + R, T], "n_new": N, "new_once": True, "from_old": True, "repeats": False,
            "reproducible": True, "freq": torch.full((M,), R / M, dtype=torch.float64)}


def _replay_cases(hidden: bool):
    specs = [("N=30 new rows, M=40 old, f=0.25: 10 replayed", 0, 30, 40, 0.25),
             ("f=0.5: as many old rows as new", 1, 12, 30, 0.5),
             ("f=0: nothing replayed", 2, 10, 20, 0.0),
             ("f=0.2 of a batch of 20: 5 replayed (not 4)", 3, 20, 25, 0.2)]
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch17.replay_mix", i, "shape"))
            N, f = _randint(g, 8, 24), [0.3, 0.4][i]
            R = round(N * f / (1 - f))
            specs.append((f"hidden case {i + 1}", hidden_seed("ch17.replay_mix", i), N, R + _randint(g, 5, 30), f))
    for name, seed, N, M, f in specs:
        new, old = _replay_inputs(_gen(seed), N, M)
        yield Case(name, (new, old, f), run=replay_run,
                   expected=lambda N=N, M=M, f=f: _ref_replay_summary(N, M, 6, f), compare=compare_replay)


def _replay_wrong(kind):
    def fn(new, old, replay_fraction, generator):
        N, M = len(new), len(old)
        R = round(N * replay_fraction) if kind == "fraction-of-new" else round(N * replay_fraction / (1 - replay_fraction))
        if kind == "first-rows":
            chosen = torch.arange(R)
        elif kind == "with-replacement":
            chosen = torch.randint(M, (R,), generator=generator)
        elif kind == "no-generator":
            chosen = torch.randperm(M)[:R]
        else:
            chosen = torch.randperm(M, generator=generator)[:R]
        if kind == "replace-new":
            keep = torch.randperm(N, generator=generator)[:N - R]
            return torch.cat([new[keep], old[chosen]])
        return torch.cat([new, old[chosen]])
    return fn


register(Exercise(
    id="ch17.replay_mix", chapter=CH, title="Replay: mixing old rows into new training data", points=1,
    name="replay_mix",
    signature="replay_mix(new: LongTensor[N, T], old: LongTensor[M, T], replay_fraction: float, "
              "generator: torch.Generator) -> LongTensor[N + R, T]",
    reference="R = round(N f / (1 - f)) and the law of a uniform draw without replacement (R/M per old row), "
              "over 200 seeded calls",
    solution=f"{SOL}:replay_mix", cases=_replay_cases,
    mistakes=[
        Mistake("fraction-of-new", "you replayed f * N rows: f is the share of replayed rows in the RESULT, so "
                "R = N f / (1 - f) (with f = 0.5, as many old rows as new ones)", _replay_wrong("fraction-of-new")),
        Mistake("first-rows", "you always replay the first R old rows: draw them at random, or the rest of the "
                "buffer is never seen again", _replay_wrong("first-rows")),
        Mistake("with-replacement", "you drew the old rows with replacement (torch.randint): the same row can come "
                "twice; use torch.randperm", _replay_wrong("with-replacement")),
        Mistake("no-generator", "you did not use the generator you were given: pass generator=generator so that a "
                "seeded run is reproducible", _replay_wrong("no-generator")),
        Mistake("replace-new", "you replaced some new rows by old ones: keep every new row and add the replayed "
                "ones", _replay_wrong("replace-new")),
    ]))
