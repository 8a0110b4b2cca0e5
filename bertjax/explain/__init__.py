"""Seeing inside a trained run: token attributions, attention maps and their rendering.

    from bertjax.inference import load_run
    from bertjax.explain import explain, to_html
    result = explain(load_run("runs/sst2"), "a gripping film", method="integrated_gradients")

* `explainer.explain`: prediction, attributions (with IG's completeness delta), attention maps,
  rollout and MLM top-k of one input, as a JSON-ready dict (schema in docs/explain.md).
* `attributions`: integrated gradients, gradient x input, gradient norm, occlusion.
* `targets`: what is explained (class score, masked token, next token, QA answer span, NER
  tag) from the embeddings; `qa_target` / `ner_target`: the window and span, the word and tag.
* `attention`: attention probabilities through the reference path, rollout.
* `precision.in_float64`: the model evaluated entirely in float64 (exact checks).
* `render`: self-contained HTML and PNG; `page`: the server's try-it page and /v1/explain.

CLI: `python -m bertjax.explain --workdir=DIR --text=... --output=OUT.{json,html,png}`
(QA runs: `--question=... --context=...`; NER runs: `--text=... --word=INDEX`).
"""

from bertjax.explain.explainer import explain
from bertjax.explain.render import to_html, to_png

__all__ = ["explain", "to_html", "to_png"]
