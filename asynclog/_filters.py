"""Per-frame body filters: raw, zstd, or byte-shuffle then zstd, chosen by compressing a sample.

Float tensors barely compress (1.05-1.2x) and zstd runs at a fraction of disk speed, so compressing them
would make the writer slower than ``torch.save``. Records and token ids shrink 3-6x and are worth it. Rather
than guess from the dtype, ``choose`` compresses a few small slices of the body and keeps compression only
when it saves at least ``1 - 1/min_ratio`` of the bytes.
"""

from __future__ import annotations

import threading

import zstandard

from asynclog._format import Filter

__all__ = ["Codec", "unfilter", "check_body"]

_SAMPLE_SLICE = 16 << 10
_SAMPLE_FROM = 128 << 10  # bodies smaller than this are compressed without sampling


def shuffle(body, itemsize: int) -> bytes:
    """Group byte k of every item together (k = 0..itemsize-1): exponents and sign bytes line up."""
    import numpy as np

    return np.frombuffer(body, np.uint8).reshape(-1, itemsize).T.tobytes()


def unshuffle(data: bytes, itemsize: int) -> bytes:
    import numpy as np

    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


class Codec:
    """Filters and compresses frame bodies; safe to share between threads (one compressor per thread)."""

    def __init__(self, mode: str = "auto", level: int = 3, min_ratio: float = 1.25):
        if mode not in ("auto", "zstd", "raw"):
            raise ValueError(f"compression must be 'auto', 'zstd' or 'raw', not {mode!r}")
        self.mode, self.level, self.min_ratio = mode, level, min_ratio
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def encode(self, body, itemsize: int = 0, shuffle_ok: bool = False) -> tuple[Filter, int, bytes | memoryview]:
        """Return (filter, shuffle item size, stored body) for a body of bytes.

        ``shuffle_ok`` says the body is an array of floats of ``itemsize`` bytes, where shuffling may help.
        """
        n = len(body)
        if self.mode == "raw" or n == 0:
            return Filter.RAW, 0, body
        if self.mode == "zstd" or n < _SAMPLE_FROM:
            return Filter.ZSTD, 0, self._compressor().compress(body)
        filt, ratio = self._choose(body, itemsize if shuffle_ok and itemsize > 1 else 0)
        if ratio < self.min_ratio:
            return Filter.RAW, 0, body
        if filt is Filter.SHUFFLE_ZSTD:
            return filt, itemsize, self._compressor().compress(shuffle(body, itemsize))
        return filt, 0, self._compressor().compress(body)

    def _choose(self, body, itemsize: int) -> tuple[Filter, float]:
        sample = _sample(body, itemsize or 1)
        c = self._compressor()
        best = Filter.ZSTD, len(sample) / len(c.compress(sample))
        if itemsize:
            # Slicing, not shuffle(): the same bytes, without importing numpy (tens of ms) for a sample.
            shuffled = len(sample) / len(c.compress(b"".join(sample[k::itemsize] for k in range(itemsize))))
            if shuffled > best[1]:
                best = Filter.SHUFFLE_ZSTD, shuffled
        return best


def _sample(body, itemsize: int) -> bytes:
    """Three aligned slices from the start, middle and end of the body."""
    view = memoryview(body)
    n = len(view)
    starts = (0, (n // 2) // itemsize * itemsize, (n - _SAMPLE_SLICE) // itemsize * itemsize)
    return b"".join(view[s : s + _SAMPLE_SLICE] for s in starts)


_decompressor = threading.local()
_CHECK_BLOCK = 1 << 20


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_decompressor, "d", None)
    if d is None:
        d = _decompressor.d = zstandard.ZstdDecompressor()
    return d


def _check_filter(filt: Filter, itemsize: int, raw_len: int) -> None:
    if filt is Filter.SHUFFLE_ZSTD and (itemsize < 1 or raw_len % itemsize):
        raise ValueError(f"a shuffle of {itemsize}-byte items cannot give {raw_len} bytes")


def unfilter(filt: Filter, itemsize: int, stored: bytes, raw_len: int) -> bytes:
    """Undo a frame's filter, returning exactly ``raw_len`` bytes; ValueError when the stored body cannot.

    Never holds more than ``raw_len`` bytes of output: zstandard allocates a frame's declared content size
    whatever ``max_output_size`` says, so that size is checked against ``raw_len`` first. The caller bounds
    ``raw_len`` itself.
    """
    _check_filter(filt, itemsize, raw_len)
    if filt is Filter.RAW:
        if len(stored) != raw_len:
            raise ValueError(f"a raw body of {len(stored)} bytes declares {raw_len}")
        return stored
    try:
        declared = zstandard.frame_content_size(stored)
        if declared != raw_len and (declared != -1 or raw_len == 0):  # max_output_size=0 means no limit
            raise ValueError(f"zstd frame holds {declared} bytes, the frame declares {raw_len}")
        raw = _dctx().decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd body does not decompress ({exc})") from None
    if len(raw) != raw_len:
        raise ValueError(f"zstd body gives {len(raw)} bytes, the frame declares {raw_len}")
    return unshuffle(raw, itemsize) if filt is Filter.SHUFFLE_ZSTD else raw


def check_body(filt: Filter, itemsize: int, source, body_len: int, raw_len: int) -> None:
    """Check that a stored body (read from the file object ``source``) gives exactly ``raw_len`` bytes,
    decompressing a block at a time so memory stays small whatever the frame declares; ValueError if not."""
    _check_filter(filt, itemsize, raw_len)
    if filt is Filter.RAW:
        if body_len != raw_len:
            raise ValueError(f"a raw body of {body_len} bytes declares {raw_len}")
        return
    total = 0
    try:
        with _dctx().stream_reader(source, read_size=_CHECK_BLOCK) as reader:
            while block := reader.read(_CHECK_BLOCK):
                total += len(block)
                if total > raw_len:
                    raise ValueError(f"zstd body gives more than the {raw_len} bytes the frame declares")
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd body does not decompress ({exc})") from None
    if total != raw_len:
        raise ValueError(f"zstd body gives {total} bytes, the frame declares {raw_len}")
