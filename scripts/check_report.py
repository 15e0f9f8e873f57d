#!/usr/bin/env python
"""Check a ``glfa report`` HTML file in a real headless browser.

Usage::

    python scripts/check_report.py RUN/report.html [--screenshot out.png] [--chromium PATH]

Two checks, and a non-zero exit with one clear line per failure:

1. Self-contained: no reference to anything outside the file. Every ``src``/``href``-like
   attribute must be a ``data:`` URI (or an in-page ``#anchor``), there is no ``<link>``,
   ``<iframe>``, ``@import`` or CSS ``url()`` other than ``data:``, and the text holds no
   ``http://``, ``https://``, ``ftp://`` or ``file://`` address at all.
2. It renders: Chromium (``chromium --headless --disable-gpu --no-sandbox --screenshot``,
   1280 x 2400 window) opens the file from disk and takes a screenshot, which must not be blank
   (the grey-level standard deviation of the screenshot above a threshold, and enough
   non-background pixels).

Chromium is looked up as ``chromium``, ``chromium-browser``, ``google-chrome`` on the PATH (or
``--chromium``); without it the script exits 3 and says so (the tests skip in that case).
Exit status: 0 all good, 1 a check failed, 2 bad arguments, 3 no browser.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data", "action", "background", "cite", "formaction", "xlink:href"}
EXTERNAL_TEXT = re.compile(r"(?:https?|ftp|file):/?/|url\(\s*['\"]?(?!data:)|@import", re.IGNORECASE)
MIN_STD = 8.0  # grey levels: a blank or single-colour page is far below
MIN_INK = 0.02  # fraction of pixels that differ from the page background


class _References(HTMLParser):
    """Collects every attribute that could load something, and the forbidden tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("link", "iframe", "object", "embed", "base"):
            self.problems.append(f"<{tag}> element (loads or points outside the file)")
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value is not None:
                value = value.strip()
                if not (value.startswith("data:") or value.startswith("#")):
                    self.problems.append(f"<{tag} {name}={value[:60]!r}> is not a data: URI")


def external_references(text: str) -> list[str]:
    """Every reference of the HTML ``text`` to something outside it (empty when self-contained)."""
    parser = _References()
    parser.feed(text)
    parser.close()
    problems = parser.problems
    for match in EXTERNAL_TEXT.finditer(text):
        start = max(0, match.start() - 30)
        problems.append(f"external address in the text: ...{text[start:match.end() + 30]!r}...")
    return problems


def find_browser(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, else the first of :data:`BROWSERS` on the PATH."""
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def screenshot(browser: str, page: Path, out: Path, *, width: int = 1280, height: int = 2400,
               timeout: float = 120.0) -> None:
    """Render ``page`` headless into the PNG ``out``; RuntimeError with the browser's output on failure."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
               page.resolve().as_uri()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{browser} exited {result.returncode} without a screenshot: {' | '.join(tail)}")


def blank_reason(png: Path) -> str | None:
    """Why the screenshot looks blank, or None when it shows content."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    values, counts = np.unique(grey.round(), return_counts=True)
    background = values[counts.argmax()]
    ink = float(np.mean(np.abs(grey - background) > 16))
    if grey.std() < MIN_STD:
        return f"the screenshot is blank (grey-level std {grey.std():.1f} < {MIN_STD})"
    if ink < MIN_INK:
        return f"the screenshot is nearly empty ({ink:.1%} of pixels differ from the background, need {MIN_INK:.0%})"
    return None


def check(page: Path, *, browser: str, shot: Path) -> list[str]:
    """Every failure of ``page`` (empty list when it passes)."""
    failures = external_references(page.read_text(encoding="utf-8"))
    try:
        screenshot(browser, page, shot)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return failures + [str(exc)]
    reason = blank_reason(shot)
    return failures + ([reason] if reason else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML file (glfa report RUN writes RUN/report.html)")
    parser.add_argument("--screenshot", type=Path, help="where to keep the screenshot (default: beside the report)")
    parser.add_argument("--chromium", help="the browser executable (default: chromium on the PATH)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: not found", file=sys.stderr)
        return 2
    browser = find_browser(args.chromium)
    if browser is None:
        print(f"no headless browser found (looked for {args.chromium or ', '.join(BROWSERS)}); "
              "install Chromium (apt-get install chromium)", file=sys.stderr)
        return 3
    shot = args.screenshot or args.report.with_suffix(".png")
    failures = check(args.report, browser=browser, shot=shot)
    for failure in failures:
        print(f"{args.report}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{args.report}: self-contained, renders in {Path(browser).name} (screenshot {shot})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
