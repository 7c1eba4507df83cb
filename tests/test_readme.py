"""The README's tables are generated from `results/`: they must agree with the stored records."""

import pytest
from conftest import ROOT

from adjax import results, tables


def test_readme_tables_match_the_stored_records():
    text = (ROOT / "README.md").read_text()
    assert "<!-- adjax tables" in text
    regenerated = tables.update_blocks(text, results.read_all(ROOT / "results"))
    assert regenerated == text, "README tables are stale: run `adjax tables --update=README.md`"


def test_update_blocks_rewrites_only_the_block():
    record = results.make_record(
        "eval", method="m", variant="v", dataset="d", category="c", image_size=8,
        metrics={"image_auroc": 0.5}, config={}, env={})
    text = "before\n<!-- adjax tables --metrics=image_auroc -->\nold\n<!-- end tables -->\nafter\n"
    out = tables.update_blocks(text, [record])
    assert out.startswith("before\n<!-- adjax tables --metrics=image_auroc -->\n| method")
    assert "| 50.0 |" in out and "old" not in out and out.endswith("<!-- end tables -->\nafter\n")


def test_update_blocks_names_a_block_whose_filter_matches_nothing():
    record = results.make_record(
        "eval", method="m", variant="v", dataset="d", category="c", image_size=8,
        metrics={"image_auroc": 0.5}, config={}, env={})
    text = "<!-- adjax tables --method=nosuch -->\n<!-- end tables -->\n"
    with pytest.raises(ValueError) as err:
        tables.update_blocks(text, [record])
    assert str(err.value) == ("there are no adjax eval records of method 'nosuch' in the block "
                              "'<!-- adjax tables --method=nosuch -->'; methods present: m.")
