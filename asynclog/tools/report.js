// The report's script: sorts the sweep table, and draws the sequence browser from the JSON block
// (id "asynclog-data") a page at a time. Texts from the log are only ever set as textContent, never as HTML.
// The address's fragment sets the view on load, so a view can be shared and a test can drive it:
//   #batch=U_batch&sort=reward&order=asc&mode=logprob&q=text&page=2&sweep=ESS&sweep_order=desc
(function () {
  "use strict";
  var PAGE = 50, PROMPTS_PAGE = 10;
  var SCORES = ["weight", "entropy", "length", "reward"];
  var dataNode = document.getElementById("asynclog-data");
  var data = dataNode ? JSON.parse(dataNode.textContent) : {batches: []};
  var state = {batch: 0, mode: "entropy", sort: "id", desc: false, query: "", page: 0};

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function shown(v) {
    if (v === null || v === undefined) return "-";
    return typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v);
  }

  // --- the sweep table ---------------------------------------------------------------------------------------
  function sortSweep(key, desc) {
    var table = document.querySelector("table.sweep");
    if (!table) return;
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var col = heads.findIndex(function (th) { return th.dataset.key === key; });
    if (col < 0) return;
    var numeric = heads[col].hasAttribute("data-num");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === "" || y === "") return (x === "") - (y === "");  // rows without a value last, either way
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, {numeric: true});
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads.forEach(function (th, i) {
      th.removeAttribute("aria-sort");
      if (i === col) th.setAttribute("aria-sort", desc ? "descending" : "ascending");
    });
  }
  function wireSweep() {
    var table = document.querySelector("table.sweep");
    if (!table) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        sortSweep(th.dataset.key, th.getAttribute("aria-sort") === "ascending");
      });
    });
  }

  // --- the sequence browser ----------------------------------------------------------------------------------
  var scales = {};
  function scale(batch, field) {  // the 2nd to 98th percentile, as report_html.scale computes it
    var key = batch.name + "/" + field;
    if (scales[key]) return scales[key];
    var all = [];
    batch.sequences.forEach(function (s) { (s[field] || []).forEach(function (v) { if (v !== null) all.push(v); }); });
    all.sort(function (a, b) { return a - b; });
    var at = function (q) { return all[Math.floor(q * (all.length - 1))]; };
    var found = all.length ? [at(0.02), at(0.98)] : [0, 1];
    if (!(found[1] > found[0])) found = [found[0], found[0] + 1];
    return (scales[key] = found);
  }
  function colour(v, range, hotIsLow) {
    if (v === null || v === undefined) return "transparent";
    var t = Math.min(1, Math.max(0, (v - range[0]) / (range[1] - range[0])));
    if (hotIsLow) t = 1 - t;
    return "hsl(" + Math.round(55 - 55 * t) + ",85%," + Math.round(94 - 34 * t) + "%)";
  }
  function haystack(batch, s) {
    if (s._hay === undefined) {
      var words = (s.tokens || []).map(function (t) { return batch.texts[t]; }).join(" ");
      s._hay = [s.prompt_text || "", s.response_text || "", words].join("\n").toLowerCase();
    }
    return s._hay;
  }
  function items(batch) {  // sequences, or for a U batch its prompts with their responses
    var q = state.query.toLowerCase();
    var found = [];
    if (!batch.grouped) {
      batch.sequences.forEach(function (s) {
        if (!q || haystack(batch, s).indexOf(q) >= 0) found.push({first: s, members: [s]});
      });
    } else {
      var byPrompt = {};
      batch.sequences.forEach(function (s) {
        var key = s.rank + "/" + s.prompt;
        if (!byPrompt[key]) found.push(byPrompt[key] = {first: s, members: []});
        byPrompt[key].members.push(s);
      });
      if (q) {
        found = found.filter(function (g) {
          return g.members.some(function (s) { return haystack(batch, s).indexOf(q) >= 0; });
        });
      }
    }
    return sortItems(found);
  }
  function score(item, key) {  // a prompt's score is its responses' mean
    var values = item.members.map(function (s) { return s[key]; })
      .filter(function (v) { return v !== null && v !== undefined; });
    if (!values.length) return null;
    return values.reduce(function (a, b) { return a + b; }, 0) / values.length;
  }
  function sortItems(found) {
    if (state.sort === "id") return found;
    found.forEach(function (it) { it.key = score(it, state.sort); });
    return found.sort(function (a, b) {
      if (a.key === null || b.key === null) return (a.key === null) - (b.key === null);
      return state.desc ? b.key - a.key : a.key - b.key;
    });
  }
  function drawSequence(batch, s, range) {
    var box = el("div", "seq");
    box.dataset.id = s.id;
    SCORES.forEach(function (k) { if (s[k] !== null && s[k] !== undefined) box.dataset[k] = s[k]; });
    var meta = el("div", "meta", "#" + s.id + (s.rank !== null && s.rank !== undefined ? " rank " + s.rank : ""));
    SCORES.forEach(function (k) {
      if (s[k] !== null && s[k] !== undefined) meta.appendChild(el("span", "score", k + " " + shown(s[k])));
    });
    box.appendChild(meta);
    if (!batch.grouped) box.appendChild(el("div", "prompt", s.prompt_text || ""));
    var response = el("div", "response");
    var field = state.mode === "entropy" ? "entropies" : "logprobs";
    if (s.tokens) {
      s.tokens.forEach(function (t, i) {
        var span = el("span", "t", batch.texts[t]);
        var v = s[field] ? s[field][i] : null;
        span.style.background = colour(v, range, state.mode === "logprob");
        span.title = "entropy " + shown(s.entropies ? s.entropies[i] : null) +
          " · log-prob " + shown(s.logprobs ? s.logprobs[i] : null);
        response.appendChild(span);
      });
    } else {
      response.textContent = s.response_text || "";
    }
    box.appendChild(response);
    return box;
  }
  function draw() {
    var list = document.getElementById("list");
    if (!list) return;
    var batch = data.batches[state.batch];
    list.textContent = "";
    if (!batch) return;
    var found = items(batch);
    var size = batch.grouped ? PROMPTS_PAGE : PAGE;
    var pages = Math.max(1, Math.ceil(found.length / size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var range = scale(batch, state.mode === "entropy" ? "entropies" : "logprobs");
    found.slice(state.page * size, (state.page + 1) * size).forEach(function (it) {
      if (!batch.grouped) { list.appendChild(drawSequence(batch, it.first, range)); return; }
      var group = el("div", "group");
      group.dataset.prompt = it.first.prompt;
      group.appendChild(el("div", "prompt", "prompt " + it.first.prompt + ": " + (it.first.prompt_text || "")));
      var side = el("div", "responses");
      side.style.gridTemplateColumns = "repeat(" + it.members.length + ", minmax(12em, 1fr))";
      it.members.forEach(function (s) { side.appendChild(drawSequence(batch, s, range)); });
      group.appendChild(side);
      list.appendChild(group);
    });
    var what = batch.grouped ? "prompts" : "sequences";
    document.getElementById("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages + " · " +
      found.length + " " + what + (state.query ? " matching" : "");
    document.getElementById("note").textContent = batch.note ? "Shown: " + batch.sequences.length + " of " +
      batch.total + " sequences, " + batch.note + " (a report keeps at most " + data.limit +
      " sequences a batch: asynclog report --max-sequences)." :
      "All " + batch.total + " sequences of the batch are here.";
    document.getElementById("legend-low").textContent = shown(range[0]);
    document.getElementById("legend-high").textContent = shown(range[1]);
    document.getElementById("legend-what").textContent = state.mode === "entropy" ?
      "entropy (high is red)" : "log-prob (low is red)";
    document.querySelectorAll("[data-mode]").forEach(function (b) {
      b.classList.toggle("on", b.dataset.mode === state.mode);
    });
    document.getElementById("sort").value = state.sort;
    document.getElementById("batch").value = state.batch;
    document.getElementById("order").textContent = state.desc ? "descending" : "ascending";
    document.getElementById("order").disabled = state.sort === "id";  // sequence order has no direction
  }
  function wireBrowser() {
    var pick = document.getElementById("batch");
    if (!pick) return;
    data.batches.forEach(function (b, i) {
      var option = el("option", null, b.name + " (" + b.total + ")");
      option.value = i;
      pick.appendChild(option);
    });
    pick.value = state.batch;
    pick.addEventListener("change", function () { state.batch = +pick.value; state.page = 0; draw(); });
    document.querySelectorAll("[data-mode]").forEach(function (b) {
      b.addEventListener("click", function () { state.mode = b.dataset.mode; draw(); });
    });
    document.getElementById("sort").addEventListener("change", function (e) {
      state.sort = e.target.value; state.page = 0; draw();
    });
    document.getElementById("order").addEventListener("click", function () { state.desc = !state.desc; draw(); });
    document.getElementById("search").addEventListener("input", function (e) {
      state.query = e.target.value; state.page = 0; draw();
    });
    document.getElementById("prev").addEventListener("click", function () { state.page -= 1; draw(); });
    document.getElementById("next").addEventListener("click", function () { state.page += 1; draw(); });
  }

  // --- the view the address asks for ------------------------------------------------------------------------
  function fromAddress() {
    var asked = new URLSearchParams(location.hash.replace(/^#/, ""));
    var batch = data.batches.findIndex(function (b) { return b.name === asked.get("batch"); });
    if (batch >= 0) state.batch = batch;
    if (asked.get("mode") === "logprob" || asked.get("mode") === "entropy") state.mode = asked.get("mode");
    if (SCORES.indexOf(asked.get("sort")) >= 0) {
      state.sort = asked.get("sort");
      state.desc = asked.get("order") !== "asc";
    }
    if (asked.get("q")) {
      state.query = asked.get("q");
      var box = document.getElementById("search");
      if (box) box.value = state.query;
    }
    if (asked.get("page")) state.page = (parseInt(asked.get("page"), 10) || 1) - 1;
    if (asked.get("sweep")) sortSweep(asked.get("sweep"), asked.get("sweep_order") === "desc");
  }

  wireSweep();
  wireBrowser();
  fromAddress();
  draw();
  document.body.dataset.renderMs = performance.now().toFixed(0);
  window.asynclogReport = {state: state, draw: draw, sortSweep: sortSweep};
})();
