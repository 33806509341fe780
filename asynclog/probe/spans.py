"""Where each sequence's prompt and response lie in the probe's padded batch.

The probe's ``SequenceProcessor`` tokenizes a batch of prompts together (left-padded, or right-padded), so
every response of the batch starts at one column, the padded prompt width, and fills in ``prompt_lens`` with
that width for every prompt (``[padded_prompt_len] * B``). Its ``gen_lens[b][g]`` are the generated tokens
up to the last one that is not padding, and its ``attention_masks`` are ``sequences != pad_token_id``; with
``pad_token = eos_token`` an EOS the model generated is masked like padding. So, per row ``(b, g)``::

    columns:  0 ............ start ......................... T
              [pad] prompt   | response [pad ...]              left-padded prompts
              prompt [pad]   | response [pad ...]              right-padded prompts
              prompt         | response [pad ...]              packed: start = the real prompt length

    start            = prompt_lens[b], read as a column
    prompt_length    = the span of real tokens before start (first to last, both padding sides handled)
    generation_length = gen_lens[b][g] when given; else the span from start to the last real token

An earlier contract read ``prompt_lens`` as a count of real prompt tokens (the response then starts after
the ``prompt_lens[b]``-th real token). Both readings agree wherever no padding precedes the response; where
they differ, the one the batch itself supports is used: the one matching ``gen_lens`` (or the probe's
``max_lengths``, the longest response per prompt), else the one under which all responses start at one
column, as a batch generated together does. What was used, and any input that contradicts it, is reported
in ``Spans.notes``; nothing is assumed silently.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Spans", "find_spans", "PADDED_WIDTH", "PROMPT_TOKENS"]

PADDED_WIDTH = "padded prompt width"
PROMPT_TOKENS = "real prompt tokens"


class Spans(NamedTuple):
    """Per row ``[B, G]`` long tensors on the batch's device, and how they were found."""

    starts: torch.Tensor  # the response's first column
    prompt_first: torch.Tensor  # the prompt's first real column
    prompt_lengths: torch.Tensor
    gen_lengths: torch.Tensor
    prompt_lens_meaning: str  # PADDED_WIDTH or PROMPT_TOKENS
    lengths_from: str  # "gen_lens" or "attention_masks"
    notes: dict[str, str]  # what was ambiguous or contradictory, by the input it concerns


def find_spans(masks: torch.Tensor, prompt_lens: torch.Tensor, gen_lens: torch.Tensor | None = None,
               max_lengths: torch.Tensor | None = None) -> Spans:
    """The spans of a batch: ``masks`` [B, G, T] (nonzero on real tokens), ``prompt_lens`` [B], and the
    optional ``gen_lens`` [B, G] and ``max_lengths`` [B] (all on the masks' device)."""
    real = masks != 0
    B, G, T = real.shape
    readings = {PADDED_WIDTH: prompt_lens[:, None].expand(B, G).clamp(0, T),
                PROMPT_TOKENS: _after_nth_real(real, prompt_lens[:, None, None])}
    meaning, notes = _choose_reading(real, readings, gen_lens, max_lengths)
    notes = dict(notes)
    starts = readings[meaning]
    columns = torch.arange(T, device=real.device)
    before = real & (columns < starts[..., None])
    prompt_first = _first_true(before).clamp_max(starts)
    prompt_lengths = (_last_true(before) + 1 - prompt_first).clamp_min(0)
    from_mask = _response_lengths(real, starts, columns)
    if gen_lens is None:
        gen_lengths, lengths_from = from_mask, "attention_masks"
        notes.update(_contradictions(from_mask, None, max_lengths, "attention_masks"))
    else:
        gen_lengths, lengths_from = torch.minimum(gen_lens.clamp_min(0), T - starts), "gen_lens"
        notes.update(_contradictions(from_mask, gen_lens, None, "gen_lens"))
    return Spans(starts, prompt_first, prompt_lengths, gen_lengths, meaning, lengths_from, notes)


def _after_nth_real(real: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The column right after each row's n-th real token (the first real column's index when n is 0)."""
    before = (real.to(torch.int32).cumsum(-1, dtype=torch.int32) < n).sum(-1)
    return torch.where(n[..., 0] > 0, before + 1, before)


# Positions of the first and last True of each row, from byte-wide masks: an int64 tensor of column numbers
# the batch's size, and a reduction over it, cost several times more on a batch of the probe's size.
def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Each row's first True column; the row's width where there is none."""
    return torch.where(mask.any(-1), mask.to(torch.uint8).argmax(-1), mask.shape[-1])


def _last_true(mask: torch.Tensor) -> torch.Tensor:
    """Each row's last True column; -1 where there is none."""
    last = mask.shape[-1] - 1 - mask.flip(-1).to(torch.uint8).argmax(-1)
    return torch.where(mask.any(-1), last, -1)


def _response_lengths(real: torch.Tensor, starts: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """From the start to the last real token, as the probe's gen_lens counts (EOS-as-padding excluded)."""
    return (_last_true(real & (columns >= starts[..., None])) + 1 - starts).clamp_min(0)


def _choose_reading(real, readings: dict, gen_lens, max_lengths) -> tuple[str, list[tuple[str, str]]]:
    """The reading of prompt_lens the batch supports (see the module docstring), and a note if it was a guess."""
    if torch.equal(readings[PADDED_WIDTH], readings[PROMPT_TOKENS]):
        return PADDED_WIDTH, []
    columns = torch.arange(real.shape[-1], device=real.device)
    evidence = {}
    for meaning, starts in readings.items():
        spans = _response_lengths(real, starts, columns)
        if gen_lens is not None:
            evidence[meaning] = int((spans == gen_lens).sum())
        elif max_lengths is not None:
            evidence[meaning] = int((spans.amax(-1) == max_lengths).sum())
        else:
            evidence[meaning] = int(bool((starts == starts.reshape(-1)[0]).all()))
    if evidence[PADDED_WIDTH] != evidence[PROMPT_TOKENS]:
        return max(evidence, key=evidence.get), []
    return PADDED_WIDTH, [("prompt_lens", f"prompt_lens can be read as the {PADDED_WIDTH} or as {PROMPT_TOKENS}, "
                                          "and nothing in the batch (gen_lens, max_lengths, one response column) "
                                          f"tells which: read as the {PADDED_WIDTH}, the probe's meaning")]


def _contradictions(from_mask, gen_lens, max_lengths, used: str) -> dict[str, str]:
    """A note when the lengths the probe gave disagree with those its attention mask shows."""
    if gen_lens is not None:
        given, seen, what = gen_lens, from_mask, "gen_lens"
    elif max_lengths is not None:
        given, seen, what = max_lengths, from_mask.amax(-1), "max_lengths"
    else:
        return {}
    wrong = (given != seen).reshape(-1)
    count = int(wrong.sum())
    if count == 0:
        return {}
    first = int(wrong.nonzero()[0])
    return {what: f"{what} disagrees with attention_masks on {count} of {wrong.numel()} "
            f"{'sequences' if what == 'gen_lens' else 'prompts'} (first: #{first}, {what} "
            f"{int(given.reshape(-1)[first])}, attention_masks {int(seen.reshape(-1)[first])}); used {used}"}
