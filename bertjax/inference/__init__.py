"""Using a trained run: load a run directory (run.json), featurise, predict, generate.

The contract other code builds on (the prediction CLI, the server, generation):

* `manifest`: `RUN_FILE`, `write_manifest`, `read_manifest` (legacy glue_run.json too).
* `loader`: `load_run(workdir, checkpoint="") -> LoadedRun`.
* `classify`: `featurize`, `forward` (jittable), `postprocess`, and `predict` over many texts.
* `qa` (squad runs): `featurize` (run_squad windows), `forward`, `postprocess` (answers with
  character offsets), `predict`; `ner` (ner runs): `split_words`, `forward`, `predict` /
  `predict_tokens` (entity spans with character offsets / token indices).
"""

from bertjax.inference.classify import featurize, forward, postprocess, predict, predict_logits
from bertjax.inference.loader import LoadedRun, load_run, load_tokenizer, resolve_checkpoint
from bertjax.inference.manifest import (
    RUN_FILE,
    ManifestError,
    read_manifest,
    save_tokenizer,
    write_manifest,
)

__all__ = [
    "RUN_FILE",
    "LoadedRun",
    "ManifestError",
    "featurize",
    "forward",
    "load_run",
    "load_tokenizer",
    "postprocess",
    "predict",
    "predict_logits",
    "read_manifest",
    "resolve_checkpoint",
    "save_tokenizer",
    "write_manifest",
]
