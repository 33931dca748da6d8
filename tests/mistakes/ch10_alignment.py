"""Wrong answers to chapter 10, as learners write them."""
import torch
import torch.nn.functional as F

from . import wrong


# -- sft_tokenize ---------------------------------------------------------------------------
@wrong("ch10.sft_tokenize", diagnosis="prompt-in-loss")
def sft_labels_everywhere(messages, tokenizer):
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False))
    return ids, ids.clone()


@wrong("ch10.sft_tokenize", diagnosis="no-end")
def sft_content_only(messages, tokenizer):
    ids, labels = [], []
    for m in messages:
        for piece, learn in ((f"<|{m['role']}|>\n", False), (m["content"], m["role"] == "assistant"),
                             ("<|end|>\n", False)):
            toks = tokenizer.encode(piece, add_special_tokens=False)
            ids += toks
            labels += toks if learn else [-100] * len(toks)
    return torch.tensor(ids), torch.tensor(labels)


@wrong("ch10.sft_tokenize", diagnosis="header-in-loss")
def sft_whole_assistant_turn(messages, tokenizer):
    ids, labels = [], []
    for m in messages:
        turn = tokenizer.encode(f"<|{m['role']}|>\n{m['content']}<|end|>", add_special_tokens=False)
        nl = tokenizer.encode("\n", add_special_tokens=False)
        ids += turn + nl
        labels += (turn if m["role"] == "assistant" else [-100] * len(turn)) + [-100] * len(nl)
    return torch.tensor(ids), torch.tensor(labels)


@wrong("ch10.sft_tokenize", diagnosis="shifted-labels")
def sft_shifts_itself(messages, tokenizer):
    ids, keep = [], []
    for m in messages:
        head = tokenizer.encode(f"<|{m['role']}|>\n", add_special_tokens=False)
        body = tokenizer.encode(m["content"] + "<|end|>", add_special_tokens=False)
        tail = tokenizer.encode("\n", add_special_tokens=False)
        ids += head + body + tail
        keep += [False] * len(head) + [m["role"] == "assistant"] * len(body) + [False] * len(tail)
    ids, keep = torch.tensor(ids), torch.tensor(keep)
    labels = torch.full_like(ids, -100)
    labels[:-1] = torch.where(keep[1:], ids[1:], -100)     # "next-token targets"
    return ids, labels


# -- last_token_reward ----------------------------------------------------------------------
@wrong("ch10.last_token_reward", diagnosis="last-position")
def reward_at_end(hidden, input_ids, score_weight, pad_token_id):
    return hidden[:, -1, :] @ score_weight.squeeze(0)


@wrong("ch10.last_token_reward", diagnosis="length-minus-one")
def reward_at_length(hidden, input_ids, score_weight, pad_token_id):
    lengths = (input_ids != pad_token_id).sum(dim=1)
    rewards = hidden @ score_weight.T                       # (B, T, 1)
    return rewards[torch.arange(len(lengths)), lengths - 1, 0]


@wrong("ch10.last_token_reward", diagnosis="first-token")
def reward_at_start(hidden, input_ids, score_weight, pad_token_id):
    return F.linear(hidden[:, 0], score_weight).squeeze(-1)


@wrong("ch10.last_token_reward", diagnosis="mean-pooled")
def reward_of_mean(hidden, input_ids, score_weight, pad_token_id):
    m = (input_ids != pad_token_id).float().unsqueeze(-1)
    return ((hidden * m).sum(1) / m.sum(1)) @ score_weight[0]


# -- bradley_terry_loss ---------------------------------------------------------------------
@wrong("ch10.bradley_terry_loss", diagnosis="swapped")
def bt_swapped(chosen_rewards, rejected_rewards):
    return F.binary_cross_entropy_with_logits(rejected_rewards - chosen_rewards,
                                              torch.ones_like(chosen_rewards))


@wrong("ch10.bradley_terry_loss", diagnosis="log-of-sigmoid")
def bt_naive(chosen_rewards, rejected_rewards):
    p = torch.sigmoid(chosen_rewards - rejected_rewards)
    return -torch.log(p).mean()


@wrong("ch10.bradley_terry_loss", diagnosis="sum")
def bt_sum(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(chosen_rewards - rejected_rewards).sum()


@wrong("ch10.bradley_terry_loss", diagnosis="no-log")
def bt_probability(chosen_rewards, rejected_rewards):
    return 1 - torch.sigmoid(chosen_rewards - rejected_rewards).mean() - 1


# -- sequence_logprobs ----------------------------------------------------------------------
@wrong("ch10.sequence_logprobs", diagnosis="no-shift")
def slp_unshifted(logits, input_ids, completion_mask):
    logp = logits.log_softmax(-1).gather(2, input_ids[..., None])[..., 0]
    return (logp * completion_mask).sum(-1)


@wrong("ch10.sequence_logprobs", diagnosis="prompt-included")
def slp_whole_sequence(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], -1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)


