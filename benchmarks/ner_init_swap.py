"""Which draw makes bertjax's and transformers' CoNLL-2003 scores differ: the head or the order.

    python benchmarks/ner_init_swap.py --seed=0 --swap=init    # transformers' head draw
    python benchmarks/ner_init_swap.py --seed=0 --swap=order \
        --head_init=truncated_normal                           # transformers' batch order
    python benchmarks/ner_init_swap.py --seed=0 --swap=both

Runs bertjax's configs/ner.py on issue 15's recipe (as `qa_ner_vs_transformers.py --task=ner`:
all-MiniLM-L6-v2, the first 5,000 training sentences, 2 epochs, batch 32, lr 5e-5, length 128)
with one or both of two things taken from that script's transformers side for the same seed:
the tagger head as `torch.manual_seed(seed)` then `BertForTokenClassification.from_pretrained`
draws it, and the batch order (`torch.randperm` per epoch from a generator seeded `seed`).
Everything else is bertjax's (`--head_init`: its own head's initializer where the head is not
swapped, config.model.head_init). Prints the test entity F1 (benchmarks/RESULTS.md, 2026-11-30).
"""

from __future__ import annotations

import argparse
import json

import _common
from qa_ner_vs_transformers import replay_transformers_draws

CONLL = _common.REPO.parent / "shared" / "data" / "ner" / "conll2003"
NUM_TRAIN = 5000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swap", choices=("init", "order", "both"), default="both")
    parser.add_argument("--head_init", default="normal", help="config.model.head_init")
    args = parser.parse_args()

    from bertjax import config_lib

    replay_transformers_draws(
        "ner",
        args.seed,
        NUM_TRAIN,
        head=args.swap in ("init", "both"),
        order=args.swap in ("order", "both"),
    )
    overrides = {
        "init_from": _common.model_dir(),
        "data.max_seq_length": 128,
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_train_epochs": 2.0,
        "optim.learning_rate": 5e-5,
        "seed": args.seed,
        "model.head_init": args.head_init,
        "checkpoint_every": 100_000,
        "eval_every": 10**9,
        "data.train_file": str(CONLL / "train.txt"),
        "data.test_file": str(CONLL / "test.txt"),
        "data.max_train_sentences": NUM_TRAIN,
    }
    config = config_lib.load(str(_common.REPO / "configs" / "ner.py"), overrides)
    records, wall, _ = _common.train_bertjax(config)
    f1 = _common.evaluations(records, "test")[-1]["f1"]
    print(json.dumps({"seed": args.seed, "swap": args.swap, "f1": f1, "wall_s": round(wall)}))


if __name__ == "__main__":
    main()
