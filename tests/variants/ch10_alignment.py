"""Correct answers to chapter 10, in other styles than the reference."""
import math

import torch
import torch.nn.functional as F

from . import right


# -- sft_tokenize ---------------------------------------------------------------------------
@right("ch10.sft_tokenize", style="render the whole text, then mark the assistant spans by character offsets")
def sft_by_offsets(messages, tokenizer):
    text, spans = "", []
    for m in messages:
        text += f"<|{m['role']}|>\n"
        start = len(text)
        text += m["content"] + "<|end|>"
        if m["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"])
    labels = torch.full_like(ids, -100)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if any(s <= a and b <= e for s, e in spans):
            labels[t] = ids[t]
    return ids, labels


@right("ch10.sft_tokenize", style="one token list per piece, boolean mask, torch.where")
def sft_where(messages, tokenizer):
    pieces = []
    for m in messages:
        learn = m["role"] == "assistant"
        pieces += [(f"<|{m['role']}|>\n", False), (m["content"], learn), ("<|end|>", learn), ("\n", False)]
    ids, keep = [], []
    for text, learn in pieces:
        toks = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) if text else []
        ids += toks
        keep += [learn] * len(toks)
    ids = torch.tensor(ids, dtype=torch.long)
    return ids, torch.where(torch.tensor(keep, dtype=torch.bool), ids, torch.tensor(-100))


# -- last_token_reward ----------------------------------------------------------------------
@right("ch10.last_token_reward", style="Python loop from the right end of each row")
def reward_loop(hidden, input_ids, score_weight, pad_token_id):
    out = []
    for b in range(input_ids.shape[0]):
        t = input_ids.shape[1] - 1
        while t > 0 and int(input_ids[b, t]) == pad_token_id:
            t -= 1
        out.append(torch.dot(hidden[b, t], score_weight[0]))
    return torch.stack(out)


@right("ch10.last_token_reward", style="score every position, then argmax of position x mask (as transformers)")
def reward_argmax(hidden, input_ids, score_weight, pad_token_id):
    scores = torch.einsum("btd,d->bt", hidden, score_weight[0])
    pos = torch.arange(input_ids.shape[1]) * (input_ids != pad_token_id)
    return scores.gather(1, pos.argmax(1, keepdim=True)).squeeze(1)


# -- bradley_terry_loss ---------------------------------------------------------------------
@right("ch10.bradley_terry_loss", style="softplus(-(r_c - r_r))")
def bt_softplus(chosen_rewards, rejected_rewards):
    return F.softplus(rejected_rewards - chosen_rewards).mean()


@right("ch10.bradley_terry_loss", style="two-way cross-entropy over [r_c, r_r] with target 0, float64")
def bt_cross_entropy(chosen_rewards, rejected_rewards):
    logits = torch.stack([chosen_rewards, rejected_rewards], dim=1).double()
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


