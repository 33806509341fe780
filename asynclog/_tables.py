"""Run data as tables, for the reader's views and every export: values made plain, a stream of one kind and
batch, and a tokens chunk laid out one row per token.

It imports nothing of the reader or of the tools that export (``Log.sequences`` and ``Log.tokens`` use it; so do
``export`` and ``dataset``), so the reading side and the writing side of the tools share it without a cycle.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

import msgspec

from asynclog.errors import ExportError

__all__ = ["need", "is_tensor", "to_numpy", "plain", "event_row", "groups", "shards_of", "arrow_batch", "stream_of",
           "sequences", "tokens", "per_token", "STREAM_KINDS", "EVENT_BATCH"]

STREAM_KINDS = ("sequences", "tokens", "importance")
EVENT_BATCH = 4096
_json = msgspec.json.Encoder()


def need(module: str, extra: str):
    """Import an optional dependency, or an ImportError naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module.split('.')[0]}: pip install 'asynclog[{extra}]' "
                          f"(in a checkout: bash scripts/setup.sh --extras {extra})") from None


# --- values --------------------------------------------------------------------------------------------
def is_tensor(value) -> bool:
    return type(value).__name__ == "Tensor" and hasattr(value, "dtype")


def to_numpy(tensor):
    """A CPU numpy array of a tensor; dtypes numpy lacks (bfloat16, float8) become float32."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:
        pass
    try:
        return tensor.float().numpy() if tensor.is_floating_point() else tensor.long().numpy()
    except (RuntimeError, NotImplementedError):
        raise _unconvertible(tensor) from None


def _unconvertible(tensor) -> ExportError:
    """Bits, sub-byte and quantized dtypes (torch.bits8, uint4, qint8) round-trip as tensors, but torch gives
    no numbers of them: neither ``tolist`` nor a conversion."""
    return ExportError(f"a tensor of {tensor.dtype} holds no values torch converts to numbers")


def plain(value):
    """A value JSON can hold: tensors as lists, NaN and ±inf as strings, maps and lists walked. ExportError for
    a value nested deeper than Python's stack allows a walk (the reader decodes deeper than two frames a level)."""
    try:
        return _plain(value)
    except RecursionError:
        raise ExportError("a value nests too deeply to be written as JSON") from None


def _plain(value):
    if is_tensor(value):
        try:
            value = value.tolist()
        except RuntimeError:
            raise _unconvertible(value) from None
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- rows and batches ------------------------------------------------------------------------------------
def event_row(record: dict) -> dict:
    """A record as a row: ``type``, ``name``, ``time``, ``data`` as JSON text, and ``rank`` when the record
    came from a run folder of ranks (a column of its own, so queries need not parse ``data`` for it)."""
    rest = {k: v for k, v in record.items() if k not in ("type", "name", "time", "rank")}
    data = rest["data"] if rest.keys() == {"data"} else rest
    row = {"type": record.get("type"), "name": record.get("name"), "time": record.get("time"),
           "data": _json.encode(plain(data)).decode()}
    return row if "rank" not in record else {**row, "rank": record["rank"]}


def groups(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while group := list(itertools.islice(it, size)):
        yield group


def shards_of(log) -> list[tuple[int | None, object]]:
    """``(rank, Log)`` for each shard of a run folder of ranks; ``[(None, log)]`` for one file."""
    return sorted(log.shards.items()) if hasattr(log, "shards") else [(None, log)]


def _arrow_column(values: list):
    pa = need("pyarrow", "export")
    import numpy as np

    if not values or not all(is_tensor(v) for v in values):
        return pa.array(values)
    arrays = [to_numpy(v) for v in values]
    if all(a.ndim == 0 for a in arrays):
        return pa.array(np.stack(arrays))
    flat = [a.reshape(-1) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])])
    list_type = pa.LargeListArray if offsets[-1] >= 2**31 else pa.ListArray
    return list_type.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat)))


