"""analyze(): a recorded store + its dataset -> the parquet files the figures read."""

import pandas as pd

from analyses.run import analyze, load
from flmm_probe import load_backbone
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from tiny import tiny_llava


def test_analyze_writes_every_table(tmp_path):
    model, processor = tiny_llava()
    dataset = ShapesGrounding("test", 2, "mix")
    store = Store.create(tmp_path / "store", {"model": "tiny"})
    record_dataset(load_backbone(model, processor), dataset, store, batch_size=2, progress=False)
    paths = analyze(store, dataset, tmp_path / "run", progress=False)
    tables = load(tmp_path / "run")
    assert set(tables) == set(paths) == {"scores", "baselines", "heads", "head_table"}
    scores = tables["scores"]
    n_phrases = int(store.manifest.shape[0])
    assert scores.groupby("metric", observed=True).size().eq(n_phrases * 3 * 5).all()  # 3 layers x (4 heads + mean)
    assert set(scores["task"]) == {"res", "png"} and scores["value"].notna().any()
    # referring expressions carry their kind (attribute / relational / superlative); narrative phrases have none
    assert set(scores.loc[scores.task == "res", "kind"]) <= {"attribute", "relational", "superlative"}
    assert scores.loc[scores.task == "png", "kind"].isna().all() and scores.loc[scores.task == "res", "kind"].notna().all()
    assert len(tables["heads"]) == 12 and tables["heads"]["selected"].sum() == 10
    assert isinstance(tables["head_table"], pd.DataFrame) and tables["head_table"]["rank"].min() == 1
