"""HTML fragments of the report, built on the server side and shared with the notebook views: a run's summary
card, the sweep table, inline SVG charts per checkpoint, and a static view of coloured tokens.

Every text from a log (paths, names, token texts) goes through ``html.escape``; nothing here runs script, so
a fragment shows the same in a browser, in Jupyter and in a notebook rendered on GitHub.
"""

from __future__ import annotations

import html
import math

from asynclog.tools._table import cell, human_size
from asynclog.tools.analysis import NUMBERS, RunFacts, describe, row

__all__ = ["summary_card", "sweep_table", "sweep_charts", "tokens_html", "colour", "scale", "SWEEP_COLUMNS"]

# The sweep table's columns, as ``asynclog sweep`` prints them, with the headers a person reads.
SWEEP_COLUMNS = (("checkpoint", "checkpoint"), ("date", "date"), ("time", "time"), ("level", "level"),
                 ("status", "status"), ("deltaH1", "δH₁"), ("deltaH_true", "δH_true"), ("ESS", "ESS"),
                 ("w_max", "w_max"), ("bars_dot", "bars_dot"), ("learning_rate", "lr"),
                 ("total_time", "time (s)"), ("logging_fraction", "logging share"), ("dropped", "dropped"),
                 ("path", "path"))
_CARD = (("level", "level"), ("δH₁", "deltaH1"), ("δH_true", "deltaH_true"), ("ESS", "ESS"), ("w_max", "w_max"),
         ("time (s)", "total_time"))
_esc = html.escape


def summary_card(facts: RunFacts, warnings: list[str]) -> str:
    """One run at a glance: checkpoint, status, the headline numbers, and ``asynclog show``'s whole text."""
    r = row(facts)
    numbers = "".join(f"<div><dt>{_esc(label)}</dt><dd>{_esc(cell(r[key]))}</dd></div>" for label, key in _CARD)
    why = f" <span class='why'>{_esc(r['reason'])}</span>" if r["reason"] else ""
    flags = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return (f"<div class='asynclog-card'><h2>{_esc(r['checkpoint'] or '')} "
            f"<span class='status {_esc(r['status'])}'>{_esc(r['status'])}</span>{why}</h2>"
            f"<p class='path'>{_esc(facts.path)} · {_esc(human_size(facts.size) or '')}</p>"
            f"<dl class='numbers'>{numbers}</dl>"
            + (f"<ul class='warnings'>{flags}</ul>" if flags else "")
            + f"<details><summary>everything <code>asynclog show</code> prints</summary>"
              f"<pre>{_esc(describe(facts, warnings))}</pre></details></div>")


# --- many runs -----------------------------------------------------------------------------------------------
def sweep_table(rows: list[dict]) -> str:
    """The runs as a table; each cell keeps its raw value in ``data-v`` and each header its column in
    ``data-key`` (numbers marked ``data-num``), which the page's script sorts by."""
    head = "".join(f"<th data-key='{key}'{' data-num' if key in NUMBERS else ''}>{_esc(label)}</th>"
                   for key, label in SWEEP_COLUMNS)
    body = "".join(_sweep_row(r) for r in rows)
    return f"<table class='sweep'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sweep_row(r: dict) -> str:
    cells = []
    for key, _ in SWEEP_COLUMNS:
        value = r.get(key)
        raw = "" if value is None else repr(value) if isinstance(value, float) else str(value)
        raw = "" if raw in ("nan", "inf", "-inf") else raw  # no order: sorted last, with the missing values
        shown = cell(value)
        if key == "status" and r.get("reason"):
            shown = f"{shown}: {r['reason']}"
        cells.append(f"<td data-v='{_esc(raw)}'>{_esc(shown)}</td>")
    return f"<tr data-path='{_esc(r.get('path') or '')}'>{''.join(cells)}</tr>"


def sweep_charts(rows: list[dict]) -> str:
    """Per checkpoint: δH₁ and δH_true, ESS, and the run's time, as inline SVG line charts; and δH₁ against
    δH_true, one point per run, beside the line where they agree."""
    labels = [r.get("checkpoint") or "?" for r in rows]
    charts = [("δH₁ and δH_true per checkpoint", {"δH₁": "deltaH1", "δH_true": "deltaH_true"}),
              ("ESS per checkpoint", {"ESS": "ESS"}), ("time (s) per checkpoint", {"total time": "total_time"})]
    out = []
    for title, series in charts:
        values = {name: [_finite(r.get(key)) for r in rows] for name, key in series.items()}
        if any(v is not None for vs in values.values() for v in vs):
            out.append(_line_chart(title, labels, values))
    pairs = [(_finite(r.get("deltaH_true")), _finite(r.get("deltaH1")), label) for r, label in zip(rows, labels)]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if pairs:
        out.insert(1, _scatter("δH₁ against δH_true", pairs))
    return f"<div class='charts'>{''.join(out)}</div>" if out else "<p>no numbers to chart in these runs</p>"


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


_W, _H, _LEFT, _PAD = 420, 220, 64, 36
_PALETTE = ("#1f6fb4", "#d9541e", "#2c9c4a")