def arrow_batch(columns: dict):
    """Columns as one Arrow batch: a numpy array as it is, a list of values through ``_arrow_column``;
    ExportError naming a column Arrow cannot hold as one type (numbers and text mixed)."""
    import numpy as np

    pa = need("pyarrow", "export")
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values) if isinstance(values, np.ndarray) else _arrow_column(list(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ExportError(f"column {name!r}: {str(exc).splitlines()[0]}") from None
    return pa.RecordBatch.from_pydict(arrays)


# --- views of a run ----------------------------------------------------------------------------------------
def stream_of(log, kind: str, batch: str) -> str:
    name = f"{kind}/{batch}"
    if name not in log.stream_names():
        raise KeyError(f"no stream {name!r} in {log.path}; it has: {', '.join(log.stream_names()) or 'none'}")
    return name


def sequences(log, batch: str = "E_batch"):
    """``sequences/<batch>`` as a pandas DataFrame, one row per sequence (``Log.sequences``)."""
    need("pandas", "pandas")
    return log.to_pandas(stream_of(log, "sequences", batch))


def tokens(log, batch: str = "E_batch"):
    """``tokens/<batch>`` as a pandas DataFrame, one row per token: ``sequence_id``, ``position`` (within the
    row) and each per-token column (``tokens``, ``attention_mask``, ``token_texts``, ``token_logprobs``,
    ``rb_entropies``) as a plain column (``Log.tokens``). A per-token column shorter than the row's tokens is
    aligned to its last tokens, NaN (None for text) before (``per_token``)."""
    pd = need("pandas", "pandas")
    frames = [pd.DataFrame(per_token(chunk.columns)) for chunk in log.stream(stream_of(log, "tokens", batch))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def per_token(columns: dict) -> dict:
    """A tokens chunk's columns as one row per token: a per-sequence column (a value per row) repeated for each
    of the row's tokens, a per-token column (a list or 1-d tensor per row) laid out back to back, and
    ``position`` within the row beside ``sequence_id``.

    A row's tokens are as many as its ``tokens`` has (as its longest per-token column without one). A
    per-token column with fewer values in a row is aligned to the row's last tokens, and the first positions
    are null (a masked array): log-probabilities of L - 1 tokens score tokens 1 .. L - 1, as a causal LM
    gives them, and values of the response only score the tokens after the prompt. ExportError for what no
    table of one row per token holds: a column with more values than the row has tokens, rows of more than
    one dimension, numbers and text mixed in one column.
    """
    import numpy as np

    ragged = [n for n, v in columns.items() if v and _per_token_values(v[0])]
    if not ragged:
        return dict(columns)
    sizes = {name: np.array([_row_length(name, v) for v in columns[name]], dtype=np.int64) for name in ragged}
    lengths = sizes["tokens"] if "tokens" in sizes else np.max(list(sizes.values()), axis=0)
    out = {}
    for name, values in columns.items():
        if name not in ragged:
            out[name] = np.repeat(_per_sequence(name, values), lengths)
            if name == "sequence_id":
                starts = np.cumsum(lengths) - lengths
                out["position"] = np.arange(lengths.sum()) - np.repeat(starts, lengths)
        elif np.array_equal(sizes[name], lengths):
            out[name] = _flat(values)
        else:
            out[name] = _aligned_to_the_end(name, values, sizes[name], lengths)
    return out


def _per_token_values(value) -> bool:
    return isinstance(value, list) or (is_tensor(value) and value.dim() > 0)


def _row_length(name: str, value) -> int:
    if is_tensor(value) and value.dim() > 1:
        raise ExportError(f"column {name!r} has rows of shape {tuple(value.shape)}: a table of one row per "
                          "token holds one value per token")
    return len(value)


def _per_sequence(name: str, values: list):
    """A column of one value per row as a numpy array; numbers and text mixed would all become text."""
    import numpy as np

    array = np.asarray([v.item() if is_tensor(v) else v for v in values])
    if array.dtype.kind == "U" and not all(isinstance(v, str) for v in values):
        raise ExportError(f"column {name!r} mixes text and other values in one chunk")
    return array


def _aligned_to_the_end(name: str, values: list, sizes, lengths):
    """A per-token column with fewer values than some rows have tokens, each row's values at its last
    positions and the others masked (null)."""
    import numpy as np

    if (sizes > lengths).any():
        row = int(np.argmax(sizes > lengths))
        raise ExportError(f"column {name!r} has {sizes[row]} values in a row of {lengths[row]} tokens")
    flat = _flat(values)
    starts = np.cumsum(lengths) - lengths + (lengths - sizes)  # where each row's values begin
    where = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
    data = np.zeros(int(lengths.sum()), dtype=flat.dtype) if flat.dtype != object else np.full(
        int(lengths.sum()), None, dtype=object)
    mask = np.ones(len(data), dtype=bool)
    data[where], mask[where] = flat, False
    return np.ma.masked_array(data, mask=mask)


def _flat(values: list):
    """A ragged column's rows back to back as one numpy array, each row flattened. Tensor rows are joined
    by torch in one call and converted once: per row, the conversion cost more than the copy."""
    import numpy as np

    if values and all(is_tensor(v) for v in values):
        import torch

        try:  # rows of one trailing shape join as they are: flattened whole, the same values in the same order
            joined = torch.cat(values)
        except RuntimeError:  # 0-d rows, or trailing shapes that differ
            joined = torch.cat([v.reshape(-1) for v in values])
        return to_numpy(joined.reshape(-1))
    parts = [to_numpy(v).reshape(-1) if is_tensor(v) else np.asarray(v, dtype=object) for v in values]
    return np.concatenate(parts) if parts else []
