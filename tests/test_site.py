"""The course website (``site/``, ``make site``): built offline, then read like a visitor.

The site is built once per session, into a temporary folder (the repository is only read),
with the flags ``make site`` uses (warnings are errors). Without a browser:

* every lesson in ``solutions/`` has a page, and every internal link of every page (``href``
  and ``src``, between pages and to ``#anchors``) resolves in the built folder.

In Debian's Chromium driven by Playwright (marker ``browser``; skipped with the reason when
either is missing), over an HTTP server on 127.0.0.1 serving the built folder, with every
request to another host (fonts, MathJax's CDN, the Colab badge image) aborted:

* every lesson page, loaded at a phone's width, shows no console error and makes no failed
  request to 127.0.0.1; it shows its title, its code cells, its stored figures (loaded), its
  checker lines, its Colab badges and the link to the student notebook, its maths as TeX
  (MathJax is blocked), and nothing in its text column passes the screen's edge (code cells
  and tables scroll in their own boxes); the other pages fit a phone too;
* clicking "next" from the landing page reaches every lesson, in order, and every page's
  "previous" link leads back;
* the site's search, used from the landing page, finds a word that occurs in exactly one
  lesson (picked from the notebooks, so it stays true as they change).

Screenshots of the landing page and of one lesson, at desktop and phone widths, are saved
in ``test-output/site/`` (not committed).
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import browser_helpers as bh
import pytest
from test_browser import chromium  # noqa: F401  (fixture: Playwright and Debian's Chromium)

# The site is built once per session and its checks belong together: the whole module runs
# in the browser part of `make test` (tools/test_all.sh), even the tests that need no browser.
pytestmark = pytest.mark.browser

ROOT = bh.ROOT
SITE_SOURCE = ROOT / "site"
SCREENSHOT_DIR = ROOT / "test-output" / "site"
#: As the Makefile's `site` target: warnings are errors, every cross-reference checked.
SPHINX_FLAGS = ["-W", "--keep-going", "-n", "-q", "-b", "html"]
LESSONS = sorted(p.stem for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOT_LESSON = "04_mnist_mlp" if "04_mnist_mlp" in LESSONS else LESSONS[0]
DESKTOP = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}  # a phone held upright, in CSS pixels


def _notebook(name: str) -> dict:
    return json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text())


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- the build

@pytest.fixture(scope="session")
def site_dir(tmp_path_factory, pytestconfig) -> Path:
    """The site built as ``make site`` builds it, into a temporary folder."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[site]'")
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", *SPHINX_FLAGS, "-d", str(out / "doctrees"),
               str(SITE_SOURCE), str(out / "html")]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"the site does not build without warnings ({' '.join(command[2:])}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[site] built in {time.monotonic() - start:.1f} s")
    return out / "html"


def test_every_lesson_has_a_page(site_dir):
    pages = sorted(p.stem for p in (site_dir / "lessons").glob("*.html"))
    assert pages == LESSONS
    for extra in ("index.html", "setup.html", "grading.html", "search.html", "searchindex.js"):
        assert (site_dir / extra).is_file(), f"{extra} is missing from the built site"


# --------------------------------------------------------------------------- internal links

class _Links(html.parser.HTMLParser):
    """Every ``href``/``src`` of a page, and every ``id``/``name`` it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value is None:
                continue
            if key in ("href", "src"):
                self.links.append(value)
            elif key == "id" or (key == "name" and tag == "a"):
                self.anchors.add(value)


def broken_internal_links(folder: Path) -> tuple[list[str], int]:
    """``(problems, links checked)`` for every relative link of every HTML page in ``folder``:
    the file it names must exist (a folder: its index.html) and its ``#anchor`` be defined."""
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            parser = _Links()
            parser.feed(path.read_text(errors="replace"))
            parsed[path] = parser
        return parsed[path]

    problems, checked = [], 0
    pages = [p for p in folder.rglob("*.html") if "_static" not in p.relative_to(folder).parts]
    for page in sorted(pages):  # (_static/ holds the theme's Jinja macros, not pages)
        for link in parse(page).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("//", "javascript:")):
                continue  # another host, mailto:, data: ...
            checked += 1
            where = f"{page.relative_to(folder)}: {link}"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(folder.resolve()) or not target.is_file():
                problems.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html" and \
                    unquote(parts.fragment) not in parse(target).anchors:
                problems.append(f"{where} (no anchor #{parts.fragment} there)")
    return problems, checked


