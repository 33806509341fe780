"""The probe's results as the tools show them: which values of a run's summary become columns of ``ls``,
``sweep``, ``scan``, the plots and the dataset, and where in the summary each is read.

The tools are generic; this is the one place that names the entropy probe's quantities for them.
"""

from __future__ import annotations

__all__ = ["RESULTS", "result_values"]

# column: the places in ``_summary.json`` it is read from, the first one present wins
RESULTS = {
    "deltaH1": (("core_results", "deltaH1"),),
    "deltaH_true": (("ground_truth", "deltaH_true"), ("core_results", "deltaH_true")),
    "ESS": (("ground_truth", "diagnostics", "ESS"),),
    "w_max": (("ground_truth", "diagnostics", "w_max"),),
    "bars_dot": (("core_results", "bars_dot"),),
    "learning_rate": (("core_results", "learning_rate"),),
    "total_time": (("timing", "total_time"),),
}


def result_values(summary: dict) -> dict:
    """Each of ``RESULTS``'s columns as ``summary`` holds it (None where it holds none)."""
    return {column: next((v for v in (_get(summary, path) for path in places) if v is not None), None)
            for column, places in RESULTS.items()}


def _get(mapping, path: tuple[str, ...]):
    for key in path:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping
