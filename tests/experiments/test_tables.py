"""Every measured table of README.md and docs/ is what its results.json gives (experiments/tables.py),
no measured figure sits outside such a table, and no page names a path of one machine."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import tables  # noqa: E402

DOCUMENTS = tables.documents()
# A measured figure: a number with three or more decimals (0.935, 1.127), as every table prints
# them; a setting (`C = 0.001`) follows an equals sign.
FIGURE = re.compile(r"(?<![\w.])(?<!= )\d+\.\d{3,}(?![\w.])")


def outside_tables(text: str) -> str:
    return tables.MARKER.sub("", text)


def test_every_document_is_found_and_holds_tables():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/index.md", "docs/experiments.md"} <= names
    assert tables.MARKER.search((ROOT / "README.md").read_text())


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_committed_tables_equal_their_results(path):
    text = path.read_text()
    assert tables.render(text, str(path)) == text, f"{path.relative_to(ROOT)}: run `make tables`"


def test_a_stale_table_is_rewritten_from_results_json():
    readme = (ROOT / "README.md").read_text()
    family = tables.results("family")["cards"]["rows"][0]
    right = f"{family['mAP50']:.3f}"
    inside = tables.MARKER.search(readme).group(3)
    assert right in inside
    stale = readme.replace(inside, inside.replace(right, "0.123", 1))
    assert stale != readme
    assert tables.render(stale) == readme
    assert tables.main(["--check"]) == 0


def test_the_generalization_table_follows_its_results(monkeypatch):
    data = {
        "meta": {},
        "new": {"_size": "train 2 images", "faster_rcnn": {"mAP50": 0.5, "coco_AP": 0.25}},
    }
    monkeypatch.setattr(tables, "results", lambda name, file="results.json": data)
    table = tables.generalization()
    assert table.splitlines()[-1] == "| new (train 2 images) | 0.500 / 0.250 |"
    assert "Faster R-CNN" in table.splitlines()[0]


def test_an_unknown_table_is_named():
    with pytest.raises(SystemExit, match="page.md: <!-- table: nope -->: no such table"):
        tables.render("<!-- table: nope -->\n<!-- /table -->\n", "page.md")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_measured_figure_outside_a_generated_table(path):
    loose = FIGURE.findall(outside_tables(path.read_text()))
    assert not loose, f"{path.relative_to(ROOT)}: figures outside a generated table: {loose}"


def test_no_path_of_one_machine():
    files = [*DOCUMENTS, *sorted((ROOT / "experiments" / "configs").glob("*.toml")), ROOT / "mkdocs.yml"]
    for path in files:
        found = re.findall(r"(?<![\w.])/(?:work|tmp|home|Users)/\S*", path.read_text())
        assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_a_dataset_missing_from_results_is_named(monkeypatch):
    monkeypatch.setattr(tables, "results", lambda name, file="results.json": {"meta": {}, "mine": {"rows": []}})
    with pytest.raises(SystemExit, match="family/results.json: no dataset 'cards' \\(it has mine\\)"):
        tables.TABLES["family-cards"]()
