"""Every config file loads, validates and builds its optimizer and mesh blocks with
`bertjax.config_defaults` (the blocks configs used to repeat)."""

import pathlib

import pytest

from bertjax import config_defaults, config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_uses_the_shared_blocks(path):
    spec = f"{path}:sst2" if path.name == "glue.py" else str(path)
    config = config_lib.load(spec)
    config_lib.validate(config)
    text = path.read_text()
    # A config builds the blocks itself, or derives from a config file that does.
    bases = [p for p in CONFIGS if p != path and f'"{p.name}"' in text]
    assert "config_defaults.optimizer(" in text or any(
        "config_defaults.optimizer(" in base.read_text() for base in bases
    ), f"{path.name} neither builds its optimizer block nor derives from a config that does"
    proportion = config.optim.get("warmup_proportion")
    expected = config_defaults.optimizer(
        learning_rate=config.optim.learning_rate, warmup_proportion=proportion
    )
    assert list(config.optim.keys()) == list(expected.keys())  # same keys, same order
    assert config.mesh.to_dict() == config_defaults.mesh().to_dict()


def test_builders_give_fresh_blocks_with_overrides():
    a, b = (
        config_defaults.optimizer(learning_rate=1e-3),
        config_defaults.optimizer(learning_rate=1e-3),
    )
    a.eps = 1.0
    assert b.eps == 1e-6 and "warmup_proportion" not in b
    lamb = config_defaults.optimizer(
        name="lamb", learning_rate=1e-3, warmup_proportion=0.2, b2=0.95
    )
    assert (lamb.name, lamb.warmup_proportion, lamb.b2) == ("lamb", 0.2, 0.95)
    assert config_defaults.mesh(fsdp=4).to_dict() == {"data": -1, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_derived_pretraining_configs_differ_from_their_base_only_where_they_say(phase):
    root = CONFIGS[0].parent

    def flat(name):
        config = config_lib.load(f"{root / name}:{phase}")
        config_lib.validate(config)
        return {
            f"{block}.{k}" if block else k: v
            for block, values in [("", config)]
            + [(k, v) for k, v in config.items() if hasattr(v, "items")]
            for k, v in values.items()
            if not hasattr(v, "items")
        }

    base, large, lamb = (
        flat(f"{name}.py")
        for name in ("bert_base_pretrain", "bert_large_pretrain", "bert_large_lamb_pretrain")
    )
    assert {k for k in base if base[k] != large[k]} == {"model.preset"}
    assert (base["model.preset"], large["model.preset"]) == ("base", "large")
    seq = {"phase1": (128, 20), "phase2": (512, 80)}[phase]
    assert (large["data.max_seq_length"], large["data.max_predictions_per_seq"]) == seq
    assert set(lamb) == set(large) | {"optim.warmup_proportion"}
    assert lamb["optim.name"] == "lamb" and lamb["data.max_seq_length"] == seq[0]
    with pytest.raises(ValueError, match="unknown phase"):
        config_lib.load(f"{root / 'bert_large_lamb_pretrain.py'}:phase3")
