"""A run's sequences as the report shows them: each sequence's scores and its response tokens, bounded.

``read_batch(log, "E_batch", limit)`` joins three streams of the run on ``sequence_id`` (and ``rank``, for a run
folder of ranks): ``sequences/<batch>`` (texts, length, reward), ``importance/<batch>`` (the importance
weight) and ``tokens/<batch>`` (each real response token's text, log-prob and entropy). A batch of more than
``limit`` sequences is cut down before its tokens are read, and the result says how (``Batch.note``):

- an E batch (one response per prompt) keeps the sequences with the most extreme importance weights and
  entropies, a quarter of the limit for each end of each, and an even spread of the rest;
- a U batch (G responses per prompt) keeps whole prompts, evenly spread, so the G responses stay side by side.

A token without a text (no tokenizer, an id missing from the run's vocab, or an empty text, as padding
decodes) shows as its id, ``⟨17⟩``. Token texts are kept once per batch in ``Batch.texts`` and referred to by
number, so a text a tokenizer repeats thousands of times costs its bytes once. Scores keep 4 significant digits,
a token's values 3; NaN and infinities become None (JSON has neither).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["MAX_SEQUENCES", "SORT_KEYS", "Batch", "batches_of", "read_batch", "rounded"]

# A report keeps at most this many sequences per batch: E 2048 x 150 tokens would otherwise give a page the
# browser takes many seconds to parse (benchmarks/bench_report.py measures it).
MAX_SEQUENCES = 1000
# A token's entropy and log-prob keep 3 significant digits (a colour and a value on hover need no more): they
# are most of a report's bytes.
TOKEN_DIGITS = 3
# The per-sequence scores the browser sorts by, and the sequences-stream columns they come from.
SORT_KEYS = {"weight": "importance_weight", "entropy": "rb_entropy", "length": "generation_length",
             "reward": "reward"}


@dataclass
class Batch:
    """One batch of a run, ready to embed: ``sequences`` are dicts of plain values, ``texts`` the token texts
    their ``tokens`` lists point into."""

    name: str
    total: int = 0
    grouped: bool = False  # a U batch: several responses per prompt
    note: str | None = None  # which sequences were kept, when not all were
    sequences: list[dict] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"name": self.name, "total": self.total, "grouped": self.grouped, "note": self.note,
                "sequences": self.sequences, "texts": self.texts}


def rounded(value, digits: int = 4):
    """A number to ``digits`` significant digits; None for NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return value
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


def batches_of(log) -> list[str]:
    """The batches of ``log`` with sequences or tokens, E before U."""
    names = {n.split("/", 1)[1] for n in log.stream_names() if n.split("/", 1)[0] in ("sequences", "tokens")}
    return sorted(names)


def read_batch(log, batch: str, limit: int = MAX_SEQUENCES) -> Batch:
    """Batch ``batch`` of ``log`` (a Log or a ShardedLog), at most ``limit`` sequences of it with their tokens."""
    streams = set(log.stream_names())
    found = Batch(batch)
    by_key: dict[tuple, dict] = {}
    for row in _rows(log, f"sequences/{batch}", streams):
        by_key[_key(row)] = _sequence(row)
    for row in _rows(log, f"importance/{batch}", streams):
        if _key(row) in by_key:
            by_key[_key(row)]["weight"] = rounded(row.get("importance_weight"))
    found.grouped = any(s["response"] for s in by_key.values())
    found.total = len(by_key)
    kept = _kept(list(by_key), by_key, limit, found)
    _add_tokens(log, batch, streams, by_key, kept, limit, found)
    found.sequences = [_filled(by_key[k]) for k in by_key if k in kept]
    found.total = max(found.total, len(by_key))
    return found


def _rows(log, name: str, streams: set[str]):
    return log.rows(name) if name in streams else ()


def _key(row: dict) -> tuple:
    return row.get("rank"), row.get("sequence_id")


def _sequence(row: dict) -> dict:
    seq = {"id": row.get("sequence_id"), "rank": row.get("rank"), "prompt": row.get("prompt_id"),
           "response": row.get("response_id") or 0, "prompt_text": _text(row.get("prompt_text")),
           "response_text": _text(row.get("response_text"))}
    seq.update({key: rounded(_item(row.get(column))) for key, column in SORT_KEYS.items()})
    seq["logprob"] = rounded(_item(row.get("sequence_logprob")))
    return seq


