"""The fast recipe has one home (bench/recipe.py's RECIPE): the docs give exactly its command."""

from __future__ import annotations

import re
import sys

import yaml

from tests.conftest import ROOT


def test_the_docs_recipe_is_the_bench_s_and_its_keys_exist(committed_params_file) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import recipe
    finally:
        sys.path.remove(str(ROOT / "bench"))
    docs = (ROOT / "docs/performance.md").read_text()
    section = docs[docs.index("## The fast recipe"):]
    fenced = re.search(r"```(?:sh|bash)\n(dvc exp run [^\n]+)\n```", section)
    assert fenced is not None and fenced.group(1) == recipe.recipe_command()
    # Every key it sets is a params key, and the result is valid params.
    from mnist_early_stopping.pipeline import params

    path = committed_params_file.parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.overridden(committed_params_file, recipe.RECIPE), sort_keys=False))
    (train,) = params.load("train", path=path)
    assert train.precision == "float32" and train.lr_schedule == "cosine"
