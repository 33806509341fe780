"""A toy entropy probe: the real probe's phases, for real, on a small causal transformer (CPU or GPU).

Random weights, a synthetic vocabulary and a toy reward (the share of even token ids in a response), but
the computation has the shape of ``OfflineEntropyProbe.run_mixed_probe``:

- phase 0  sample an E batch (G=1, prompts drawn with replacement) and a U batch (G responses for each of
           B_U distinct prompts) autoregressively; prompts of varying length, left-padded; advantages are
           reward minus the prompt's mean reward.
- phase 1  sum_X on E: the gradient of the RB entropy surrogate mean(RB + (RB - mean RB) * S).
- phase 2  sum_Y on U: the gradient of the policy-gradient surrogate mean(A * S).
- phase 3  bars_dot = <sum_X, sum_Y>, deltaH1 = lr * bars_dot (the update below is theta + lr * sum_Y).
- phase 5  one SGD step on U, then the SNIS estimate of deltaH_true on E with logw = S_upd - S_orig, ESS
           and weight extremes; the weights are restored afterwards.

``run_probe`` takes any logger with DetailedLogger's methods (or None), so the demo and the benchmark run
the very same probe with different loggers. ``build(size, device="cuda")`` puts the model on a GPU; every
tensor the probe makes then lives there too, so the logger gets CUDA tensors as the real probe's would.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProbeSize", "SIZES", "ToyTokenizer", "TinyCausalLM", "build", "perturbed", "sample", "pack_batch",
           "teacher_force", "snis", "run_probe"]

PAD, EOS, BOS = 0, 1, 2


@dataclass(frozen=True)
class ProbeSize:
    """Model and batch sizes of one demo preset."""

    vocab: int
    d_model: int
    layers: int
    heads: int
    B_E: int
    B_U: int
    G: int
    prompt_min: int
    prompt_max: int
    max_new_tokens: int
    dataset_size: int
    learning_rate: float = 0.05
    temperature: float = 1.0


SIZES = {
    "tiny": ProbeSize(vocab=48, d_model=32, layers=1, heads=2, B_E=16, B_U=4, G=4, prompt_min=3, prompt_max=8,
                      max_new_tokens=12, dataset_size=64),
    "small": ProbeSize(vocab=128, d_model=64, layers=2, heads=4, B_E=256, B_U=32, G=8, prompt_min=4,
                       prompt_max=24, max_new_tokens=48, dataset_size=512),
    "medium": ProbeSize(vocab=512, d_model=96, layers=3, heads=4, B_E=512, B_U=64, G=8, prompt_min=8,
                        prompt_max=32, max_new_tokens=64, dataset_size=2048),
}


class ToyTokenizer:
    """Token ids to syllables: ``decode(ids)`` joins them with spaces, skipping padding."""

    def __init__(self, vocab: int):
        consonants, vowels = "bdfgklmnprstvz", "aeiou"
        syllables = [c + v for c in consonants for v in vowels]
        syllables += [a + b for a in list(syllables) for b in syllables]
        self.words = ["<pad>", "<eos>", "<bos>"] + syllables[: vocab - 3]
        if len(self.words) < vocab:
            raise ValueError(f"ToyTokenizer has at most {len(self.words)} words")

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()  # one device sync for the row, not one per token
        return " ".join(self.words[i] for i in ids if i != PAD)

    def batch_decode(self, batch) -> list[str]:
        return [self.decode(ids) for ids in batch]


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cache: torch.Tensor | None = None):
        """``cache``: [2, N, heads, T_max, d_head] keys and values, filled up to ``allowed``'s last dim."""
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            end = allowed.shape[-1]
            cache[0, :, :, end - t : end], cache[1, :, :, end - t : end] = k, v
            k, v = cache[0, :, :, :end], cache[1, :, :, :end]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(attended.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.ln2(x))