def test_internal_links_resolve(site_dir):
    problems, checked = broken_internal_links(site_dir)
    assert not problems, f"{len(problems)} broken internal link(s):\n" + "\n".join(problems)
    assert checked > 50 * len(LESSONS)  # navigation, figures, scripts and anchors on every page


def test_link_check_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text('<h1 id="top">B</h1><a href="../a.html#x">a</a>')
    (tmp_path / "a.html").write_text(
        '<p id="x"></p><a href="sub/b.html#top">ok</a><a href="sub/b.html#gone">anchor</a>'
        '<img src="missing.png"><a href="https://example.org/">other host</a><a href="#x">ok</a>')
    problems, checked = broken_internal_links(tmp_path)
    assert problems == ["a.html: sub/b.html#gone (no anchor #gone there)",
                        "a.html: missing.png (no such file)"]
    assert checked == 5


# --------------------------------------------------------------------------- the word to search

def _stem(word: str) -> str:
    """Sphinx's English search stems words with the Porter stemmer, in Python and in JS."""
    import snowballstemmer  # a dependency of Sphinx

    return snowballstemmer.stemmer("porter").stemWord(word)


def _all_text(notebook: dict) -> str:
    parts = []
    for cell in notebook["cells"]:
        parts.append(_text(cell.get("source", "")))
        for output in cell.get("outputs", []):
            parts.append(_text(output.get("text", "")))
            parts += [_text(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts).lower()


def word_in_exactly_one_lesson() -> tuple[str, str]:
    """``(word, lesson)``: a word of one lesson's prose that no other page can match.

    Sphinx's search matches stemmed words, and parts of words when a stem is not indexed, so
    the word's stem (a prefix of it) must occur nowhere, not even inside another word, in
    any other lesson (prose, code and outputs) or in the other pages' sources.
    """
    texts = {name: _all_text(_notebook(name)) for name in LESSONS}
    others = "\n".join(p.read_text().lower() for p in [ROOT / "README.md",
                                                         *SITE_SOURCE.glob("*.md")])
    for name in LESSONS:
        prose = " ".join(_text(c["source"]) for c in _notebook(name)["cells"]
                         if c["cell_type"] == "markdown")
        for word in sorted(set(re.findall(r"(?<![\w`/.-])[a-z]{8,}(?![\w`/.-])", prose))):
            stem = _stem(word)
            if word.startswith(stem) and stem not in others and \
                    [n for n, text in texts.items() if stem in text] == [name]:
                return word, name
    raise AssertionError("no word of the lessons' prose occurs in exactly one lesson")


# --------------------------------------------------------------------------- the browser

@pytest.fixture(scope="session")
def site_url(site_dir) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) serving the built site."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(chromium):  # noqa: F811  (the fixture imported from test_browser)
    playwright, executable = chromium
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=bh.CHROMIUM_FLAGS)
    try:
        yield browser
    finally:
        browser.close()


class Visit:
    """A browser context in which only 127.0.0.1 is reached; it records what went wrong."""

    def __init__(self, browser, base: str, viewport: dict) -> None:
        self.base = base
        self.blocked: list[str] = []
        self.problems: list[str] = []
        self.context = browser.new_context(viewport=viewport)
        self.context.route(lambda url: not url.startswith(base), self._abort)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def _abort(self, route):
        self.blocked.append(route.request.url)
        route.abort()

    def _console(self, message):
        if message.type != "error":
            return
        source = (message.location or {}).get("url", "")
        if message.text.startswith("Failed to load resource") and source in self.blocked:
            return  # a request to another host, aborted on purpose
        self.problems.append(f"console error: {message.text} ({source})")

    def _failed(self, request):
        if request.url.startswith(self.base):
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response):
        if response.url.startswith(self.base) and response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def open(self, url: str):
        self.page.goto(url, wait_until="load")
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, site_url) -> Iterator:
    """``visit(viewport=DESKTOP)``: a fresh :class:`Visit`; closed at the end of the test."""
    opened: list[Visit] = []

    def make(viewport: dict = DESKTOP) -> Visit:
        opened.append(Visit(browser, site_url, viewport))
        return opened[-1]

    yield make
    for v in opened:
        with contextlib.suppress(Exception):
            v.close()


