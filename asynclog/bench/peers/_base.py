"""The adapter contract every peer follows: open, the three kinds of call, close.

The harness (``asynclog.bench.workloads``) times each call from outside, so an adapter does only what a
user of that tool would write: no timing, no fsync, no cleanup. Whatever a user would have to do to get the
data into the tool (``tolist()``, building a histogram) happens inside the call, because it is a cost the
user pays only for logging.
"""

from __future__ import annotations

__all__ = ["Adapter"]


class Adapter:
    """One peer driven through its own documented API. Subclasses override what they support.

    ``requires`` names the modules the peer needs; when one is missing the peer is reported missing.
    ``how`` maps each workload it runs to how it runs it ("native", "tolist JSON", "lossy histogram");
    ``not_applicable`` maps the rest to the reason. The runner prints both in the table.
    """

    name = "peer"
    requires: tuple[str, ...] = ()
    how: dict[str, str] = {}
    not_applicable: dict[str, str] = {}

    def open(self, directory: str, workload: str) -> None:
        """Create whatever the tool needs to write under ``directory`` (its only output place)."""

    def event(self, name: str, fields: dict) -> None:
        """One record of ~10 scalar fields."""
        raise NotImplementedError

    def row(self, sequence_id: int, tokens, logprobs, entropies) -> None:
        """One sequence of the token stream: int64 ids, float32 log-probs and entropies (CPU tensors)."""
        raise NotImplementedError

    def tensor(self, name: str, tensor) -> None:
        """One float32 tensor snapshot; the caller reuses the tensor's memory after the call returns."""
        raise NotImplementedError

    def close(self) -> None:
        """Everything the tool needs before the process could exit with its data written."""

    def stats(self) -> dict:
        """Extra figures the tool reports about itself (asynclog's own accounting); empty by default."""
        return {}
