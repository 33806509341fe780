"""``asynclog report RUN|DIR -o report.html``: one self-contained HTML page of a run or a sweep, and the views
``Log``, ``ShardedLog`` and ``sweep_table`` show in Jupyter.

The page needs no server and no network: its styles (``report.css``), its script (``report.js``) and its data
are inline, so a report copied from a cluster's scratch disk to a laptop opens as it did there. Its parts:

    <style>            report.css
    summary card       a run: ``asynclog show``'s content (report_html.summary_card)
    charts, table      a folder: δH₁ against δH_true, ESS and time per checkpoint; the sweep table, sortable
    sequence browser   a run: filled by the script from the data block, a page at a time
    <script type="application/json" id="asynclog-data">   the sequences (report_data), as JSON
    <script>           report.js

Any text in a log may be hostile: in the data block every ``<``, ``>`` and ``&`` is written as a JSON escape
(``\\u003c``...), so no token text can close the script element or open a comment; the script sets texts only
as ``textContent``. A page holds at most ``limit`` sequences a batch (``report_data.MAX_SEQUENCES``) and
says on the page how it chose them; the browser draws 50 sequences (10 prompts) at a time.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from importlib import resources

from asynclog import __version__
from asynclog._files import atomic_write
from asynclog._ondisk import is_run_folder
from asynclog._shards import open_log
from asynclog.errors import CorruptLogError, ExportError
from asynclog.tools.analysis import logged_problems, read_run, rows_below, sort_rows, warnings_for
from asynclog.tools.report_data import MAX_SEQUENCES, Batch, batches_of, read_batch
from asynclog.tools.report_html import summary_card, sweep_charts, sweep_table, tokens_html

__all__ = ["report", "write_report", "run_report", "sweep_report", "embed_json", "run_card", "sequence_view",
           "SequenceView", "sweep_view", "SweepTable"]

_esc = html.escape
_PAGE_CSS = ("body { margin: 16px 24px; } header h1 { font-size: 20px; margin: 0; } header p { color: #667; "
             "margin: 2px 0 10px; } .controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; "
             "margin: 8px 0; } .controls .on { background: #1f6fb4; color: white; } #note { color: #92400e; } "
             ".legend span.bar { display: inline-block; width: 120px; height: 10px; vertical-align: middle; "
             "background: linear-gradient(to right, hsl(55,85%,94%), hsl(0,85%,60%)); }")


def _asset(name: str) -> str:
    return resources.files("asynclog.tools").joinpath(name).read_text(encoding="utf-8")


def embed_json(data) -> str:
    """``data`` as JSON text that is safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&``
    are written as JSON escapes, so the text can hold neither ``</script`` nor ``<!--``; U+2028 and U+2029
    too, for older JavaScript parsers."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def _page(title: str, target: str, body: str, data: dict) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{_PAGE_CSS}{_asset('report.css')}</style></head>"
            f"<body class='asynclog-report'><header><h1>{_esc(title)}</h1>"
            f"<p>{_esc(target)} · made {made} by asynclog {__version__}</p></header>{body}"
            f"<script type='application/json' id='asynclog-data'>{embed_json(data)}</script>"
            f"<script>{_asset('report.js')}</script></body></html>")


# --- a run -----------------------------------------------------------------------------------------------------
_BROWSER = """<section id='sequences'><h2>Sequences</h2>
<div class='controls'><label>batch <select id='batch'></select></label>
<span>colour by <button data-mode='entropy'>entropy</button><button data-mode='logprob'>log-prob</button></span>
<label>sort by <select id='sort'><option value='id'>sequence order</option><option value='weight'>importance weight
</option><option value='entropy'>entropy</option><option value='length'>length</option><option value='reward'>reward
</option></select></label><button id='order'>descending</button>
<label>search <input id='search' type='search' placeholder='text in prompt or response'></label></div>
<p class='legend'><span id='legend-what'></span> <span id='legend-low'></span> <span class='bar'></span>
<span id='legend-high'></span> · hover a token for its entropy and log-prob</p>
<p id='note'></p><div id='list'></div>
<p class='pager'><button id='prev'>previous</button> <span id='pageinfo'></span> <button id='next'>next</button></p>
<noscript>The sequence browser needs JavaScript; the summary above does not.</noscript></section>"""


def _facts(path: str):
    facts = read_run(path)
    return facts, warnings_for(facts) + logged_problems(path)


def _batches(path: str, limit: int) -> tuple[list[Batch], str | None]:
    """The run's batches, or none and why its frames could not be read."""
    try:
        with open_log(path) as log:
            return [read_batch(log, name, limit) for name in batches_of(log)], None
    except (CorruptLogError, OSError) as exc:
        return [], f"its frames cannot be read: {getattr(exc, 'strerror', None) or exc}"


