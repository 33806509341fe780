"""Headless Chromium for the report's tests: the DOM a page renders, and a screenshot's pixels.

``chromium`` (Debian's package; ``.ci/run`` installs it) loads a file in a fresh profile of its own, so tests
running side by side never share one. ``dom`` parses what ``--dump-dom`` prints into a small tree; ``pixels``
decodes a PNG with zlib alone.
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
