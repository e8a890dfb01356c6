"""Sphinx configuration of the course website (``make site``; README, "Website").

Sphinx + myst-nb + sphinx-book-theme, as the JAX documentation does. The pages:

* ``index.md``: the landing page (the README's introduction and lessons table, included);
* ``lessons/NN_name.ipynb``: every solved lesson with its stored outputs, never executed
  (``lessons`` is a link to ``../solutions``; the toctree finds ``lessons/[0-9][0-9]_*``, so a
  new lesson appears without editing anything here);
* ``setup.md`` and ``grading.md``: the README's sections, included between markers.

Two small hooks do what no extension does: the README's links to ``course/NN_name.ipynb``
become links to the lesson pages on the site, and each lesson page gets a line under its
Colab badge pointing to the student notebook (``course/``, exercises blank).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from generate_course import badge_line, course_settings  # noqa: E402  (one source of URLs)

COURSE = course_settings()  # {"repository": URL, "branch": NAME} from pyproject.toml

project = "GPU-accelerated deep learning with JAX"
author = "The course's contributors"
copyright = "the course's contributors (MIT licence)"

extensions = ["myst_nb", "sphinx.ext.githubpages"]
root_doc = "index"
# Lessons are the numbered notebooks only (not checkpoints, not anything else in solutions/).
include_patterns = ["*.md", "lessons/[0-9][0-9]_*.ipynb"]
exclude_patterns = ["**/.ipynb_checkpoints"]
nitpicky = True

# myst-nb: render the stored outputs; nbval already proves that the notebooks run.
nb_execution_mode = "off"
myst_enable_extensions = [
    "dollarmath",  # lesson 03 writes its maths as $...$
    "substitution",
]
myst_substitutions = {"repository": f"[the repository]({COURSE['repository']})"}
# tqdm's progress bars are stored as widget views with a text copy; the site shows the text
# (a widget view needs the widget state, which the notebooks do not store).
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]

html_theme = "sphinx_book_theme"
html_title = project
html_copy_source = False  # no _sources/ copies of the notebooks: GitHub has them
html_show_sourcelink = False
html_theme_options = {
    "repository_url": COURSE["repository"],
    "repository_branch": COURSE["branch"],
    "use_repository_button": True,
    "navbar_persistent": [],  # no header bar with a second search field (the sidebar has one)
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,  # it links to _sources/, which html_copy_source leaves out
}
html_static_path = ["_static"]
html_css_files = ["course.css"]  # long inline code wraps at a phone's width
# The reader's light/dark preference (the theme's default, "", logs a console error).
html_context = {"default_mode": "auto"}


# ------------------------------------------------------------------ the two hooks

COURSE_LINK = re.compile(r"\]\(course/([0-9][0-9]_[^)/]+)\.ipynb\)")


def readme_links_to_pages(app, relative_path, parent_docname, content):
    """README.md links a lesson as ``course/NN_name.ipynb``; on the site that is its page.

    The target is written as a document name (``lessons/NN_name``): a path with the
    ``.ipynb`` would be resolved through the ``lessons`` link to ``solutions/``, outside the
    site's folder, where Sphinx knows no document.
    """
    if Path(relative_path).name == "README.md":
        content[0] = COURSE_LINK.sub(r"](lessons/\1)", content[0])


def student_notebook_line(app, docname, source):
    """Under a lesson's title cell (with the Colab badge of the solved notebook), a line
    with the student notebook: on GitHub and in Colab."""
    if not docname.startswith("lessons/"):
        return
    name = docname.removeprefix("lessons/") + ".ipynb"
    notebook = json.loads(source[0])
    github = f"{COURSE['repository']}/blob/{COURSE['branch']}/course/{name}"
    text = (f"This page is the solved lesson with the outputs of a run on a CPU. To work "
            f"through it yourself, open the student notebook (exercises blank): "
            f"[`course/{name}` on GitHub]({github}) or "
            f"{badge_line('course', name, COURSE)}")
    cell = {"cell_type": "markdown", "id": "site-student-notebook", "metadata": {},
            "source": text}
    notebook["cells"].insert(1, cell)
    source[0] = json.dumps(notebook)


def setup(app):
    app.connect("include-read", readme_links_to_pages)
    app.connect("source-read", student_notebook_line)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
