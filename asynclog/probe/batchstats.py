"""The plan's per-batch quantities, computed from the probe's batch dicts with torch ops where the tensors live.

A batch dict (what ``OfflineEntropyProbe`` builds for E and U)::

    sequences        [B, G, T] long    prompt and response tokens, padded
    attention_masks  [B, G, T]         nonzero on real tokens (prompt and response), 0 on padding
    prompt_lens      [B]               the padded prompt width: the column each response starts at
    gen_lens         [B, G]            optional: generated tokens per response (the probe's BatchedSequences)
    max_lengths      [B]               optional: the longest response per prompt
    advantages       [B, G]            optional
    rewards          [B, G]            optional (the E batch has none)
    _debug_info      {prompt_texts [B], response_texts [B][G] or [B*G], dataset_indices [B]}   optional

Per sequence (row ``n = b * G + g``) the prompt and response spans are found by ``asynclog.probe.spans`` (left- or
right-padded prompts, EOS used as padding, ``gen_lens`` when given), never assumed.

Device work is batched: every statistic is reduced on the device, stacked, and read back with one
``tolist()``; per-sequence columns are read back one chunk of rows at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from asynclog.errors import LogInputError
from asynclog.probe.spans import find_spans

__all__ = [
    "PERCENTILES",
    "SEQUENCE_FIELDS",
    "BatchView",
    "batch_statistics",
    "sequence_extras",
    "as_float_tensor",
    "RowSource",
    "Vocabulary",
]

PERCENTILES = (10, 25, 50, 75, 90)

# What the ``sequences`` argument of ``DetailedLogger.log_batch_data`` may hold (all optional).
SEQUENCE_FIELDS = {
    "sequence_logprob": "[B, G] float: S, the summed log-prob of the response",
    "rb_entropy": "[B, G] float: the response's summed Rao-Blackwellised entropy",
    "importance_weight": "[B, G] float: exp(S_upd - S_orig), when known",
    "token_logprobs": "[B, G, T_gen] float (padded) or [B][G] ragged: per-token log-probs of the response",
    "token_entropies": "[B, G, T_gen] float (padded) or [B][G] ragged: per-token RB entropies",
    "response_texts": "[B][G] str: decoded responses",
    "gen_lens": "[B][G] int: generated tokens per response (BatchedSequences.gen_lens), when the batch has none",
    "rewards": "[B][G] float: rewards (LogprobResults.rewards), when the batch has none",
}
# Attribute names of the probe's own result objects (BatchedSequences, LogprobResults) that mean the same.
_ALIASES = {
    "sequence_logprobs": "sequence_logprob",
    "logprobs": "token_logprobs",
    "rb_entropies": "token_entropies",
    "responses_text": "response_texts",
}


def as_float_tensor(value: Any, device, what: str) -> torch.Tensor:
    """A tensor (left where it is) or a nested list of numbers (put on ``device``) as a float tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.is_floating_point() else value.detach().float()
    try:
        return torch.as_tensor(value, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LogInputError(f"{what} must be a tensor or a nested list of numbers: {exc}") from None


class BatchView:
    """The batch dict checked once: shapes agree, spans and lengths derived on the device.

    ``extras``: the ``sequences`` argument (``sequence_extras``); its ``gen_lens`` and ``rewards`` serve
    when the batch has none. ``notes``: what was ambiguous or contradictory in the batch
    (``asynclog.probe.spans``), for the probe's logger.
    """

    def __init__(self, batch: Mapping, batch_type: str, extras: Mapping | None = None):
        if not isinstance(batch, Mapping):
            raise LogInputError(f"{batch_type}: batch must be a mapping, not {type(batch).__name__}")
        self.batch, self.name = batch, batch_type
        self.sequences = self._required("sequences")
        if self.sequences.dim() != 3:
            raise LogInputError(f"{batch_type}: 'sequences' must be [B, G, T], got {list(self.sequences.shape)}")
        self.B, self.G, self.T = self.sequences.shape
        self.N = self.B * self.G
        self.device = self.sequences.device
        self.masks = self._required("attention_masks")
        self._check_shape("attention_masks", self.masks, (self.B, self.G, self.T))
        self.masks = self.masks.reshape(self.B, self.G, self.T)
        self.prompt_lens = self._prompt_lens(batch.get("prompt_lens"))
        extras = extras or {}
        given = batch.get("gen_lens", extras.get("gen_lens"))
        self.spans = find_spans(self.masks, self.prompt_lens, self._counts("gen_lens", given, (self.B, self.G)),
                                self._counts("max_lengths", batch.get("max_lengths"), (self.B,)))
        self.prompt_lengths, self.gen_lengths = self.spans.prompt_lengths, self.spans.gen_lengths  # [B, G]
        self.lengths = self.prompt_lengths + self.gen_lengths  # [B, G] real tokens
        self.notes = self.spans.notes
        self.advantages = self._optional("advantages")
        self.rewards = self._optional("rewards", extras.get("rewards"))

    def _counts(self, key: str, value, shape: tuple) -> torch.Tensor | None:
        """Optional integer lengths (list, nested list or tensor) of ``shape``, on the batch's device."""
        if value is None:
            return None
        try:
            counts = torch.as_tensor(value, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            counts = None
        if counts is None or counts.is_floating_point() or counts.numel() != _prod(shape):
            raise LogInputError(f"{self.name}: {key!r} must be {list(shape)} integers, got {_describe(value)}")
        return counts.long().reshape(shape)

    def _prompt_lens(self, value) -> torch.Tensor:
        try:
            lens = torch.as_tensor(value, device=self.device).long().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            lens = None
        if lens is None or lens.numel() != self.B:
            raise LogInputError(f"{self.name}: 'prompt_lens' must hold {self.B} lengths, got {type(value).__name__}")
        return lens

    def _required(self, key: str) -> torch.Tensor:
        value = self.batch.get(key)
        if not isinstance(value, torch.Tensor):
            raise LogInputError(f"{self.name}: batch[{key!r}] must be a tensor, not {type(value).__name__}")
        return value.detach()

    def _optional(self, key: str, default: Any = None) -> torch.Tensor | None:
        value = self.batch.get(key, default)
        if value is None:
            return None
        tensor = as_float_tensor(value, self.device, f"{self.name}: batch[{key!r}]")
        self._check_shape(key, tensor, (self.B, self.G))
        return tensor.to(self.device)

    def _check_shape(self, key: str, tensor: torch.Tensor, shape: tuple) -> None:
        if tensor.numel() != _prod(shape):
            raise LogInputError(f"{self.name}: {key!r} must be {list(shape)}, got {list(tensor.shape)}")

    def debug_info(self) -> Mapping:
        info = self.batch.get("_debug_info") or {}
        return info if isinstance(info, Mapping) else {}


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {list(shape)}" if shape is not None else type(value).__name__


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _float_dtype(device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def batch_statistics(view: BatchView, aggregates: bool = False) -> dict:
    """Counts, mean lengths, max length, length percentiles, reward and advantage mean and std (n - 1), and the
    user's own logger's keys beside them (``std_*`` with its definition, n; ``min_*``, ``max_*``).

    With ``aggregates`` (a rank of a job of several), also the raw ``aggregates`` these come from, so that
    the statistics of all ranks together can be computed exactly at read time (``shards.merge_batch_statistics``):
    prompt-length count and sum, the histograms of sequence and generation lengths, and per value set
    count, sum, m2 (the sum of squared deviations from its own mean), min and max.

    One host sync: every reduction is stacked into one small tensor read with ``tolist()``.
    """
    dtype = _float_dtype(view.device)
    parts = _reductions(view, dtype, aggregates)
    flat = torch.cat([p.reshape(-1) for p in parts.values()]).tolist()  # the one sync
    stats: dict[str, Any] = {"num_prompts": view.B, "num_sequences": view.N, "G": view.G, "padded_length": view.T}
    at = 0
    for key, tensor in parts.items():
        n = tensor.numel()
        values = flat[at : at + n]
        at += n
        stats[key] = values if tensor.dim() else values[0]
    for key in ("max_sequence_length", "max_generation_length", "min_generation_length"):
        stats[key] = int(stats[key])
    stats["length_percentiles"] = list(PERCENTILES)
    stats["generation_length_percentiles"] = stats["generation_length_distribution"]  # the user's logger's name
    stats["prompt_lens_meaning"], stats["lengths_from"] = view.spans.prompt_lens_meaning, view.spans.lengths_from
    if aggregates:
        raw = {k: stats.pop(k) for k in parts if k.startswith("~")}
        stats["aggregates"] = _aggregates_of(raw, view.B, view.N)
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in stats.items()}


def _reductions(view: BatchView, dtype: torch.dtype, aggregates: bool) -> dict[str, torch.Tensor]:
    """The statistics as tensors; with ``aggregates``, also the raw aggregates under ``~``-prefixed keys
    (unpacked by ``_aggregates_of``), from the same conversions and means."""
    prompts = view.prompt_lengths[:, 0].to(dtype)  # a prompt's G responses share it
    lengths, gens = view.lengths.to(dtype).reshape(-1), view.gen_lengths.to(dtype).reshape(-1)
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=dtype, device=view.device)
    parts = {
        "avg_prompt_length": prompts.mean(),
        "avg_generation_length": gens.mean(),
        "std_generation_length": gens.std(correction=0),
        "min_generation_length": gens.min(),
        "avg_sequence_length": lengths.mean(),
        "max_sequence_length": lengths.max(),
        "max_generation_length": gens.max(),
        "sequence_length_distribution": torch.quantile(lengths, q),
        "generation_length_distribution": torch.quantile(gens, q),
    }
    if aggregates:
        parts["~prompt_length_sum"] = prompts.sum()
        parts.update(_histograms(view, dtype))
    for key, tensor in _value_sets(view):
        flat = tensor.to(dtype).reshape(-1)
        mean = flat.mean()
        std = flat.std() if flat.numel() > 1 else torch.full((), float("nan"), dtype=dtype, device=view.device)
        parts["avg_" + key] = mean
        parts[f"{key}_std"] = std
        parts[f"std_{key}"] = flat.std(correction=0)  # the user's logger's key and definition (np.std)
        parts[f"min_{key}"], parts[f"max_{key}"] = flat.min(), flat.max()
        if aggregates:
            parts[f"~{key}"] = torch.stack([flat.sum(), (flat - mean).square().sum(), flat.min(), flat.max()])
    return parts


def _value_sets(view: BatchView) -> list[tuple[str, torch.Tensor]]:
    return [(key, t) for key, t in (("advantages", view.advantages), ("reward", view.rewards)) if t is not None]


def _histograms(view: BatchView, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Sequence and generation length histograms with a fixed T + 1 bins (a length is 0..T), so building
    them needs no sync: ``bincount`` and ``unique`` would each read the data's size back to the host first."""
    parts = {}
    for key, lengths in (("sequence_length", view.lengths), ("generation_length", view.gen_lengths)):
        flat = lengths.reshape(-1)
        bins = torch.zeros(view.T + 1, dtype=dtype, device=view.device)
        parts[f"~{key}"] = bins.scatter_add_(0, flat.clamp(0, view.T), torch.ones_like(flat, dtype=dtype))
    return parts


def _aggregates_of(raw: dict[str, Any], num_prompts: int, num_sequences: int) -> dict:
    out: dict[str, Any] = {"prompt_length": {"count": num_prompts, "sum": raw.pop("~prompt_length_sum")}}
    for key in ("sequence_length", "generation_length"):
        counts = raw.pop(f"~{key}")
        seen = [length for length, count in enumerate(counts) if count]
        out[key] = {"values": seen, "counts": [int(counts[length]) for length in seen]}
    for key, (total, m2, low, high) in raw.items():
        out[key[1:]] = {"count": num_sequences, "sum": total, "m2": m2, "min": low, "max": high}
    return out


def sequence_extras(sequences: Any, batch_type: str) -> dict:
    """The ``sequences`` argument as a dict of the known fields (``SEQUENCE_FIELDS``).

    A mapping must use those keys (a typo is an error); an object (the probe's ``BatchedSequences`` or
    ``LogprobResults``) is read by attribute, under the field names or their aliases, others ignored.
    """
    if sequences is None:
        return {}
    if isinstance(sequences, Mapping):
        unknown = set(sequences) - set(SEQUENCE_FIELDS) - set(_ALIASES)
        if unknown:
            raise LogInputError(f"{batch_type}: unknown sequences key(s) {sorted(unknown)}; "
                                f"known: {sorted(SEQUENCE_FIELDS)}")
        items = dict(sequences)
    else:
        items = {name: getattr(sequences, name) for name in (*SEQUENCE_FIELDS, *_ALIASES)
                 if getattr(sequences, name, None) is not None}
    return {_ALIASES.get(k, k): v for k, v in items.items() if _has_values(v)}


def _has_values(value: Any) -> bool:
    """False for None and for what the probe leaves empty: ``LogprobResults.rewards == []`` before they are
    filled in, ``rb_entropies`` of empty arrays when RB entropies were not computed."""
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return any(_has_values(item) for item in value)
    size = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", None)
    return size > 0 if isinstance(size, int) else True


# --- rows ---------------------------------------------------------------------------------------------------
class RowSource:
    """Builds the per-sequence and per-token columns of one batch, one chunk of rows at a time.

    Rows are numbered ``n = b * G + g``. Each chunk is a dict of columns for ``Stream.extend`` (tensors
    stay on their device; the stream gathers them once per chunk); per-sequence numbers are reduced on the
    device once and read back one chunk at a time. A batch of any size is never held on the host whole.

    Token rows cover each sequence's response region: from its first response column (``spans.starts``) to
    the end of the padded row; its first ``generation_length`` tokens are the response. ``tokens``,
    ``attention_mask`` and the per-token values (``token_logprobs``, ``rb_entropies``; the j-th generated
    token's value at the region's j-th position) line up position by position; trailing padding has mask 0.
    Token texts are not built here: with a tokenizer, ``token_ids`` gives the ids the rows hold, for the
    run's ``Vocabulary``.
    """

    def __init__(self, view: BatchView, extras: dict, tokenizer=None):
        self.view, self.extras, self.tokenizer = view, extras, tokenizer
        self._scalar_names, self._scalars = self._gather_scalars()
        info = view.debug_info()
        self.prompt_texts = info.get("prompt_texts")
        self.response_texts = info.get("response_texts", extras.get("response_texts"))
        self.dataset_indices = info.get("dataset_indices")
        self.has_text = tokenizer is not None or self.prompt_texts is not None or self.response_texts is not None

    def _gather_scalars(self) -> tuple[list[str], torch.Tensor]:
        view, dtype = self.view, _float_dtype(self.view.device)
        columns = {
            "prompt_length": view.prompt_lengths.reshape(-1),
            "generation_length": view.gen_lengths.reshape(-1),
        }
        if view.rewards is not None:
            columns["reward"] = view.rewards.reshape(-1)
        if view.advantages is not None:
            columns["advantage"] = view.advantages.reshape(-1)
        for key in ("sequence_logprob", "rb_entropy", "importance_weight"):
            if key in self.extras:
                value = as_float_tensor(self.extras[key], view.device, f"{view.name}: sequences[{key!r}]")
                if value.numel() != view.N:
                    raise LogInputError(f"{view.name}: sequences[{key!r}] must be [{view.B}, {view.G}], "
                                        f"got {list(value.shape)}")
                columns[key] = value.reshape(-1).to(view.device)
        stacked = torch.stack([c.to(dtype) for c in columns.values()])
        return list(columns), stacked

    # --- per sequence ------------------------------------------------------------------------------------
    def sequence_columns(self, start: int, stop: int) -> dict[str, list]:
        """Rows ``start:stop`` of the sequence table as columns (see docs/PROBE.md)."""
        G = self.view.G
        ids = range(start, stop)
        values = dict(zip(self._scalar_names, self._scalars[:, start:stop].tolist()))  # one sync per chunk
        columns: dict[str, list] = {"sequence_id": list(ids), "prompt_id": [n // G for n in ids],
                                    "response_id": [n % G for n in ids]}
        if self.dataset_indices is not None:
            columns["dataset_index"] = [_item(self.dataset_indices, n // G) for n in ids]
        if self.has_text:
            tokens = self._host_tokens(start, stop) if self._needs_decoding() else None
            columns["prompt_text"] = [self._prompt_text(n // G, i, tokens) for i, n in enumerate(ids)]
            columns["response_text"] = [self._response_text(n // G, n % G, i, tokens) for i, n in enumerate(ids)]
        for name in ("prompt_length", "generation_length"):
            columns[name] = [int(v) for v in values[name]]
        for name in ("reward", "advantage"):
            columns[name] = [_finite(v) for v in values[name]] if name in values else [None] * len(ids)
        for name in ("sequence_logprob", "rb_entropy", "importance_weight"):
            if name in values:
                columns[name] = [_finite(v) for v in values[name]]
        return columns

    def _needs_decoding(self) -> bool:
        have_texts = self.prompt_texts is not None and self.response_texts is not None
        return self.tokenizer is not None and not have_texts

    def _prompt_text(self, b: int, i: int, tokens) -> str | None:
        if self.prompt_texts is not None:
            return str(_item(self.prompt_texts, b))
        if tokens is None:
            return None
        return _decode(self.tokenizer, tokens[i][0])

    def _response_text(self, b: int, g: int, i: int, tokens) -> str | None:
        texts = self.response_texts
        if texts is not None:
            entry = _item(texts, b)
            if isinstance(entry, (list, tuple)):
                return str(entry[g])
            return str(_item(texts, b * self.view.G + g))
        if tokens is None:
            return None
        return _decode(self.tokenizer, tokens[i][1])

    def _host_tokens(self, start: int, stop: int) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids) of rows ``start:stop``, for decoding: one device-to-host copy."""
        view, spans = self.view, self.view.spans
        seqs = view.sequences.reshape(view.N, view.T)[start:stop].tolist()
        bounds = torch.stack([spans.prompt_first, spans.prompt_lengths, spans.starts, spans.gen_lengths])
        firsts, plens, begins, glens = bounds.reshape(4, view.N)[:, start:stop].tolist()
        return [(row[p0 : p0 + pn], row[r0 : r0 + rn])
                for row, p0, pn, r0, rn in zip(seqs, firsts, plens, begins, glens)]

    # --- per token ---------------------------------------------------------------------------------------
    def token_columns(self, start: int, stop: int) -> tuple[dict, list[int] | None]:
        """(columns, region lengths or None when all equal) of token rows ``start:stop``, for ``Stream.extend``."""
        view = self.view
        seqs = view.sequences.reshape(view.N, view.T)[start:stop]
        masks = view.masks.reshape(view.N, view.T)[start:stop]
        begins = view.spans.starts.reshape(view.N)[start:stop]
        lengths = (view.T - begins).tolist()  # one sync per chunk
        width = max(lengths) if lengths else 0
        where = (begins[:, None] + torch.arange(width, device=view.device)).clamp_max(view.T - 1)
        tokens = seqs.gather(1, where)
        columns = {"sequence_id": list(range(start, stop)), "tokens": tokens,
                   "attention_mask": masks.gather(1, where).to(torch.uint8)}
        for name, column in (("token_logprobs", "token_logprobs"), ("token_entropies", "rb_entropies")):
            if name in self.extras:
                columns[column] = self._per_token(name, start, stop, width)
        # Left-padded prompts (the usual layout) give every row the same region: no ragged cut needed.
        return columns, (None if all(n == width for n in lengths) else lengths)

    def token_ids(self) -> list[int]:
        """The distinct ids the token rows will hold (their regions), ascending, found for the whole batch at
        once on its device: the run's ``vocab`` gets them before the rows, so a log cut between the two still
        has the texts of every row it holds."""
        view = self.view
        inside = torch.arange(view.T, device=view.device) >= view.spans.starts.reshape(view.N, 1)
        return _distinct_ids(torch.where(inside, view.sequences.reshape(view.N, view.T), -1))

    def _per_token(self, name: str, start: int, stop: int, width: int) -> torch.Tensor:
        """Rows ``start:stop`` of a padded [B, G, T_gen] or ragged [B][G] field, as [rows, width]."""
        value, view = self.extras[name], self.view
        if isinstance(value, torch.Tensor):
            if value.dim() != 3 or tuple(value.shape[:2]) != (view.B, view.G):
                raise LogInputError(f"{view.name}: sequences[{name!r}] must be [B, G, T_gen], got {list(value.shape)}")
            rows = value.detach().reshape(view.N, -1)[start:stop]
        else:
            ragged = [_host_vector(value[n // view.G][n % view.G]) for n in range(start, stop)]
            rows = torch.nn.utils.rnn.pad_sequence(ragged, batch_first=True)
        if rows.shape[1] >= width:
            return rows[:, :width]
        return torch.nn.functional.pad(rows, (0, width - rows.shape[1]))


def _host_vector(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).cpu()
    return torch.as_tensor(value, dtype=torch.float32).reshape(-1)


def _item(values, index: int):
    value = values[index]
    return value.item() if isinstance(value, torch.Tensor) else value


def _finite(value: float) -> float | None:
    return None if value != value else value  # NaN -> None; msgpack and JSON agree on null


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


def _distinct_ids(tokens: torch.Tensor) -> list[int]:
    """The distinct ids in ``tokens`` (-1 for none), ascending: a mark per id up to the largest, on the
    tokens' device with two syncs (the largest id, the marked ones), several times cheaper than
    ``torch.unique``'s sort. CPU tensors go through numpy, which runs it on this thread alone: torch's
    intra-op threads cost more than the work whenever the writer process holds the other cores. Ids past
    any vocabulary (a stray fill value) fall back to the sort rather than a mark array of that size."""
    flat = tokens.reshape(-1)
    if flat.numel() == 0:
        return []
    if int(flat.max()) > _MAX_MARKED_ID:
        ids = torch.unique(flat)
        return ids[ids >= 0].tolist()
    if flat.device.type == "cpu":
        import numpy as np

        ids = flat.numpy()
        seen = np.zeros(max(int(ids.max()), -1) + 2, dtype=bool)
        seen[np.maximum(ids, -1) + 1] = True  # seen[0] takes the -1s (and any negative id)
        return np.flatnonzero(seen[1:]).tolist()
    seen = torch.zeros(max(int(flat.max()), -1) + 2, dtype=torch.bool, device=flat.device)
    seen[flat.clamp_min(-1) + 1] = True
    return seen[1:].nonzero().reshape(-1).tolist()


_MAX_MARKED_ID = 1 << 24  # a 16 MiB mark array; vocabularies are ~10^5


class Vocabulary:
    """The texts of the token ids a logger logs, for each run's ``vocab`` table (docs/PROBE.md).

    An id is decoded once per logger (``_token_texts``), so the runs of a sweep share the work; each run
    stores an id once (``start_run`` begins a run's table). Not thread-safe, as the logger is not.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}  # every id decoded so far
        self.stored: set[int] = set()  # the ids the open run's table holds

    def start_run(self) -> None:
        self.stored = set()

    def use(self, tokenizer) -> None:
        """Decode with ``tokenizer`` from now on (a probe may set its tokenizer after building the logger)."""
        if tokenizer is not self.tokenizer:
            self.tokenizer, self.texts = tokenizer, {}

    def new_entries(self, ids: list[int]) -> tuple[list[int], list[str]]:
        """The ids of ``ids`` the open run has not stored, and their texts; they count as stored from now on."""
        new = [i for i in ids if i not in self.stored]
        missing = [i for i in new if i not in self.texts]
        if missing:
            self.texts.update(zip(missing, _token_texts(self.tokenizer, missing)))
        self.stored.update(new)
        return new, list(map(self.texts.__getitem__, new))


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    batch_decode = getattr(tokenizer, "batch_decode", None)
    if batch_decode is not None:
        return list(batch_decode([[i] for i in ids]))
    return [tokenizer.decode([i]) for i in ids]