def run_report(path: str, limit: int = MAX_SEQUENCES) -> str:
    """The page of one run (a .alog file or a run folder of ranks)."""
    facts, warnings = _facts(path)
    batches, why = _batches(path, limit)
    if batches:
        browser = _BROWSER
    else:
        browser = (f"<section id='sequences'><h2>Sequences</h2><p>none in this run: "
                   f"{_esc(why or 'it logged no sequences or tokens streams (levels detailed and debug do)')}"
                   "</p></section>")
    name = os.path.basename(path.rstrip(os.sep))
    return _page(f"asynclog report: {name}", path, summary_card(facts, warnings) + browser,
                 {"limit": limit, "batches": [b.as_json() for b in batches]})


# --- a folder of runs ----------------------------------------------------------------------------------------------
def sweep_report(directory: str) -> str:
    """The page of a sweep: the runs below ``directory``, charted per checkpoint and tabled."""
    rows = rows_below(directory)
    if not rows:
        raise ExportError(f"no runs (.alog files) below {directory}")
    body = (f"<section><h2>Per checkpoint</h2>{sweep_charts(_by_checkpoint(rows))}</section>"
            f"<section><h2>Runs ({len(rows)})</h2><p>click a header to sort</p>{sweep_table(rows)}</section>")
    return _page(f"asynclog report: {os.path.basename(os.path.abspath(directory))}", directory, body,
                 {"batches": []})


def _by_checkpoint(rows: list[dict]) -> list[dict]:
    return sort_rows(rows, "checkpoint")


def report(target: str, limit: int = MAX_SEQUENCES) -> str:
    """The page of ``target``: a sweep for a folder of runs, else one run."""
    if not os.path.exists(target):
        raise FileNotFoundError(2, "no such file or folder", target)
    if os.path.isdir(target) and not is_run_folder(target):
        return sweep_report(target)
    return run_report(target, limit)


def write_report(target: str, out: str, limit: int = MAX_SEQUENCES) -> str:
    """Write the page of ``target`` to ``out`` (whole or not at all); return ``out``."""
    atomic_write(out, report(target, limit))
    return out


# --- notebooks -----------------------------------------------------------------------------------------------------
def _styled(fragment: str) -> str:
    return f"<div class='asynclog-report'><style>{_asset('report.css')}</style>{fragment}</div>"


def run_card(log) -> str:
    """A ``Log`` or ``ShardedLog`` as Jupyter shows it: the run's summary card."""
    facts, warnings = _facts(log.path)
    return _styled(summary_card(facts, warnings))


class SequenceView:
    """At most ``limit`` sequences of a batch with coloured tokens (``mode``: ``entropy`` or ``logprob``), chosen
    as a report chooses them (``report_data.read_batch``: all of a small batch; else the extremes and a spread,
    or whole prompts) and said so; Jupyter shows it as HTML."""

    def __init__(self, log, batch: str = "E_batch", limit: int = 20, mode: str = "entropy"):
        if mode not in ("entropy", "logprob"):
            raise ValueError(f"mode {mode!r}: use 'entropy' or 'logprob'")
        if batch not in batches_of(log):
            raise KeyError(f"no sequences or tokens of {batch!r} in {log.path}; it has: "
                           f"{', '.join(batches_of(log)) or 'none'}")
        self.batch, self.mode = read_batch(log, batch, limit), mode

    def _repr_html_(self) -> str:
        b = self.batch
        how = f": {_esc(b.note)}" if b.note else ""
        head = (f"<p><b>{_esc(b.name)}</b>: {len(b.sequences)} of {b.total} sequences{how}, coloured by "
                f"{self.mode}</p>")
        return _styled(head + tokens_html(b.sequences, b.texts, self.mode))


def sequence_view(log, batch: str = "E_batch", limit: int = 20, mode: str = "entropy") -> SequenceView:
    """``SequenceView(log, batch, limit, mode)``: in a notebook, ``sequence_view(log)`` as a cell's last line."""
    return SequenceView(log, batch, limit, mode)


class SweepTable(list):
    """The rows ``asynclog sweep`` prints (a list of dicts), shown in Jupyter as charts and a table."""

    def _repr_html_(self) -> str:
        return _styled(sweep_charts(_by_checkpoint(list(self))) + sweep_table(list(self)))


def sweep_view(directory: str | os.PathLike) -> SweepTable:
    """The runs below ``directory`` as a ``SweepTable``."""
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{os.fspath(directory)!r} is not a directory")
    return SweepTable(rows_below(directory))