# -- sequence_logprobs ----------------------------------------------------------------------
@right("ch10.sequence_logprobs", style="cross_entropy with ignore_index on shifted labels")
def slp_cross_entropy(logits, input_ids, completion_mask):
    labels = input_ids.masked_fill(completion_mask == 0, -100)[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return -nll.view(labels.shape).sum(1)


@right("ch10.sequence_logprobs", style="Python loops, logsumexp by hand in float64")
def slp_loops(logits, input_ids, completion_mask):
    B, T, _ = logits.shape
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for t in range(1, T):
            if completion_mask[b, t]:
                row = logits[b, t - 1].double()
                out[b] += row[input_ids[b, t]] - torch.logsumexp(row, 0)
    return out


# -- dpo_loss -------------------------------------------------------------------------------
@right("ch10.dpo_loss", style="pi and ref log-ratios first (as in the DPO paper's code)")
def dpo_logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    pi_logratios = policy_chosen - policy_rejected
    ref_logratios = ref_chosen - ref_rejected
    return -F.logsigmoid(beta * (pi_logratios - ref_logratios)).mean()


@right("ch10.dpo_loss", style="softplus in float64")
def dpo_softplus(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = beta * ((policy_chosen.double() - ref_chosen.double()) - (policy_rejected.double() - ref_rejected.double()))
    return F.softplus(-margin).mean()


# -- dpo_batch_loss -------------------------------------------------------------------------
def _seq_logps(model, ids, mask):
    logp = torch.log_softmax(model(ids)[:, :-1], dim=-1)
    return (logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(1)


@right("ch10.dpo_batch_loss", style="reference log-probs detached instead of no_grad")
def dpo_batch_detach(policy, reference, input_ids, completion_mask, beta=0.1):
    n = input_ids.shape[0] // 2
    pi = _seq_logps(policy, input_ids, completion_mask)
    ref = _seq_logps(reference, input_ids, completion_mask).detach()
    return -F.logsigmoid(beta * ((pi[:n] - ref[:n]) - (pi[n:] - ref[n:]))).mean()


@right("ch10.dpo_batch_loss", style="separate forwards for the chosen and rejected halves, inference_mode reference")
def dpo_batch_halves(policy, reference, input_ids, completion_mask, beta=0.1):
    (c_ids, r_ids), (c_m, r_m) = input_ids.chunk(2), completion_mask.chunk(2)
    with torch.inference_mode():
        ref_c, ref_r = _seq_logps(reference, c_ids, c_m), _seq_logps(reference, r_ids, r_m)
    pi_c, pi_r = _seq_logps(policy, c_ids, c_m), _seq_logps(policy, r_ids, r_m)
    margin = (pi_c - ref_c.clone()) - (pi_r - ref_r.clone())
    return F.softplus(-beta * margin).mean()


# -- reinforce_loss -------------------------------------------------------------------------
@right("ch10.reinforce_loss", style="torch.dot with the centred rewards")
def reinforce_dot(seq_logprobs, rewards):
    adv = rewards - rewards.mean()
    return -torch.dot(adv, seq_logprobs) / len(rewards)


@right("ch10.reinforce_loss", style="Python loop over the samples")
def reinforce_loop(seq_logprobs, rewards):
    baseline = sum(float(r) for r in rewards) / len(rewards)
    total = 0
    for lp, r in zip(seq_logprobs, rewards):
        total = total - (float(r) - baseline) * lp
    return total / len(rewards)


# -- ppo_clip_loss --------------------------------------------------------------------------
@right("ch10.ppo_clip_loss", style="max of the two losses (the negated min)")
def ppo_max_of_losses(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    ratio = (logprobs - old_logprobs).exp()
    A = advantages[:, None]
    loss = torch.maximum(-ratio * A, -ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    return loss[mask.bool()].mean()


@right("ch10.ppo_clip_loss", style="explicit loops, float64")
def ppo_loops(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    total, count = 0.0, 0
    B, T = logprobs.shape
    for b in range(B):
        a = float(advantages[b])
        for t in range(T):
            if mask[b, t]:
                r = math.exp(float(logprobs[b, t]) - float(old_logprobs[b, t]))
                total += -min(r * a, min(max(r, 1 - epsilon), 1 + epsilon) * a)
                count += 1
    return torch.tensor(total / count, dtype=torch.float64)


# -- group_advantages -----------------------------------------------------------------------
@right("ch10.group_advantages", style="repeat_interleave of group statistics (as trl)")
def adv_repeat(rewards, group_size):
    g = rewards.view(-1, group_size)
    mean = g.mean(1).repeat_interleave(group_size)
    std = g.std(1).repeat_interleave(group_size)
    return (rewards - mean) / (std + 1e-4)


@right("ch10.group_advantages", style="Python loops with the n - 1 variance by hand")
def adv_loops(rewards, group_size):
    r = rewards.tolist()
    out = []
    for i in range(0, len(r), group_size):
        grp = r[i:i + group_size]
        m = sum(grp) / len(grp)
        sd = (sum((x - m) ** 2 for x in grp) / (len(grp) - 1)) ** 0.5
        out += [(x - m) / (sd + 1e-4) for x in grp]
    return torch.tensor(out)


# -- grpo_loss ------------------------------------------------------------------------------
def _adv(rewards, G):
    g = rewards.view(-1, G)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)


@right("ch10.grpo_loss", style="dictionary of normalisations, log-ratio kept as one tensor")
def grpo_table(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
               loss_type="grpo", kl_ratio=True):
    A = _adv(rewards, group_size)[:, None]
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    pg = torch.maximum(-ratio * A, -ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    delta = ref_logprobs - logprobs
    kl = (delta.exp() - delta - 1) * (ratio if kl_ratio else 1.0)
    per = (pg + beta * kl) * mask
    norm = {"grpo": lambda: (per.sum(1) / mask.sum(1)).mean(),
            "bnpo": lambda: per.sum() / mask.sum(),
            "dr_grpo": lambda: per.sum() / mask.numel()}
    return norm[loss_type]()


@right("ch10.grpo_loss", style="float64, per-sequence loop, KL as expm1")
def grpo_loop(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
              loss_type="grpo", kl_ratio=True):
    lp, old, ref, m = logprobs.double(), old_logprobs.double(), ref_logprobs.double(), mask.double()
    A = _adv(rewards.double(), group_size)
    seq_sums, seq_counts = [], []
    for b in range(lp.shape[0]):
        ratio = torch.exp(lp[b] - old[b])
        pg = -torch.min(ratio * A[b], ratio.clamp(1 - epsilon, 1 + epsilon) * A[b])
        d = ref[b] - lp[b]
        kl = torch.expm1(d) - d
        if kl_ratio:
            kl = kl * ratio
        seq_sums.append(((pg + beta * kl) * m[b]).sum())
        seq_counts.append(m[b].sum())
    sums, counts = torch.stack(seq_sums), torch.stack(seq_counts)
    if loss_type == "grpo":
        return (sums / counts).mean()
    if loss_type == "bnpo":
        return sums.sum() / counts.sum()
    return sums.sum() / (m.shape[0] * m.shape[1])
