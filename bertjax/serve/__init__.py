"""Online prediction service: a fine-tuned run behind HTTP with dynamic batching.

    python -m bertjax.serve --workdir=runs/sst2 --port=8080

Modules: `backend` (tokenise, compile per bucket, run), `buckets` (the (batch, length) grid),
`batcher` (token-budget batches on one worker thread), `limits` (429 / 413 / request metrics),
`metrics` (Prometheus), `schemas` (request bodies), `results` (scores, vectors), `app` (routes),
`errors` (error shapes), `spans` (SQuAD / NER runs on /v1/predict), `generation` /
`generate_api` / `decoder` / `textstream` (GPT runs: /v1/generate), `loading` (a run directory
-> its backend), `__main__` (flags). See README.md, "Serve a fine-tuned model".
"""
