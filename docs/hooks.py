"""MkDocs hooks: the experiments' committed files (reports, plots, configs, the tour notebook)
join the site under ``experiments/``, so the pages' links ``../experiments/...`` (which read
on a repository page) resolve in the built site too."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("experiments/README.md", "experiments/tour.ipynb", "experiments/results", "experiments/configs")
LINK = re.compile(r"\]\(((?:\.\./)+)experiments/")


@event_priority(100)  # before mkdocs-jupyter's on_files, which must see the notebook
def on_files(files, config):
    for shared in SHARED:
        path = ROOT / shared
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file() and "cache" not in item.relative_to(path).parts:  # results/**/cache/: ignored by git
                uri = item.relative_to(ROOT).as_posix()
                files.append(File(uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    """``../experiments/`` one level above docs/ becomes the site's ``experiments/``; files
    under experiments/ keep their own relative links."""
    if page.file.src_uri.startswith("experiments/"):
        return markdown
    depth = posixpath.dirname(page.file.src_uri).count("/") + bool(posixpath.dirname(page.file.src_uri))

    def fix(m: re.Match) -> str:
        ups = m.group(1).count("../")
        return f"]({'../' * (ups - 1)}experiments/" if ups == depth + 1 else m.group(0)

    return LINK.sub(fix, markdown)
