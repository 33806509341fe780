"""``asynclog report``: one self-contained HTML page of a run or a sweep, checked in a real browser.

The logs are real: a demo sweep at level debug (sequences and tokens streams), and runs written here through
``asynclog.start`` where a test needs texts of its own. The page is loaded by headless Chromium (skipped where
it is absent, with the reason); its DOM is read after the page's script has run, with the view asked for in
the address's fragment (``#sort=weight&order=desc``, as a reader may share a view), and a screenshot is
decoded and checked to be more than one colour. ``ASYNCLOG_SCREENSHOT_TO=docs/images/report.png`` keeps the
screenshot of a run's report (the one in docs/REPORT.md).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import quote

import pytest
import torch

import asynclog
import browser
from asynclog.tools import report
from asynclog.tools import report_data
from asynclog.tools import report_html
from asynclog.cli import main as cli_main

needs_chromium = pytest.mark.skipif(browser.chromium() is None,
                                    reason="needs headless Chromium (Debian: apt-get install chromium; .ci/run does)")
HOSTILE = "</script><img src=x onerror=\"document.title='owned'\"><!--"
B_E, B_U, G = 16, 4, 4  # the tiny demo's batches


@pytest.fixture(scope="module")
def sweep(debug_sweep):
    return debug_sweep


@pytest.fixture(scope="module")
def run(sweep):
    return sorted(glob.glob(str(sweep / "*" / "*.alog")))[0]


@pytest.fixture(scope="module")
def run_page(run, tmp_path_factory):
    return report.write_report(run, str(tmp_path_factory.mktemp("page") / "run.html"))


def cli(*args: str) -> subprocess.CompletedProcess:
    """The console script in a process of its own."""
    return subprocess.run([sys.executable, "-m", "asynclog", "report", *args], capture_output=True, text=True,
                          timeout=120)


def here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same command in this process (torch is imported once per session, not once per call)."""
    status = cli_main(["report", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def embedded(path: str) -> dict:
    """The page's data block, as the page's script reads it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"<script type='application/json' id='asynclog-data'>(.*?)</script>", text, re.S)
    return json.loads(found.group(1))


# --- the file --------------------------------------------------------------------------------------------------
def test_a_run_report_is_one_file_that_needs_no_network(run, tmp_path):
    out = tmp_path / "r.html"
    done = cli(run, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=|<link|@import|url\(", text, re.I)  # nothing fetched, nothing linked
    assert "step_000" in text and "<style>" in text
    data = embedded(str(out))
    assert [b["name"] for b in data["batches"]] == ["E_batch", "U_batch"]
    assert [b["total"] for b in data["batches"]] == [B_E, B_U * G]


def test_tokens_carry_entropies_and_log_probs_of_the_log(run):
    with asynclog.open(run) as log:
        batch = report_data.read_batch(log, "E_batch")
        row = next(log.rows("tokens/E_batch"))
    first = batch.sequences[0]
    real = row["attention_mask"].bool()
    assert len(first["tokens"]) == int(real.sum())
    assert first["entropies"] == [report_data.rounded(v, 3) for v in row["rb_entropies"][real].tolist()]
    assert first["logprobs"] == [report_data.rounded(v, 3) for v in row["token_logprobs"][real].tolist()]
    assert all(isinstance(s["weight"], float) for s in batch.sequences)  # from importance/E_batch


def test_hostile_text_stays_inside_the_data_block():
    text = report.embed_json({"texts": [HOSTILE, "a & b > c", "\u2028"]})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"texts": [HOSTILE, "a & b > c", "\u2028"]}


def test_a_sweep_cell_without_a_finite_number_sorts_with_the_missing_ones():
    html = report_html.sweep_table([{"checkpoint": "a", "deltaH1": float("nan"), "ESS": float("inf")},
                                    {"checkpoint": "b", "deltaH1": 0.5, "ESS": None}])
    cells = re.findall(r"<td data-v='([^']*)'>", html)
    keys = [key for key, _ in report_html.SWEEP_COLUMNS]
    assert [cells[keys.index("deltaH1")], cells[keys.index("ESS")]] == ["", ""]
    assert cells[len(keys) + keys.index("deltaH1")] == "0.5"


def test_a_batch_over_the_limit_keeps_extremes_and_whole_prompts(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert here(capsys, run, "-o", str(out), "--max-sequences", "8").returncode == 0
    e, u = embedded(str(out))["batches"]
    assert len(e["sequences"]) == 8 and e["note"].startswith("the 1 highest and lowest by importance weight")
    weights = sorted(s["weight"] for s in report_data.read_batch(asynclog.open(run), "E_batch").sequences)
    kept = {s["weight"] for s in e["sequences"]}
    assert weights[0] in kept and weights[-1] in kept  # the extremes are kept
    assert u["note"] == "whole prompts, evenly spread over the batch"
    assert len(u["sequences"]) == 8 and {len([s for s in u["sequences"] if s["prompt"] == p])
                                         for p in {s["prompt"] for s in u["sequences"]}} == {G}  # whole prompts


def test_a_run_cut_short_still_gives_a_report(run, tmp_path, capsys):
    cut = tmp_path / "cut.alog"
    with open(run, "rb") as f:
        data = f.read()
    cut.write_bytes(data[: len(data) * 2 // 3])  # what a killed writer leaves: no footer, a torn last frame
    out = tmp_path / "cut.html"
    done = here(capsys, str(cut), "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert "incomplete" in text


def test_a_file_that_is_no_log_gives_a_page_that_says_so(tmp_path, capsys):
    bad = tmp_path / "bad.alog"
    bad.write_bytes(b"not a log" * 100)
    done = here(capsys, str(bad), "-o", str(tmp_path / "bad.html"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "bad.html").read_text(encoding="utf-8")
    assert "class='status damaged'" in text and "its frames cannot be read: not an asynclog file" in text


def test_a_run_folder_of_ranks_reports_every_ranks_sequences(tmp_path, capsys):
    for rank in range(2):
        with asynclog.start(tmp_path, name="job", rank=rank, world_size=2) as run:
            run.stream("sequences/E_batch").append(sequence_id=0, prompt_text=f"rank {rank}", generation_length=2)
            run.stream("tokens/E_batch").append(sequence_id=0, tokens=torch.tensor([5, 6]), token_texts=["a", "b"],
                                                rb_entropies=torch.tensor([1.0, 2.0 + rank]))
    out = tmp_path / "job.html"
    done = here(capsys, str(tmp_path / "job"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    [batch] = embedded(str(out))["batches"]
    assert [(s["rank"], s["id"], s["prompt_text"], s["entropies"]) for s in batch["sequences"]] == [
        (0, 0, "rank 0", [1.0, 2.0]), (1, 0, "rank 1", [1.0, 3.0])]


def test_mistakes_are_one_line_with_the_documented_status(tmp_path, capsys):
    missing = here(capsys, str(tmp_path / "nope.alog"), "-o", str(tmp_path / "r.html"))
    empty = here(capsys, str(tmp_path), "-o", str(tmp_path / "r.html"))
    zero = here(capsys, str(tmp_path), "-o", str(tmp_path / "r.html"), "--max-sequences", "0")
    assert (missing.returncode, empty.returncode, zero.returncode) == (4, 3, 3)
    for done in (missing, empty, zero):
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "no runs" in empty.stderr and not os.path.exists(tmp_path / "r.html")


# --- in a browser ------------------------------------------------------------------------------------------------
@needs_chromium
def test_the_browser_shows_every_sequence_with_coloured_tokens(run_page):
    page = browser.dom(browser.dump_dom(run_page))
    sequences = page.find("div", "seq")
    assert len(sequences) == B_E
    tokens = page.find("span", "t")
    assert len(tokens) >= B_E and all(t.attrs["title"].startswith("entropy ") for t in tokens)
    backgrounds = {t.attrs["style"] for t in tokens}
    assert len(backgrounds) > 5 and all(b.startswith("background: rgb(") for b in backgrounds)  # not transparent
    assert "All 16 sequences" in page.find(id="note")[0].text
    assert page.find("div", "asynclog-card") and "step_000" in page.find("div", "asynclog-card")[0].text


@needs_chromium
def test_the_page_says_which_sequences_it_kept(run, tmp_path):
    out = report.write_report(run, str(tmp_path / "cut.html"), limit=8)
    note = browser.dom(browser.dump_dom(out)).find(id="note")[0].text
    assert note.startswith("Shown: 8 of 16 sequences, the 1 highest and lowest by importance weight")
    assert note.endswith("(a report keeps at most 8 sequences a batch: asynclog report --max-sequences).")


@needs_chromium
def test_sorting_orders_the_sequences(run_page, full):
    views = [(key, order) for key in ("weight", "entropy", "length") for order in ("desc", "asc")]
    for key, order in views if full else [("weight", "desc"), ("entropy", "asc")]:  # a browser start each
        reverse = order == "desc"
        page = browser.dom(browser.dump_dom(run_page, f"sort={key}&order={order}"))
        values = [float(s.attrs[f"data-{key}"]) for s in page.find("div", "seq")]
        assert len(values) == B_E and values == sorted(values, reverse=reverse)


@needs_chromium
def test_u_batch_shows_each_prompts_responses_side_by_side(run_page):
    page = browser.dom(browser.dump_dom(run_page, "batch=U_batch&sort=reward&order=desc"))
    groups = page.find("div", "group")
    assert len(groups) == B_U
    means = []
    for group in groups:
        [side] = group.find("div", "responses")
        responses = [c for c in side.children if "seq" in c.classes]
        assert len(responses) == G and f"repeat({G}" in side.attrs["style"]
        means.append(sum(float(r.attrs["data-reward"]) for r in responses) / G)
    assert means == sorted(means, reverse=True)


@needs_chromium
def test_search_keeps_the_sequences_whose_text_matches(run_page, run):
    with asynclog.open(run) as log:
        rows = list(log.rows("sequences/E_batch"))
    target = rows[3]["prompt_text"]  # prompts are drawn with replacement: others may share it
    expected = {r["sequence_id"] for r in rows
                if target.lower() in (r["prompt_text"] + "\n" + r["response_text"]).lower()}
    page = browser.dom(browser.dump_dom(run_page, f"q={quote(target)}"))
    shown = page.find("div", "seq")
    assert {int(s.attrs["data-id"]) for s in shown} == expected and 3 in expected and len(expected) < B_E
    assert "matching" in page.find(id="pageinfo")[0].text


@needs_chromium
def test_the_sweep_table_sorts_by_a_column(sweep, tmp_path):
    out = report.write_report(str(sweep), str(tmp_path / "sweep.html"))
    for order, reverse in (("desc", True), ("asc", False)):
        page = browser.dom(browser.dump_dom(out, f"sweep=deltaH1&sweep_order={order}"))
        [table] = page.find("table", "sweep")
        heads = [th.attrs["data-key"] for th in table.find("th")]
        column = heads.index("deltaH1")
        values = [float(tr.find("td")[column].attrs["data-v"]) for tr in table.find("tbody")[0].children]
        assert len(values) == 2 and values == sorted(values, reverse=reverse)
    assert len(page.find("svg", "chart")) == 4  # δH₁ and δH_true, δH₁ against δH_true, ESS, time


@needs_chromium
def test_clicking_a_header_sorts_the_sweep_table(sweep, tmp_path):
    out = report.write_report(str(sweep), str(tmp_path / "sweep.html"))
    column = "[...document.querySelectorAll('table.sweep tbody tr')].map(r => +r.cells[{}].dataset.v)"
    with browser.Page(out) as page:
        where = page.evaluate("[...document.querySelectorAll('table.sweep th')].findIndex(t => t.dataset.key == 'ESS')")
        for reverse in (False, True):  # the first click sorts ascending, the next one descending
            page.click("th[data-key='ESS']")
            values = page.evaluate(column.format(where))
            assert len(values) == 2 and values == sorted(values, reverse=reverse)
            assert page.evaluate(f"document.querySelectorAll('table.sweep th')[{where}].getAttribute('aria-sort')") \
                == ("descending" if reverse else "ascending")


@needs_chromium
def test_typing_a_search_and_clicking_the_toggle_change_the_view(run_page, run):
    with asynclog.open(run) as log:
        rows = list(log.rows("sequences/E_batch"))
    target = rows[5]["prompt_text"]
    expected = {r["sequence_id"] for r in rows
                if target.lower() in (r["prompt_text"] + "\n" + r["response_text"]).lower()}
    shown = "[...document.querySelectorAll('#list .seq')].map(s => +s.dataset.id)"
    colours = "[...document.querySelectorAll('#list .t')].map(t => t.style.background)"
    with browser.Page(run_page) as page:
        by_entropy = page.evaluate(colours)
        page.click("button[data-mode='logprob']")
        assert page.evaluate(colours) != by_entropy and "log-prob" in page.evaluate(
            "document.getElementById('legend-what').textContent")
        page.click("#search")
        page.type(target)
        assert set(page.evaluate(shown)) == expected


@needs_chromium
def test_hostile_token_and_prompt_texts_render_as_text(tmp_path):
    path = tmp_path / "hostile.alog"
    with asynclog.start(path=path) as run:
        run.stream("sequences/E_batch").append(sequence_id=0, prompt_text=HOSTILE, response_text=HOSTILE)
        run.stream("tokens/E_batch").append(sequence_id=0, tokens=torch.tensor([5, 6]), token_texts=[HOSTILE, "ok"],
                                            rb_entropies=torch.tensor([1.0, 2.0]))
    out = report.write_report(str(path), str(tmp_path / "hostile.html"))
    page = browser.dom(browser.dump_dom(out))
    assert not page.find("img") and page.find("title")[0].text != "owned"
    assert len(page.find("script")) == 2  # the data block and the page's script, nothing injected
    assert [t.text for t in page.find("span", "t")] == [HOSTILE, "ok"]
    assert page.find("div", "prompt")[0].text == HOSTILE


@needs_chromium
def test_the_screenshot_of_a_run_report_is_not_blank(run_page, tmp_path):
    png = browser.screenshot(run_page, str(tmp_path / "report.png"))
    width, height, _ = browser.pixels(png)
    assert (width, height) == (1000, 750)
    assert len(browser.colours(png)) > 20  # text, coloured tokens and the card, not one colour
    keep = os.environ.get("ASYNCLOG_SCREENSHOT_TO")
    if keep:
        shutil.copyfile(png, keep)