@wrong("ch10.sequence_logprobs", diagnosis="mean")
def slp_mean(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = completion_mask[:, 1:].float()
    return (logp * m).sum(1) / m.sum(1)


@wrong("ch10.sequence_logprobs", diagnosis="mask-off-by-one")
def slp_mask_not_shifted(logits, input_ids, completion_mask):
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logp * completion_mask[:, :-1]).sum(1)


# -- dpo_loss -------------------------------------------------------------------------------
@wrong("ch10.dpo_loss", diagnosis="swapped")
def dpo_swapped(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    logits = (policy_rejected - policy_chosen) - (ref_rejected - ref_chosen)
    return -F.logsigmoid(beta * logits).mean()


@wrong("ch10.dpo_loss", diagnosis="no-beta")
def dpo_no_beta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    pi_logratios = policy_chosen - policy_rejected
    ref_logratios = ref_chosen - ref_rejected
    return -F.logsigmoid(pi_logratios - ref_logratios).mean()


@wrong("ch10.dpo_loss", diagnosis="ref-sign")
def dpo_ref_added(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    return -F.logsigmoid(beta * (policy_chosen + ref_chosen - policy_rejected - ref_rejected)).mean()


@wrong("ch10.dpo_loss", diagnosis="beta-outside")
def dpo_beta_outside(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (-beta * F.logsigmoid(margin)).mean()


@wrong("ch10.dpo_loss", diagnosis="log-of-sigmoid")
def dpo_naive_log(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return torch.mean(-torch.log(torch.sigmoid(margin)))


# -- dpo_batch_loss -------------------------------------------------------------------------
def _logps(logits, ids, mask):
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask[:, 1:]).sum(1)


@wrong("ch10.dpo_batch_loss", diagnosis="reference-gradients")
def dpo_batch_ref_grad(policy, reference, input_ids, completion_mask, beta=0.1):
    n = len(input_ids) // 2
    pi = _logps(policy(input_ids), input_ids, completion_mask)
    ref = _logps(reference(input_ids), input_ids, completion_mask)      # forgot no_grad
    return -F.logsigmoid(beta * ((pi[:n] - ref[:n]) - (pi[n:] - ref[n:]))).mean()


@wrong("ch10.dpo_batch_loss", diagnosis="halves-swapped")
def dpo_batch_rejected_first(policy, reference, input_ids, completion_mask, beta=0.1):
    rejected, chosen = input_ids.chunk(2)
    m_rej, m_cho = completion_mask.chunk(2)
    with torch.no_grad():
        ref_c = _logps(reference(chosen), chosen, m_cho)
        ref_r = _logps(reference(rejected), rejected, m_rej)
    pi_c, pi_r = _logps(policy(chosen), chosen, m_cho), _logps(policy(rejected), rejected, m_rej)
    return -F.logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).mean()


@wrong("ch10.dpo_batch_loss", diagnosis="ch10.sequence_logprobs:prompt-included")
def dpo_batch_prompt_in(policy, reference, input_ids, completion_mask, beta=0.1):
    n = len(input_ids) // 2

    def logps(model):
        lp = torch.log_softmax(model(input_ids)[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return lp.sum(1)

    pi = logps(policy)
    with torch.no_grad():
        ref = logps(reference)
    return -F.logsigmoid(beta * ((pi[:n] - ref[:n]) - (pi[n:] - ref[n:]))).mean()


@wrong("ch10.dpo_batch_loss", diagnosis="ch10.dpo_loss:no-beta")
def dpo_batch_no_beta(policy, reference, input_ids, completion_mask, beta=0.1):
    n = len(input_ids) // 2
    pi = _logps(policy(input_ids), input_ids, completion_mask)
    with torch.no_grad():
        ref = _logps(reference(input_ids), input_ids, completion_mask)
    return -F.logsigmoid((pi[:n] - ref[:n]) - (pi[n:] - ref[n:])).mean()


# -- reinforce_loss -------------------------------------------------------------------------
@wrong("ch10.reinforce_loss", diagnosis="no-baseline")
def reinforce_plain(seq_logprobs, rewards):
    return -(rewards * seq_logprobs).mean()


@wrong("ch10.reinforce_loss", diagnosis="wrong-sign")
def reinforce_ascent(seq_logprobs, rewards):
    advantage = rewards - rewards.mean()
    return (advantage * seq_logprobs).mean()


@wrong("ch10.reinforce_loss", diagnosis="sum")
def reinforce_sum(seq_logprobs, rewards):
    return -torch.sum((rewards - rewards.mean()) * seq_logprobs)


# -- ppo_clip_loss --------------------------------------------------------------------------
@wrong("ch10.ppo_clip_loss", diagnosis="min-of-ratios")
def ppo_min_ratio(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    ratio = (logprobs - old_logprobs).exp()
    r = torch.min(ratio, torch.clamp(ratio, 1 - epsilon, 1 + epsilon))
    loss = -r * advantages[:, None]
    return (loss * mask).sum() / mask.sum()


@wrong("ch10.ppo_clip_loss", diagnosis="no-clip")
def ppo_unclipped(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    return -(ratio * advantages.unsqueeze(1) * mask).sum() / mask.sum()


@wrong("ch10.ppo_clip_loss", diagnosis="inverted-ratio")
def ppo_old_over_new(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    ratio = torch.exp(old_logprobs - logprobs)
    A = advantages.unsqueeze(1)
    obj = torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    return -(obj * mask).sum() / mask.sum()


@wrong("ch10.ppo_clip_loss", diagnosis="unmasked")
def ppo_mean_all(logprobs, old_logprobs, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages.unsqueeze(1)
    return -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A).mean()


# -- group_advantages -----------------------------------------------------------------------
@wrong("ch10.group_advantages", diagnosis="batch-normalised")
def adv_batch(rewards, group_size):
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


@wrong("ch10.group_advantages", diagnosis="no-epsilon")
def adv_no_eps(rewards, group_size):
    g = rewards.reshape(-1, group_size)
    return ((g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True)).flatten()


@wrong("ch10.group_advantages", diagnosis="biased-std")
def adv_numpy_std(rewards, group_size):
    import numpy as np

    g = rewards.numpy().reshape(-1, group_size)
    a = (g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-4)   # numpy's std divides by n
    return torch.from_numpy(a.reshape(-1))


@wrong("ch10.group_advantages", diagnosis="not-scaled")
def adv_centred(rewards, group_size):
    out = rewards.clone()
    for i in range(0, len(rewards), group_size):
        out[i:i + group_size] -= rewards[i:i + group_size].mean()
    return out


# -- grpo_loss ------------------------------------------------------------------------------
def _adv(rewards, G):
    g = rewards.view(-1, G)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)


def _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio,
          kl_fn, adv_fn=_adv, use_ratio=None):
    A = adv_fn(rewards, group_size)[:, None]
    ratio = torch.exp(logprobs - old_logprobs)
    pg = -torch.min(ratio * A, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * A)
    kl = kl_fn(logprobs, ref_logprobs)
    if kl_ratio if use_ratio is None else use_ratio:
        kl = kl * ratio
    per = (pg + beta * kl) * mask
    if loss_type == "grpo":
        return (per.sum(1) / mask.sum(1)).mean()
    if loss_type == "bnpo":
        return per.sum() / mask.sum()
    return per.sum() / mask.numel()


def _k3(lp, ref):
    return torch.exp(ref - lp) - (ref - lp) - 1


@wrong("ch10.grpo_loss", diagnosis="kl-reversed")
def grpo_kl_backwards(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                      loss_type="grpo", kl_ratio=True):
    return _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio,
                 lambda lp, ref: torch.exp(lp - ref) - (lp - ref) - 1)


@wrong("ch10.grpo_loss", diagnosis="kl-k1")
def grpo_kl_logratio(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                     loss_type="grpo", kl_ratio=True):
    return _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio,
                 lambda lp, ref: lp - ref)


@wrong("ch10.grpo_loss", diagnosis="kl-ratio-ignored")
def grpo_plain_k3(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                  loss_type="grpo", kl_ratio=True):
    return _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio,
                 _k3, use_ratio=False)


@wrong("ch10.grpo_loss", diagnosis="min-of-ratios")
def grpo_min_ratio(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                   loss_type="grpo", kl_ratio=True):
    A = _adv(rewards, group_size).unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    pg = -torch.min(ratio, ratio.clamp(1 - epsilon, 1 + epsilon)) * A
    kl = _k3(logprobs, ref_logprobs)
    if kl_ratio:
        kl = kl * ratio
    per = (pg + beta * kl) * mask
    if loss_type == "grpo":
        return ((per.sum(-1)) / mask.sum(-1)).mean()
    if loss_type == "bnpo":
        return per.sum() / mask.sum()
    return per.sum() / (mask.shape[0] * mask.shape[1])


@wrong("ch10.grpo_loss", diagnosis="always-bnpo")
def grpo_token_mean(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                    loss_type="grpo", kl_ratio=True):
    return _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, "bnpo", kl_ratio, _k3)


@wrong("ch10.grpo_loss", diagnosis="ch10.group_advantages:batch-normalised")
def grpo_batch_advantages(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta=0.04, epsilon=0.2,
                          loss_type="grpo", kl_ratio=True):
    return _grpo(logprobs, old_logprobs, ref_logprobs, rewards, mask, group_size, beta, epsilon, loss_type, kl_ratio,
                 _k3, adv_fn=lambda r, G: (r - r.mean()) / (r.std() + 1e-4))
