"""Headless Chromium for the report's tests: the DOM a page renders, and a screenshot's pixels.

``chromium`` (Debian's package; ``.ci/run`` installs it) loads a file in a fresh profile of its own, so tests
running side by side never share one. ``dom`` parses what ``--dump-dom`` prints into a small tree; ``pixels``
decodes a PNG with zlib alone; ``Page`` clicks and types in a page over the DevTools protocol.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from urllib.parse import quote

_NAMES = ("chromium", "chromium-browser", "google-chrome")
_TIMEOUT_S = 120


def chromium() -> str | None:
    return next((found for found in map(shutil.which, _NAMES) if found), None)


def _run(args: list[str], path: str, fragment: str) -> subprocess.CompletedProcess:
    url = "file://" + quote(os.path.abspath(path)) + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory(prefix="asynclog-chromium-") as profile:
        done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--no-first-run", f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(path: str, fragment: str = "") -> str:
    """The page's DOM once it has loaded and its script has run, as HTML."""
    return _run(["--dump-dom"], path, fragment).stdout


def screenshot(path: str, png: str, fragment: str = "", size: tuple[int, int] = (1000, 750)) -> str:
    _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}"], path, fragment)
    return png


# --- the DOM as a tree -------------------------------------------------------------------------------------------
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children, self.parts = tag, attrs, parent, [], []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    @property
    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text for c in self.children)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> list["Node"]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
                and (id is None or n.attrs.get("id") == id)]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.at = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.at)
        self.at.children.append(node)
        if tag not in _VOID:
            self.at = node

    def handle_endtag(self, tag):
        at = self.at
        while at is not None and at.tag != tag:
            at = at.parent
        if at is not None and at.parent is not None:
            self.at = at.parent

    def handle_data(self, data):
        self.at.parts.append(data)


def dom(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    return builder.root


# --- a PNG's pixels ----------------------------------------------------------------------------------------------
def pixels(path: str) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of an 8-bit RGB or RGBA PNG, unfiltered (the PNG spec, section 9)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks, at = {}, 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.setdefault(kind, []).append(data[at + 8:at + 8 + length])
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6), f"{path}: depth {depth}, colour type {colour}"
    step = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks[b"IDAT"])), width * step
    rows, previous = [], bytes(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind, line, previous, step)
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, up: bytes, step: int) -> None:
    if kind == 2:
        line[:] = bytes((a + b) & 255 for a, b in zip(line, up))
        return
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up[i]) // 2) & 255
        elif kind == 4:
            corner = up[i - step] if i >= step else 0
            p = left + up[i] - corner
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner)) & 255


def colours(path: str) -> set[bytes]:
    """The distinct pixel values of a PNG (RGB or RGBA)."""
    width, _, rows = pixels(path)
    step = len(rows[0]) // width
    return {row[i:i + step] for row in rows for i in range(0, len(row), step)}


# --- a page to act on, over the DevTools protocol ------------------------------------------------------------------
class Page:
    """A page in headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    Chromium reads commands on its fd 3 and answers on fd 4, each message JSON ended by a NUL byte), so a test
    can click and type as a reader does and read the result. Use as a context manager."""

    def __init__(self, path: str, size: tuple[int, int] = (1000, 750)):
        import json

        self._json, self._ids, self._buffer = json, 0, b""
        ours_to_chrome, chrome_in = os.pipe()
        chrome_out, ours_from_chrome = os.pipe()
        self._profile = tempfile.TemporaryDirectory(prefix="asynclog-chromium-")
        # Chromium must find the pipe ends at fds 3 and 4: the child moves them there (through fds no pipe end
        # can hold, so neither overwrites the other) before the fds it is not given are closed.
        def place_fds():
            reads, writes = os.dup(ours_to_chrome), os.dup(ours_from_chrome)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self._process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={self._profile.name}", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=place_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(ours_to_chrome)
        os.close(ours_from_chrome)
        self._send_fd, self._read_fd = chrome_in, chrome_out
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        # Page.navigate answers once the page is committed; its script may still be running: wait for load.
        self._call("Page.navigate", {"url": "file://" + quote(os.path.abspath(path))}, self._session)
        self.evaluate("new Promise(done => document.readyState === 'complete' ? done() : "
                      "addEventListener('load', () => done()))")

    def _call(self, method: str, params: dict, session: str | None = None) -> dict:
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, self._json.dumps(message).encode() + b"\0")
        while True:
            answer = self._json.loads(self._message())
            if answer.get("id") == self._ids:
                assert "error" not in answer, answer["error"]
                return answer["result"]

    def _message(self) -> bytes:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read_fd, 1 << 16)
            assert chunk, "chromium closed its DevTools pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return message

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self._call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                 "returnByValue": True}, self._session)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A mouse click in the middle of the first element ``selector`` finds, as a reader's."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({self._json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self._call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                    "clickCount": 1}, self._session)

    def type(self, text: str) -> None:
        """Type ``text`` into the focused element, as a keyboard does."""
        self._call("Input.insertText", {"text": text}, self._session)

    def close(self) -> None:
        os.close(self._send_fd)
        os.close(self._read_fd)
        self._process.kill()
        self._process.wait(timeout=_TIMEOUT_S)
        self._profile.cleanup()

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