def _title(notebook: dict) -> str:
    """The H1 of the title cell as the page shows it (Markdown code marks removed)."""
    first = _text(notebook["cells"][0]["source"]).splitlines()[0]
    return re.sub(r"[`*]", "", first.removeprefix("# ")).strip()


def _checker_lines(notebook: dict) -> list[str]:
    found = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if output.get("name") == "stdout":
                found += [line for line in _text(output.get("text", "")).splitlines()
                          if re.match(r"^(PASSED|FAILED|NOT ATTEMPTED) ", line)]
    return found


_READ_LESSON = """() => {
  const article = document.querySelector('article.bd-article');
  const h1 = article.querySelector('h1');
  const images = [...article.querySelectorAll('.cell_output img')];
  return {
    h1: h1 ? h1.textContent.replace(/[#¶]\\s*$/, '').trim() : null,
    code: [...article.querySelectorAll('.cell .cell_input pre')].map(p => p.textContent),
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    text: article.innerText,
    links: [...article.querySelectorAll('a[href]')].map(a => a.href),
    prev: (document.querySelector('a.left-prev') || {}).href || null,
    next: (document.querySelector('a.right-next') || {}).href || null,
  };
}"""


# Text sticking out of the screen: an element past its right edge that is not inside a
# box of its own that scrolls sideways (a code cell, a table) and fits the screen.
_WIDTHS = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const box = article.getBoundingClientRect();
  const edge = window.innerWidth + 1;
  const inScrollBox = e => {
    for (let p = e.parentElement; p && p !== article.parentElement; p = p.parentElement) {
      if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(p).overflowX)
          && p.getBoundingClientRect().right <= edge) return true;
    }
    return false;
  };
  const wide = [...article.querySelectorAll('*')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > edge && !inScrollBox(e);
  }).map(e => (e.textContent || e.tagName).trim().slice(0, 50));
  return {view: window.innerWidth, page: document.documentElement.scrollWidth,
          left: box.left, right: box.right, wide: wide.slice(0, 3), count: wide.length};
}"""


def phone_width_problems(page) -> list[str]:
    """Why the page shown is not readable at its (phone) width: it scrolls sideways, or the
    text column or some text in it (outside code cells and tables) passes the screen's edge."""
    w = page.evaluate(_WIDTHS)
    if w["page"] > w["view"] or w["left"] < 0 or w["right"] > w["view"] + 1 or w["count"]:
        return [f"at {w['view']} px wide the page is {w['page']} px wide, its text column "
                f"{w['left']:.0f}-{w['right']:.0f} px, {w['count']} elements past the edge, "
                f"e.g. {w['wide']}"]
    return []


def _inline_maths(notebook: dict) -> str | None:
    """The first ``$...$`` of the lesson's prose that uses a TeX command, if any."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            found = re.search(r"(?<![$\\])\$([^$\n]*\\[a-zA-Z][^$\n]*)\$", _text(cell["source"]))
            if found:
                return found.group(1)
    return None


@pytest.mark.browser
@pytest.mark.parametrize("name", LESSONS)
def test_lesson_page_shows_the_stored_lesson_and_fits_a_phone(name, visit, site_url):
    """Loaded at a phone's width, with every other host blocked (MathJax, fonts, badges)."""
    notebook = _notebook(name)
    v = visit(PHONE)
    page = v.open(urljoin(site_url, f"lessons/{name}.html"))
    shown = page.evaluate(_READ_LESSON)
    problems = list(v.problems) + phone_width_problems(page)
    if shown["h1"] != _title(notebook):
        problems.append(f"title {shown['h1']!r}, expected {_title(notebook)!r}")
    code = [_text(c["source"]).strip() for c in notebook["cells"]
            if c["cell_type"] == "code" and _text(c["source"]).strip()]
    if [c.strip() for c in shown["code"]] != code:
        problems.append(f"{len(shown['code'])} code cells shown, the notebook has {len(code)} "
                        "(or their text differs)")
    figures = sum("image/png" in o.get("data", {}) for c in notebook["cells"]
                  for o in c.get("outputs", []))
    if figures and not (shown["images"] >= figures and shown["loaded"] == shown["images"]):
        problems.append(f"{figures} stored figures; the page has {shown['images']} images, "
                        f"{shown['loaded']} loaded")
    missing = [line for line in _checker_lines(notebook) if line not in shown["text"]]
    if missing:
        problems.append(f"checker lines not shown: {missing}")
    colab = "https://colab.research.google.com/github/"
    for wanted in (f"solutions/{name}.ipynb", f"course/{name}.ipynb"):
        if not any(h.startswith(colab) and h.endswith(f"/{wanted}") for h in shown["links"]):
            problems.append(f"no Open in Colab link to {wanted}")
    if not any(h.startswith("https://github.com/") and h.endswith(f"/course/{name}.ipynb")
               for h in shown["links"]):
        problems.append("no link to the student notebook on GitHub")
    maths = _inline_maths(notebook)
    if maths and maths not in shown["text"]:  # MathJax is blocked: its TeX must show
        problems.append(f"the maths {maths!r} is not readable without MathJax")
    assert not problems, f"lessons/{name}.html:\n- " + "\n- ".join(problems)