def _span(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low <= 1e-9 * max(abs(low), abs(high), 1e-300):
        return low - (abs(low) or 1) / 2, high + (abs(high) or 1) / 2
    return low, high


def _frame(title: str, low: float, high: float, y) -> list[str]:
    """The chart's title, axes and the y axis's two ticks."""
    return [f"<text x='{_W / 2}' y='16' class='title'>{_esc(title)}</text>",
            f"<line x1='{_LEFT}' y1='{_H - _PAD}' x2='{_W - _PAD / 2}' y2='{_H - _PAD}' class='axis'/>",
            f"<line x1='{_LEFT}' y1='{_PAD / 2}' x2='{_LEFT}' y2='{_H - _PAD}' class='axis'/>",
            f"<text x='{_LEFT - 4}' y='{y(high) + 4:.1f}' class='tick end'>{high:.4g}</text>",
            f"<text x='{_LEFT - 4}' y='{y(low) + 4:.1f}' class='tick end'>{low:.4g}</text>"]


def _svg(parts: list[str]) -> str:
    return f"<svg class='chart' viewBox='0 0 {_W} {_H}' width='{_W}' height='{_H}' role='img'>{''.join(parts)}</svg>"


def _axis(low: float, high: float, start: float, end: float):
    return lambda v: start + (v - low) / (high - low) * (end - start)


def _line_chart(title: str, labels: list[str], series: dict[str, list]) -> str:
    """An SVG chart of ``series`` over ``labels`` (one point per label); a legend names each series."""
    low, high = _span([v for vs in series.values() for v in vs if v is not None])
    count = len(labels)
    y = _axis(low, high, _H - _PAD, _PAD)

    def x(i: int) -> float:
        return _LEFT + (i + 0.5) * (_W - _LEFT - _PAD / 2) / count

    parts = _frame(title, low, high, y)
    step = max(1, count // 6)
    parts += [f"<text x='{x(i):.1f}' y='{_H - _PAD + 14}' class='tick mid'>{_esc(label[:12])}</text>"
              for i, label in enumerate(labels) if i % step == 0]
    for k, (name, values) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        points = [(x(i), y(v), labels[i], v) for i, v in enumerate(values) if v is not None]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
        parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        parts += [_point(px, py, colour, f"{label}: {name} {v:.4g}") for px, py, label, v in points]
        parts.append(f"<text x='{_W - _PAD / 2}' y='{30 + 13 * k}' class='tick end' fill='{colour}'>"
                     f"{_esc(name)}</text>")
    return _svg(parts)


def _point(x: float, y: float, colour: str, title: str) -> str:
    return f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'><title>{_esc(title)}</title></circle>"


def _scatter(title: str, pairs: list[tuple[float, float, str]]) -> str:
    """Points (x, y, label) on one scale for both axes, with the diagonal y = x."""
    low, high = _span([v for x, y, _ in pairs for v in (x, y)])
    x, y = _axis(low, high, _LEFT, _W - _PAD / 2), _axis(low, high, _H - _PAD, _PAD)
    parts = _frame(title, low, high, y)
    parts += [f"<line x1='{x(low):.1f}' y1='{y(low):.1f}' x2='{x(high):.1f}' y2='{y(high):.1f}' class='diagonal'/>",
              f"<text x='{x(low):.1f}' y='{_H - _PAD + 14}' class='tick mid'>{low:.4g}</text>",
              f"<text x='{x(high):.1f}' y='{_H - _PAD + 14}' class='tick end'>{high:.4g}</text>",
              f"<text x='{_W / 2}' y='{_H - 6}' class='tick mid'>δH_true (x) · δH₁ (y)</text>"]
    parts += [_point(x(a), y(b), _PALETTE[0], f"{label}: δH_true {a:.4g}, δH₁ {b:.4g}") for a, b, label in pairs]
    return _svg(parts)


# --- coloured tokens -----------------------------------------------------------------------------------------------
def scale(values: list) -> tuple[float, float]:
    """The range colours span: the 2nd to the 98th percentile of ``values`` (None skipped), so one outlier
    does not wash the rest out. The page's script computes the same."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return 0.0, 1.0
    low, high = present[int(0.02 * (len(present) - 1))], present[int(0.98 * (len(present) - 1))]
    return (low, high) if high > low else (low, low + 1.0)


def colour(value, low: float, high: float, hot_is_low: bool = False) -> str:
    """A background from pale yellow (cold) to red (hot); high entropy is hot, and a low log-prob is."""
    if value is None:
        return "transparent"
    t = min(1.0, max(0.0, (value - low) / (high - low)))
    t = 1.0 - t if hot_is_low else t
    return f"hsl({55 - 55 * t:.0f},85%,{94 - 34 * t:.0f}%)"


def tokens_html(sequences: list[dict], texts: list[str], mode: str = "entropy") -> str:
    """Each sequence's prompt, then its response tokens coloured by ``mode`` (``entropy`` or ``logprob``), the
    value in each token's title."""
    field = "entropies" if mode == "entropy" else "logprobs"
    low, high = scale([v for s in sequences for v in (s.get(field) or ())])
    out = []
    for s in sequences:
        values = s.get(field) or [None] * len(s.get("tokens") or ())
        spans = "".join(
            f"<span class='t' style='background:{colour(v, low, high, mode == 'logprob')}' "
            f"title='{mode} {cell(v)}'>{_esc(texts[t])}</span>" for t, v in zip(s.get("tokens") or (), values))
        if not spans:
            spans = _esc(s.get("response_text") or "")
        scores = " · ".join(f"{k} {cell(s.get(k))}" for k in ("weight", "entropy", "length", "reward")
                            if s.get(k) is not None)
        out.append(f"<div class='seq' data-id='{_esc(str(s.get('id')))}'><div class='meta'>#{_esc(str(s.get('id')))}"
                   f" {_esc(scores)}</div><div class='prompt'>{_esc(s.get('prompt_text') or '')}</div>"
                   f"<div class='response'>{spans}</div></div>")
    return "".join(out)

