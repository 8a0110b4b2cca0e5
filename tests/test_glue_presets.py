"""GLUE as presets of the fine-tuning core, on the real files of ../shared/data/glue: every file
reads through its preset (MRPC's byte-order mark included), and SST-2 through the GLUE preset and
through configs/classify.py on the same files gives the same dev metrics."""

import json
import pathlib

import pytest

from bertjax import config_lib
from bertjax.data import glue

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK_DIRS = {"CoLA": "cola", "SST-2": "sst2", "MRPC": "mrpc", "STS-B": "stsb", "RTE": "rte"}
# Files under ../shared/data/glue that hold no examples: MRPC's dev_ids.tsv lists the
# (#1 ID, #2 ID) pairs GLUE's download script moves from MRPC's train file into dev.tsv.
NOT_EXAMPLES = {("MRPC", "dev_ids.tsv")}


def _rows(path: pathlib.Path, header: bool) -> int:
    return len(path.read_bytes().rstrip(b"\n").split(b"\n")) - int(header)


def test_every_shared_glue_file_reads_through_its_preset(shared_data):
    root = shared_data / "glue"
    seen = set()
    for dir_name, name in TASK_DIRS.items():
        config = config_lib.load(
            f"{REPO / 'configs' / 'glue.py'}:{name}", {"data.data_dir": str(root)}
        )
        task = glue.get_task(config.data.task)
        for path in sorted((root / dir_name).glob("*.tsv")):
            seen.add((dir_name, path.name))
            if (dir_name, path.name) in NOT_EXAMPLES:
                continue
            split = {v: k for k, v in task.files.items()}.get(path.name)
            if split is not None:
                examples = glue.load_split(task, split, data_dir=config.data.data_dir)
            else:  # SST-2's test_labeled.tsv: the test sentences with labels, train/dev layout
                examples = glue.read_tsv(task, str(path), labelled=True)
            labelled = not (split or "").startswith("test")
            assert len(examples) == _rows(path, task.labelled.header or not labelled), path
            assert all((e.label is not None) == labelled for e in examples), path
            assert all(e.text_a for e in examples), path
            assert task.is_pair == all(e.text_b is not None for e in examples), path
    assert {(d, p.name) for d in TASK_DIRS for p in (root / d).glob("*")} - seen == set()
    mrpc = glue.load_split("mrpc", "train", data_dir=str(root))  # starts with a BOM
    assert len(mrpc) == 3668 and {e.label for e in mrpc} == {0, 1}


@pytest.mark.slow  # two short training runs of a tiny model
def test_sst2_glue_preset_and_classify_config_give_the_same_dev_metrics(
    shared_data, minilm_dir, tmp_path
):
    from bertjax import train

    data = tmp_path / "SST-2"
    data.mkdir()
    for name, rows in (("train.tsv", 256), ("dev.tsv", 128)):
        lines = (shared_data / "glue" / "SST-2" / name).read_text().splitlines()
        (data / name).write_text("\n".join(lines[: rows + 1]) + "\n")
    common = {
        "model.preset": "tiny",
        "data.vocab_file": str(minilm_dir / "vocab.txt"),
        "data.max_seq_length": 32,
        "batch_size": 32,
        "num_train_epochs": 1.0,
        "optim.learning_rate": 1e-3,
        "seed": 3,
    }
    glue_cfg = config_lib.load(
        f"{REPO / 'configs' / 'glue.py'}:sst2", {**common, "data.data_dir": str(tmp_path)}
    )
    classify_cfg = config_lib.load(
        str(REPO / "configs" / "classify.py"),
        {
            **common,
            "data.train_file": str(data / "train.tsv"),
            "data.validation_file": str(data / "dev.tsv"),
            "data.text_column": "sentence",
            "data.label_column": "label",
        },
    )
    results = {}
    for name, cfg in (("glue", glue_cfg), ("classify", classify_cfg)):
        workdir = tmp_path / name
        train.run(cfg, workdir)
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        results[name] = [json.loads(x) for x in lines if "eval/accuracy" in x][-1]
    glue_eval, ours = results["glue"], results["classify"]
    assert ours["eval/accuracy"] == glue_eval["eval/accuracy"]
    assert ours["eval/loss"] == pytest.approx(glue_eval["eval/loss"], rel=1e-6)
    assert ours["loss"] == pytest.approx(glue_eval["loss"], rel=1e-6)  # the train loss too
    assert {"eval/macro_f1", "eval/mcc"} <= set(ours)  # the classify task's own metrics too
    runs = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in results}
    assert runs["glue"]["label_names"] == runs["classify"]["label_names"] == ["0", "1"]
