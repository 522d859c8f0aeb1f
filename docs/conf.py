"""Sphinx configuration of the firedrake-msm documentation (``make docs``)."""
import ast
import os
import sys
from pathlib import Path

from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

project = "firedrake-msm"
author = "the firedrake-msm authors"
copyright = "the firedrake-msm authors, LGPL-3.0-or-later"
release = version = "0.1.0.dev0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sphinx.ext.viewcode",
              "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
# No internet at build time: no intersphinx, and MathJax only where the browser can reach it.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"
napoleon_google_docstring = False
napoleon_use_rtype = False
html_theme = "alabaster"
html_static_path = []


class LiterateDemo(Directive):
    """``.. literate-demo:: ../demos/kdv.py``: a demo as text and code, not executed.

    The module docstring and every block of comment lines at column 0 become text
    (reStructuredText, as the demos write them); everything else becomes Python code blocks."""
    required_arguments = 1

    def run(self):
        source = self.state.document.settings.env.relfn2path(self.arguments[0])[1]
        self.state.document.settings.record_dependencies.add(source)
        text = Path(source).read_text()
        module = ast.parse(text)
        lines = text.splitlines()
        out, start = [], 0
        if ast.get_docstring(module) is not None:
            out += ast.get_docstring(module).splitlines() + [""]
            start = module.body[0].end_lineno
        code = []

        def flush():
            while code and not code[-1].strip():
                code.pop()
            while code and not code[0].strip():
                code.pop(0)
            if code:
                out.extend(["", ".. code-block:: python", ""] + ["    " + line for line in code] + [""])
            code.clear()

        for line in lines[start:]:
            if line.startswith("#"):
                flush()
                out.append(line[2:] if line.startswith("# ") else line[1:])
            else:
                if out and out[-1].strip() and not code:
                    out.append("")
                code.append(line)
        flush()
        self.state_machine.insert_input(StringList(out, source), source)
        return []


def resolve_short_names(app, env, node, contnode):
    """A reference the Python domain cannot find (``:class:`Problem``` in the front door's
    docstring, which re-exports it) goes to the one documented object of that name."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if target.startswith("firedrake_msm."):
        target = target.rpartition(".")[2]
    elif "." in target:
        return None
    domain = env.get_domain("py")
    matches = [name for name in domain.objects if name.rpartition(".")[2] == target
               and name.startswith("firedrake_msm.")]
    if len(matches) != 1:
        return None
    node["reftarget"] = matches[0]
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], matches[0],
                               node, contnode)


def setup(app):
    directives.register_directive("literate-demo", LiterateDemo)
    app.connect("missing-reference", resolve_short_names)
