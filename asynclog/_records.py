"""Encoding what the probe logs: records and plain values, as msgpack, with errors that name the culprit.

Everything a record holds must also be valid JSON for ``asynclog cat``: mapping keys are str, and the few
non-msgpack types a probe passes (small tensors and arrays, paths) become plain values. Used by runs for
events and by streams for plain-value columns, so both accept exactly the same values.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from asynclog.errors import LogInputError

__all__ = ["SMALL_TENSOR_ITEMS", "encode_value", "encode_record"]

SMALL_TENSOR_ITEMS = 64  # tensors and arrays up to this many elements may appear inside a record


def _enc_hook(obj: Any) -> Any:
    """Turn the few non-msgpack types a probe passes into plain values; refuse the rest clearly."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.device.type == "meta":
            raise TypeError(f"a {obj.layout} tensor on {obj.device} cannot be logged")
        if obj.numel() > SMALL_TENSOR_ITEMS:
            raise TypeError(f"a tensor of {obj.numel()} elements is too large for an event field; use run.tensor")
        return obj.detach().cpu().tolist()
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, (numpy.generic, numpy.ndarray)):
        if getattr(obj, "size", 1) > SMALL_TENSOR_ITEMS:
            raise TypeError("an array this large is too large for an event field; use run.tensor")
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot log a value of type {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def encode_value(value: Any, what: str) -> bytes:
    """Encode one value for the log, or raise LogInputError naming ``what`` was wrong."""
    try:
        _check_keys(value)
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise LogInputError(f"{what}: {exc}") from None
    except RecursionError:
        raise LogInputError(f"{what}: the value is cyclic or nested too deeply") from None


def encode_record(record: dict, fields: dict) -> bytes:
    """Encode a record whose own keys are str and whose ``fields`` came in as keyword arguments (str keys):
    only field values that are not plain scalars need their keys checked."""
    try:
        if not _SCALARS.issuperset(map(type, fields.values())):
            _check_keys(fields)
        return _encoder.encode(record)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise LogInputError(f"cannot log {record['type']} {record['name']!r}: {exc}") from None
    except RecursionError:
        raise LogInputError(f"cannot log {record['type']} {record['name']!r}: a value is cyclic or nested "
                            f"too deeply") from None


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})  # nothing inside them to check


def _check_keys(value: Any) -> None:
    """Mapping keys must be str everywhere, so every record is also valid JSON for ``asynclog cat``.

    Subclasses count (an OrderedDict, a defaultdict, a namedtuple): the encoder writes them as maps and arrays.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be str, found {key!r}")
            if type(item) not in _SCALARS:
                _check_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if type(item) not in _SCALARS:
                _check_keys(item)
