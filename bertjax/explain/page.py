"""The prediction server's try-it page (`GET /`) and `POST /v1/explain`.

    add_routes(app, backend)     # a FastAPI app and the server's EncoderBackend (or a LoadedRun)

`/` is one self-contained HTML page (inline CSS and script, no external asset): type a text
(or a pair: a question and its context, a premise and its hypothesis), pick a method, and see
the prediction, the tokens coloured by attribution and the layer/head attention view, drawn by
the same script as the CLI's HTML (`render.SCRIPT`); for a QA run the fields are a question
and a context, for an NER run a text and the word to explain. `POST /v1/explain` takes
`{"text", "text_pair"?, "target"?, "method"?, "steps"?, "rule"?, "baseline"?, "score"?,
"attention"?}` (QA runs: `"question", "context"` instead of text, and `"answer_start"?,
"answer_end"?, "qa_score"?`; NER runs: `"word"?`) and returns `bertjax.explain.explain`'s JSON
(schema in docs/explain.md); bad input is a 422 `{"error", "error_type": "validation"}` naming
the field.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bertjax.explain import attributions, explainer, render, targets
from bertjax.inference.loader import LoadedRun

MAX_STEPS = 256  # integrated gradients' points per request (one request runs them all)


class ExplainRequest(BaseModel):
    """The body of POST /v1/explain (unknown fields are an error)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=20_000)
    text_pair: str | None = Field(default=None, max_length=20_000)
    question: str | None = Field(default=None, min_length=1, max_length=2_000)
    context: str | None = Field(default=None, min_length=1, max_length=20_000)
    answer_start: int | None = Field(default=None, ge=0)
    answer_end: int | None = Field(default=None, ge=0)
    qa_score: Literal[targets.QA_SCORES] = "span"  # type: ignore[valid-type]
    word: int | None = None
    target: str | None = None
    method: Literal[attributions.METHODS] = "integrated_gradients"  # type: ignore[valid-type]
    steps: int = Field(default=32, ge=2, le=MAX_STEPS)
    rule: Literal[attributions.RULES] = "gauss_legendre"  # type: ignore[valid-type]
    baseline: Literal[explainer.BASELINES] = "pad"  # type: ignore[valid-type]
    score: Literal[targets.CLASS_SCORES] = "logit"  # type: ignore[valid-type]
    attention: bool = True


PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bertjax: try the model</title>
<style>{render.STYLE}
form{{display:grid;gap:8px;margin:12px 0}} textarea{{width:100%;height:70px}}
input[type=text]{{width:100%}} #error{{color:#b00020}}</style></head>
<body><h1>Try the model</h1>
<div class="meta" id="model"></div>
<form id="form">
<textarea id="text" placeholder="Type a text">a gripping, funny and beautifully acted film
</textarea>
<input type="text" id="pair" placeholder="Second text of a pair (optional)">
<div class="controls" id="wordrow" hidden>word <input id="word" size="4"
placeholder="first entity"> (its index, words split at spaces and punctuation)</div>
<div class="controls">method <select id="method">
<option value="integrated_gradients">integrated gradients</option>
<option value="grad_x_input">gradient x input</option>
<option value="grad_norm">gradient norm</option>
<option value="occlusion">occlusion</option></select>
target <input id="target" size="10" placeholder="predicted">
<button type="submit" id="go">Explain</button> <span id="status"></span></div>
</form>
<div id="error"></div>
{render.BODY}
<script>{render.SCRIPT}
var form=document.getElementById('form'), head='';
fetch('/info').then(function(r){{return r.json();}}).then(function(i){{
  if(!i.model){{return;}}
  head=i.model.head||'';
  document.getElementById('model').textContent='model: '+(i.model.name||'')+
    (i.model.label_names?' | labels: '+i.model.label_names.join(', '):'');
  var text=document.getElementById('text'), pair=document.getElementById('pair');
  if(head==='question_answering'){{
    text.placeholder='Question'; text.value='Who owns the red car?';
    pair.placeholder='Context'; pair.value="The red car's owner is Alice.";
  }} else if(head==='token_classification'){{
    pair.hidden=true; document.getElementById('wordrow').hidden=false;
    text.value='Angela Merkel visited Paris.';
    document.getElementById('target').placeholder='predicted tag';
  }}
}}).catch(function(){{}});
form.onsubmit=function(ev){{
  ev.preventDefault();
  var text=document.getElementById('text').value, pair=document.getElementById('pair').value;
  var target=document.getElementById('target').value, word=document.getElementById('word').value;
  var body={{method:document.getElementById('method').value}};
  if(head==='question_answering'){{body.question=text; body.context=pair;}}
  else{{body.text=text; if(pair && head!=='token_classification'){{body.text_pair=pair;}}}}
  if(head==='token_classification' && word!==''){{body.word=parseInt(word,10);}}
  if(target){{body.target=target;}}
  document.getElementById('status').textContent='working...';
  document.getElementById('error').textContent='';
  fetch('/v1/explain',{{method:'POST',headers:{{'Content-Type':'application/json'}},
    body:JSON.stringify(body)}}).then(function(r){{return r.json();}}).then(function(d){{
      document.getElementById('status').textContent='';
      if(d.error){{document.getElementById('error').textContent=d.error;return;}}
      renderAll(d);
    }}).catch(function(e){{document.getElementById('error').textContent=String(e);}});
}};
</script></body></html>
"""


def as_run(source: Any) -> LoadedRun:
    """A LoadedRun from a LoadedRun or the server's EncoderBackend (same fields)."""
    if isinstance(source, LoadedRun):
        return source
    manifest = getattr(source, "manifest", None)
    return LoadedRun(
        manifest=manifest or {"task": "classify" if source.has_classifier else None},
        model_config=source.model_config,
        module=source.module,
        params=source.params,
        tokenizer=source.tokenizer,
        # The backend keeps label names of classifiers only; an NER run's tags are run.json's.
        label_names=source.label_names or (manifest or {}).get("label_names"),
        problem_type=source.problem_type,
        max_seq_length=source.max_seq_length,
        workdir=getattr(source, "name", ""),
    )