def _filled(seq: dict) -> dict:
    """A sequence scored from its tokens where its row gave no score: entropy as the sum of its tokens'
    entropies (the RB entropy of the sequence), length as its count of real tokens."""
    if seq["entropy"] is None and seq.get("entropies"):
        seq["entropy"] = rounded(sum(v for v in seq["entropies"] if v is not None))
    if seq["length"] is None and seq.get("tokens") is not None:
        seq["length"] = len(seq["tokens"])
    return seq


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _item(value):
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


# --- cutting a batch down ------------------------------------------------------------------------------------
def _kept(keys: list[tuple], by_key: dict, limit: int, found: Batch) -> set[tuple]:
    """The keys a report keeps of a batch of ``len(keys)`` sequences; ``found.note`` says how it chose."""
    if len(keys) <= limit:
        return set(keys)
    if found.grouped:
        kept = _whole_prompts(keys, by_key, limit)
        found.note = "whole prompts, evenly spread over the batch"
        return kept
    kept, quarter = [], max(1, limit // 8)
    for score in ("weight", "entropy"):
        present = sorted((k for k in keys if by_key[k][score] is not None), key=lambda k: by_key[k][score])
        kept += present[:quarter] + present[-quarter:]
    chosen = set(kept)
    rest = [k for k in keys if k not in chosen]
    chosen.update(_spread(rest, limit - len(chosen)))
    found.note = f"the {quarter} highest and lowest by importance weight and by entropy, and an even spread of the rest"
    return chosen


def _spread(items: list, count: int) -> list:
    """``count`` of ``items`` evenly spaced, first included."""
    if count <= 0 or not items:
        return []
    step = len(items) / count
    return [items[int(i * step)] for i in range(min(count, len(items)))]


def _whole_prompts(keys: list[tuple], by_key: dict, limit: int) -> set[tuple]:
    prompts: dict[tuple, list[tuple]] = {}
    for k in keys:
        prompts.setdefault((k[0], by_key[k]["prompt"]), []).append(k)
    size = max(len(group) for group in prompts.values())
    chosen = _spread(list(prompts), max(1, limit // size))
    return {k for prompt in chosen for k in prompts[prompt]}


# --- tokens ------------------------------------------------------------------------------------------------------
def _add_tokens(log, batch: str, streams: set[str], by_key: dict, kept: set, limit: int, found: Batch) -> None:
    """Each kept sequence's real response tokens: ``tokens`` (numbers into ``found.texts``), ``logprobs`` and
    ``entropies`` (None where the run logged none). A run without a sequences stream keeps its first ``limit``
    token rows."""
    numbers: dict[str, int] = {}
    for row in _rows(log, f"tokens/{batch}", streams):
        key = _key(row)
        if key not in by_key:
            by_key[key] = _sequence(row)
            if len(kept) < limit:
                kept.add(key)
        if key in kept:
            by_key[key].update(_tokens(row, numbers, found.texts))
    if len(by_key) > limit and found.note is None:
        found.note = "the first in the batch"


def _tokens(row: dict, numbers: dict[str, int], texts: list[str]) -> dict:
    ids = _list(row.get("tokens"))
    mask = _list(row.get("attention_mask")) or [1] * len(ids)
    real = [i for i, m in enumerate(mask) if m]
    words = _list(row.get("token_texts")) or [None] * len(ids)
    out = {"tokens": [], "logprobs": _at(_list(row.get("token_logprobs")), real, len(ids)),
           "entropies": _at(_list(row.get("rb_entropies")), real, len(ids))}
    for i in real:
        word = words[i] if i < len(words) and isinstance(words[i], str) and words[i] else f"⟨{ids[i]}⟩"
        if word not in numbers:
            numbers[word] = len(texts)
            texts.append(word)
        out["tokens"].append(numbers[word])
    return out


def _list(value) -> list:
    if value is None:
        return []
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _at(values: list, where: list[int], length: int) -> list | None:
    """``values`` at the token positions ``where``; None when the run logged none. Fewer values than the row
    has tokens score its last tokens (``tables.per_token``): the first positions read None."""
    if not values:
        return None
    shift = length - len(values)
    return [rounded(values[i - shift], TOKEN_DIGITS) if 0 <= i - shift < len(values) else None for i in where]