@pytest.mark.browser
def test_the_other_pages_fit_a_phone(visit, site_url):
    v = visit(PHONE)
    problems = []
    for path in ("index.html", "setup.html", "grading.html", "search.html"):
        page = v.open(urljoin(site_url, path))
        problems += [f"{path}: {p}" for p in phone_width_problems(page)]
    assert not problems + v.problems, "\n".join(problems + v.problems)


def _path(url: str) -> str:
    """The page a URL shows: ``/`` is ``/index.html``."""
    path = urlsplit(url).path
    return path + "index.html" if path.endswith("/") else path


@pytest.mark.browser
def test_next_links_reach_every_lesson_in_order_and_previous_links_go_back(visit, site_url):
    """Click "next" from the landing page to the last page; each page's "previous" link
    must name the page the click came from."""
    v = visit()
    page = v.open(site_url)
    seen, problems = [_path(page.url)], []
    while page.locator("a.right-next").count():
        with page.expect_navigation(wait_until="load"):
            page.locator("a.right-next").first.click()
        seen.append(_path(page.url))
        previous = page.locator("a.left-prev")
        back = _path(urljoin(page.url, previous.first.get_attribute("href"))) \
            if previous.count() else None
        if back != seen[-2]:
            problems.append(f"{seen[-1]}: previous link to {back}, expected {seen[-2]}")
        assert len(seen) < 3 * len(LESSONS) + 10, f"the next links go round in circles: {seen}"
    lessons = [p for p in seen if p.startswith("/lessons/")]
    assert lessons == [f"/lessons/{name}.html" for name in LESSONS], seen
    assert not problems + v.problems, "\n".join(problems + v.problems)


@pytest.mark.browser
def test_search_finds_a_word_of_exactly_one_lesson(visit, site_url):
    word, lesson = word_in_exactly_one_lesson()
    v = visit()
    page = v.open(site_url)
    page.locator("button.search-button-field, button.search-button").first.click()
    field = page.locator("input[name='q']:visible").first
    field.fill(word)
    with page.expect_navigation(wait_until="load"):
        field.press("Enter")
    page.wait_for_function(
        "() => /Search finished|did not match/.test("
        "(document.querySelector('#search-results') || {}).innerText || '')", timeout=30_000)
    found = page.eval_on_selector_all("#search-results ul.search li a",
                                      "links => links.map(a => a.href)")
    pages = sorted({urlsplit(href).path for href in found})
    assert pages == [f"/lessons/{lesson}.html"], f"searching {word!r}: {pages}"
    assert not v.problems, "\n".join(v.problems)


@pytest.mark.browser
def test_screenshots_of_the_landing_page_and_a_lesson(visit, site_url, capsys):
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    saved = []
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        v = visit(viewport)
        pages = (("landing", ""), (SCREENSHOT_LESSON, f"lessons/{SCREENSHOT_LESSON}.html"))
        for stem, path in pages:
            page = v.open(urljoin(site_url, path))
            shot = SCREENSHOT_DIR / f"{stem}-{label}.png"
            page.screenshot(path=str(shot))
            saved.append(shot)
        assert not v.problems, "\n".join(v.problems)
    with capsys.disabled():
        print("\n[site] screenshots: " + ", ".join(str(s.relative_to(ROOT)) for s in saved))
    assert all(s.stat().st_size > 10_000 for s in saved)