def _texts(run: LoadedRun, body: ExplainRequest) -> tuple[str, str | None]:
    """(text, text_pair) for `explainer.explain`: a QA run's question and context."""
    if run.model_config.head == "question_answering":
        if body.question is None or body.context is None or body.text is not None:
            raise ValueError('a QA run takes "question" and "context" (not "text")')
        return body.question, body.context
    if body.question is not None or body.context is not None:
        raise ValueError('"question" and "context" are for QA runs; send "text"')
    if body.text is None:
        raise ValueError('"text" is required')
    return body.text, body.text_pair


def _bucket(run: LoadedRun, text: str, pair: str | None) -> int | None:
    """The padded length of a request: a multiple of 16 (at most the run's max_seq_length), so
    that requests of different lengths share a few compiled shapes (a QA window or an NER row
    longer than estimated only costs a compile)."""
    if run.model_config.model_type != "bert":
        return None
    pieces = len(run.tokenizer.encode(text)) + 2
    if pair:
        pieces += len(run.tokenizer.encode(pair)) + 1
    return min(run.max_seq_length, -(-pieces // 16) * 16)


def add_routes(app: Any, source: Any) -> None:
    """Adds `GET /` and `POST /v1/explain` for the run behind `source` to the FastAPI `app`."""
    run = as_run(source)
    lock = threading.Lock()  # one explanation at a time: each one already fills the CPU/GPU

    def compute(body: ExplainRequest) -> dict[str, Any]:
        text, pair = _texts(run, body)
        answer = None
        if body.answer_start is not None or body.answer_end is not None:
            if body.answer_start is None or body.answer_end is None:
                raise ValueError("give both answer_start and answer_end")
            answer = (body.answer_start, body.answer_end)
        with lock:
            return explainer.explain(
                run, text, pair, target=body.target, method=body.method,
                steps=body.steps, rule=body.rule, baseline=body.baseline, score=body.score,
                with_attention=body.attention, pad_to=_bucket(run, text, pair),
                word=body.word, answer=answer, qa_score=body.qa_score,
            )  # fmt: skip

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.post("/v1/explain")
    async def explain_route(body: ExplainRequest) -> JSONResponse:
        """Prediction, token attributions and attention maps of one input."""
        try:
            result = await asyncio.to_thread(compute, body)
        except ValueError as e:
            return JSONResponse({"error": str(e), "error_type": "validation"}, status_code=422)
        return JSONResponse(result)