class TinyCausalLM(nn.Module):
    """A pre-norm decoder-only transformer that understands left padding.

    ``forward(ids, mask)`` -> logits for every position. For sampling, ``step(ids, mask, cache)`` feeds
    only the new tokens (``mask`` covers everything so far) and fills the ``new_cache`` buffers.
    """

    def __init__(self, size: ProbeSize):
        super().__init__()
        max_len = size.prompt_max + size.max_new_tokens + 1
        self.embed = nn.Embedding(size.vocab, size.d_model)
        self.position = nn.Embedding(max_len, size.d_model)
        self.blocks = nn.ModuleList(_Block(size.d_model, size.heads) for _ in range(size.layers))
        self.norm = nn.LayerNorm(size.d_model)
        self.head = nn.Linear(size.d_model, size.vocab, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.step(ids, mask, None)

    def new_cache(self, n: int, length: int) -> list[torch.Tensor]:
        """Key/value buffers for sampling ``n`` sequences of up to ``length`` tokens."""
        block = self.blocks[0]
        d, device = self.embed.embedding_dim, self.embed.weight.device
        return [torch.zeros(2, n, block.heads, length, d // block.heads, device=device) for _ in self.blocks]

    def step(self, ids: torch.Tensor, mask: torch.Tensor, cache: list | None) -> torch.Tensor:
        total, new = mask.shape[1], ids.shape[1]
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, total - new :]  # first real token: 0
        x = self.embed(ids) + self.position(positions)
        queries = torch.arange(total - new, total, device=ids.device)[:, None]
        keys = torch.arange(total, device=ids.device)[None, :]
        # Causal over real keys; padding may attend to itself, so no attention row is empty (NaN).
        allowed = ((keys <= queries) & mask.bool()[:, None, :]) | (keys == queries)
        for i, block in enumerate(self.blocks):
            x = block(x, allowed[:, None], None if cache is None else cache[i])
        return self.head(self.norm(x))


def build(size: ProbeSize, seed: int = 0, device: str = "cpu") -> tuple[TinyCausalLM, ToyTokenizer,
                                                                       list[torch.Tensor]]:
    """The model (on ``device``), its tokenizer and a dataset of prompts (CPU token tensors), all seeded.

    The weights are drawn on the CPU and then moved, so a seed gives the same model on every device.
    """
    torch.manual_seed(seed)
    model = TinyCausalLM(size).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(size.prompt_min, size.prompt_max + 1, (size.dataset_size,), generator=g)
    prompts = [torch.cat([torch.tensor([BOS]), torch.randint(3, size.vocab, (int(n) - 1,), generator=g)])
               for n in lengths]
    return model, ToyTokenizer(size.vocab), prompts


def perturbed(model: TinyCausalLM, index: int, scale: float = 0.02, seed: int = 0) -> TinyCausalLM:
    """Checkpoint ``index`` of a sweep: a copy of ``model`` with seeded noise of ``scale * index`` added."""
    copy_ = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed + 1000 + index)
    with torch.no_grad():
        for p in copy_.parameters():
            p.add_((torch.randn(p.shape, generator=g) * scale * index).to(p.device))
    return copy_


# --- phase 0: sampling ---------------------------------------------------------------------------------------
@torch.no_grad()
def sample(model: TinyCausalLM, prompts: list[torch.Tensor], G: int, size: ProbeSize, g: torch.Generator) -> dict:
    """G responses per prompt; returns [B*G, T] ids and mask (prompts left-padded) and per-token values."""
    n, width, new = len(prompts) * G, max(len(p) for p in prompts), size.max_new_tokens
    device = model.embed.weight.device
    ids = torch.full((n, width + new), PAD, dtype=torch.long)
    mask = torch.zeros((n, width + new), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        rows = slice(i * G, (i + 1) * G)
        ids[rows, width - len(prompt) : width] = prompt
        mask[rows, width - len(prompt) : width] = 1
    ids, mask = ids.to(device), mask.to(device)  # filled on the CPU: one copy, not one per prompt
    logps, entropies = torch.zeros(n, new, device=device), torch.zeros(n, new, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    cache = model.new_cache(n, width + new)
    logits = model.step(ids[:, :width], mask[:, :width], cache)
    steps = 0
    for t in range(new):
        pos = width + t
        logp = F.log_softmax(logits[:, -1] / size.temperature, dim=-1)
        token = torch.multinomial(logp.exp(), 1, generator=g).squeeze(1)
        alive = ~done
        ids[alive, pos], mask[alive, pos] = token[alive], 1
        logps[alive, t] = logp.gather(1, token[:, None]).squeeze(1)[alive]
        entropies[alive, t] = -(logp.exp() * logp).sum(-1)[alive]
        done |= token == EOS
        steps = t + 1
        if bool(done.all()) or steps == new:
            break
        logits = model.step(ids[:, pos : pos + 1], mask[:, : pos + 1], cache)
    return {"ids": ids[:, : width + steps], "mask": mask[:, : width + steps], "width": width,
            "logps": logps[:, :steps], "entropies": entropies[:, :steps],
            "prompt_lens": [len(p) for p in prompts]}


def toy_reward(ids: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """The share of even token ids among a response's tokens (0 for an empty response)."""
    gen = mask[:, width:].float()
    even = ((ids[:, width:] % 2) == 0).float() * gen
    return even.sum(1) / gen.sum(1).clamp_min(1)


def pack_batch(sampled: dict, B: int, G: int, tokenizer: ToyTokenizer, indices: list[int],
           rewards: torch.Tensor | None = None) -> tuple[dict, dict]:
    """The probe's batch dict and the per-sequence dict (``DetailedLogger.log_batch_data``'s arguments)."""
    ids, mask, width = sampled["ids"], sampled["mask"], sampled["width"]
    T = ids.shape[1]
    gen_lens = mask[:, width:].sum(1).view(B, G)
    prompt_texts = [tokenizer.decode(ids[b * G, width - n : width]) for b, n in enumerate(sampled["prompt_lens"])]
    response_texts = [[tokenizer.decode(ids[b * G + g, width:]) for g in range(G)] for b in range(B)]
    # As the user's SequenceProcessor: prompt_lens is the padded prompt width, the same for every prompt.
    batch = {"sequences": ids.view(B, G, T), "attention_masks": mask.view(B, G, T),
             "prompt_lens": [width] * B, "max_lengths": gen_lens.max(1).values.tolist(),
             "num_prompts": B, "num_responses_per_prompt": G, "prompt_width": width,
             "_debug_info": {"prompt_texts": prompt_texts, "response_texts": response_texts,
                             "dataset_indices": indices}}
    if rewards is None:
        batch["advantages"] = torch.zeros(B, G, device=ids.device)
    else:
        rewards = rewards.view(B, G)
        batch["rewards"] = rewards
        batch["advantages"] = rewards - rewards.mean(1, keepdim=True)
    steps = sampled["logps"].shape[1]
    sequences = {"sequence_logprob": sampled["logps"].sum(1).view(B, G),
                 "rb_entropy": sampled["entropies"].sum(1).view(B, G),
                 "token_logprobs": sampled["logps"].view(B, G, steps),
                 "token_entropies": sampled["entropies"].view(B, G, steps)}
    return batch, sequences


# --- phases 1-5 ------------------------------------------------------------------------------------------------
def teacher_force(model: TinyCausalLM, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, RB) per sequence: summed log-probs of the response tokens and summed RB entropies, with grad."""
    B, G, T = batch["sequences"].shape
    ids, mask = batch["sequences"].view(B * G, T), batch["attention_masks"].view(B * G, T)
    width = batch["prompt_width"]  # prompts are left-padded to this width; responses follow
    logp = F.log_softmax(model(ids[:, :-1], mask[:, :-1]) / temperature, dim=-1)
    token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    generated = mask[:, 1:].float() * (torch.arange(1, T, device=ids.device) >= width).float()
    return (token_logp * generated).sum(1), (entropy * generated).sum(1)


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def snis(S_orig, S_upd, RB_orig, RB_upd, lengths) -> dict:
    """Self-normalised importance sampling of the entropy change on E, and its diagnostics."""
    logw = (S_upd - S_orig).double()
    w = torch.exp(logw - logw.max())  # scale-free: every ratio below is unchanged by the shift
    rb_o, rb_u, n = RB_orig.double(), RB_upd.double(), lengths.double()
    H_orig, H_upd = rb_o.mean(), (w * rb_u).sum() / w.sum()
    H_orig_tok, H_upd_tok = rb_o.sum() / n.sum(), (w * rb_u).sum() / (w * n).sum()
    raw = logw.exp()
    return {"H_orig": H_orig.item(), "H_upd": H_upd.item(), "deltaH_true": (H_upd - H_orig).item(),
            "H_orig_tok": H_orig_tok.item(), "H_upd_tok": H_upd_tok.item(),
            "deltaH_true_tok": (H_upd_tok - H_orig_tok).item(),
            "diagnostics": {"ESS": (w.sum() ** 2 / (w * w).sum()).item(), "w_max": raw.max().item(),
                            "w_min": raw.min().item(), "w_sum_global": raw.sum().item(), "is_mode": "snis_rb",
                            "rl_grad_accum": 1}}


class _NullLogger:
    """What ``run_probe`` logs through without a logger: every method accepts anything and does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_probe(model: TinyCausalLM, tokenizer: ToyTokenizer, prompts: list[torch.Tensor], size: ProbeSize,
              logger=None, checkpoint_path: str = "toy/step_0", config: dict | None = None, seed: int = 0,
              on_phase=None) -> dict:
    """Run phases 0-5 on ``model`` (its weights are restored), logging through ``logger``; return the results.

    ``on_phase``, when given, is called with each phase's name as the phase begins (the demo's status line).
    """
    log = logger if logger is not None else _NullLogger()
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    log_path = log.log_run_start(checkpoint_path, config or {})
    timing: dict[str, float] = {}

    def phase(name: str):
        if on_phase is not None:
            on_phase(name)
        return _Phase(log, timing, name)

    with phase("phase0_sampling"):
        E_idx = torch.randint(0, len(prompts), (size.B_E,), generator=g).tolist()  # with replacement
        U_idx = torch.randperm(len(prompts), generator=g)[: size.B_U].tolist()  # distinct
        draw = _sampling_generator(model, g, seed)
        E_s = sample(model, [prompts[i] for i in E_idx], 1, size, draw)
        U_s = sample(model, [prompts[i] for i in U_idx], size.G, size, draw)
        E_batch, E_seq = pack_batch(E_s, size.B_E, 1, tokenizer, E_idx)
        U_batch, U_seq = pack_batch(U_s, size.B_U, size.G, tokenizer, U_idx,
                                toy_reward(U_s["ids"], U_s["mask"], U_s["width"]))
    log.log_batch_data("E_batch", E_batch, E_seq)
    log.log_batch_data("U_batch", U_batch, U_seq)

    params = [p for p in model.parameters() if p.requires_grad]
    with phase("phase1_sum_X"):
        S_orig, RB_orig = teacher_force(model, E_batch, size.temperature)
        surrogate = (RB_orig + (RB_orig.detach() - RB_orig.detach().mean()) * S_orig).mean()
        sum_X = _flat_grad(surrogate, params)
    with phase("phase2_sum_Y"):
        S_U, _ = teacher_force(model, U_batch, size.temperature)
        sum_Y = _flat_grad((U_batch["advantages"].reshape(-1) * S_U).mean(), params)
    with phase("phase3_delta_h1"):
        bars_dot = torch.dot(sum_X, sum_Y).item()
        deltaH1 = size.learning_rate * bars_dot
    with phase("phase5_importance"):
        S_orig, RB_orig = S_orig.detach(), RB_orig.detach()
        ground_truth, S_upd, RB_upd = _importance(model, params, sum_Y, E_batch, size, S_orig, RB_orig)
    log.log_importance_sampling_details(S_orig, S_upd, RB_orig, RB_upd)
    log.log_ground_truth_results(ground_truth)

    results = {"bars_dot": bars_dot, "deltaH1": deltaH1, "deltaH_true": ground_truth["deltaH_true"],
               "learning_rate": size.learning_rate, "B_E": size.B_E, "B_U": size.B_U, "G": size.G,
               "mb_size_prompts": size.B_U, "weighting_mode": "uniform", **ground_truth}
    log.log_core_results({k: results[k] for k in ("bars_dot", "deltaH1", "deltaH_true", "learning_rate", "B_E",
                                                  "B_U", "G", "mb_size_prompts", "weighting_mode")})
    results["timing"] = {**timing, "total_time": time.perf_counter() - start}
    results["log_path"] = log.finalize_log(results) or log_path
    return results


def _sampling_generator(model: TinyCausalLM, g: torch.Generator, seed: int) -> torch.Generator:
    """``g`` on the CPU (so CPU runs draw as before); on a GPU, a generator there, which multinomial needs."""
    device = model.embed.weight.device
    return g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)


def _importance(model, params, sum_Y, E_batch, size: ProbeSize, S_orig, RB_orig):
    """One SGD step along sum_Y, (S, RB) on E after it, the SNIS estimate; the weights are put back."""
    saved = [p.detach().clone() for p in params]
    offset = 0
    with torch.no_grad():  # plain SGD ascent on J; torch.optim would import torch._dynamo (seconds) on first use
        for p in params:
            p.add_(sum_Y[offset : offset + p.numel()].view_as(p), alpha=size.learning_rate)
            offset += p.numel()
    try:
        with torch.no_grad():
            S_upd, RB_upd = teacher_force(model, E_batch, size.temperature)
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
    lengths = E_batch["attention_masks"][..., E_batch["prompt_width"]:].sum(-1).reshape(-1)
    return snis(S_orig, S_upd, RB_orig, RB_upd, lengths), S_upd, RB_upd


class _Phase:
    """Times a phase for the results and marks it in the log."""

    def __init__(self, log, timing: dict, name: str):
        self.log, self.timing, self.name = log, timing, name

    def __enter__(self):
        self.log.log_phase_start(self.name)
        self.start = time.perf_counter()

    def __exit__(self, exc_type, exc, tb):
        self.timing[self.name] = time.perf_counter() - self.start
        if exc_type is None:
            self.log.log_phase_end(self.name, {"seconds": self.timing[self.name]})
