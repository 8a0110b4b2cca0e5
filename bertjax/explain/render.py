"""Explanations a person can look at: a self-contained HTML page and PNG heatmaps.

The HTML has no network reference (inline CSS and script, the explanation embedded as JSON):
the tokens coloured by their normalised attribution (red = for the target, blue = against) and
an attention view with a layer and head picker (a head, the mean of the heads, or the
rollout). `SCRIPT` and `STYLE` are shared with the server's try-it page (`page.py`).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from bertjax.explain.targets import describe

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:980px}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:20px 0 8px}
.meta{color:#555;font-size:13px}
.tokens{line-height:2.2;font-size:17px}
.tok{padding:3px 4px;margin:0 1px;border-radius:4px;border:1px solid #ddd;white-space:pre}
.tok.target{border:2px solid #111;font-weight:bold}
.pred{font-size:16px;margin:8px 0} .pred b{font-size:18px}
.controls{margin:6px 0;font-size:14px} select,button,input,textarea{font-size:14px}
table.attn{border-collapse:collapse;font-size:11px}
table.attn td{width:22px;height:22px;padding:0;border:1px solid #f4f4f4}
table.attn th{font-weight:normal;padding:0 4px;white-space:pre}
table.attn thead th{writing-mode:vertical-rl;transform:rotate(180deg);height:70px;
text-align:left}
.legend{font-size:12px;color:#555}
"""

SCRIPT = r"""
function attrColor(v){
  var a=Math.min(1,Math.abs(v)*2.5);
  return v>=0?'rgba(220,40,40,'+a.toFixed(3)+')':'rgba(40,90,220,'+a.toFixed(3)+')';
}
function targetName(t){
  if(t.kind==='answer_span'){return 'answer span "'+esc(t.text)+'" (characters '+t.start+'-'+
    t.end+')';}
  if(t.kind==='word_tag'){return 'tag '+esc(t.tag)+' of word '+t.word_index+' "'+esc(t.word)+
    '" ('+esc(t.word_from)+')';}
  return esc(t.kind)+' '+esc(t.label!==undefined?t.label:t.token);
}
function targetPositions(t){
  if(t.kind==='answer_span'){var r=[];for(var i=t.token_start;i<=t.token_end;i++){r.push(i);}
    return r;}
  return t.position!==undefined?[t.position]:[];
}
function renderPrediction(data, el){
  var p=data.prediction, t=data.target, s='';
  if(p && p.entities!==undefined){
    s='entities: '+(p.entities.length?p.entities.map(function(e){return '<b>'+esc(e.text)+
      '</b> '+esc(e.type);}).join(', '):'none');
  } else if(p && p.n_best!==undefined){
    s='answer: <b>'+esc(p.text||'(no answer)')+'</b> (score '+p.score.toFixed(3)+')';
  } else if(p && p.label!==undefined){
    s='prediction: <b>'+esc(p.label)+'</b> ('+(100*p.score).toFixed(1)+'%)';
  } else if(p && p.value!==undefined){ s='prediction: <b>'+p.value.toFixed(4)+'</b>';
  } else if(Array.isArray(p)){
    s='top predictions: '+p.map(function(q){return '<b>'+esc(q.token)+'</b> '+
      (100*q.probability).toFixed(1)+'%';}).join(', ');
  }
  s+='<div class="meta">explaining '+targetName(t)+
     ' ('+esc(t.score)+' = '+t.value.toFixed(4)+') with '+esc(data.method.name);
  if(t.note){s+=' ('+esc(t.note)+')';}
  if(data.completeness){s+=', completeness delta '+data.completeness.delta.toExponential(2);}
  el.innerHTML=s+'</div>';
}
function esc(s){return String(s).replace(/[&<>"']/g,function(c){return {'&':'&amp;',
  '<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
function renderTokens(data, el){
  var n=data.attributions.normalized, raw=data.attributions.raw;
  var marked=targetPositions(data.target);
  el.innerHTML=data.tokens.map(function(t,i){
    var cls=marked.indexOf(i)>=0?'tok target':'tok';
    return '<span class="'+cls+'" title="'+esc(raw[i].toPrecision(4))+'" style="background:'+
      attrColor(n[i])+'">'+esc(t)+'</span>';}).join(' ');
}
function renderAttention(data, el){
  var att=data.attention; el.innerHTML='';
  if(!att){el.textContent='(no attention maps)';return;}
  var ctl=document.createElement('div'); ctl.className='controls';
  var layer=document.createElement('select'), head=document.createElement('select');
  layer.id='layer'; head.id='head';
  for(var l=0;l<att.num_layers;l++){layer.add(new Option('layer '+l,l));}
  layer.add(new Option('rollout','rollout'));
  head.add(new Option('mean of heads','mean'));
  for(var h=0;h<att.num_heads;h++){head.add(new Option('head '+h,h));}
  layer.value=att.num_layers-1;
  ctl.append('layer ',layer,' head ',head); el.appendChild(ctl);
  var grid=document.createElement('div'); el.appendChild(grid);
  function matrix(){
    if(layer.value==='rollout'){return att.rollout;}
    var L=att.probs[+layer.value];
    if(head.value!=='mean'){return L[+head.value];}
    return L[0].map(function(row,i){return row.map(function(_,j){
      var s=0; for(var k=0;k<L.length;k++){s+=L[k][i][j];} return s/L.length;});});
  }
  function draw(){
    var m=matrix(), t=data.tokens, s='<table class="attn"><thead><tr><th></th>';
    // Shaded relative to the largest value shown (a near-uniform map would be all pale).
    var top=Math.max.apply(null,m.map(function(r){return Math.max.apply(null,r);}))||1;
    t.forEach(function(k){s+='<th>'+esc(k)+'</th>';}); s+='</tr></thead><tbody>';
    m.forEach(function(row,i){
      s+='<tr><th style="text-align:right">'+esc(t[i])+'</th>';
      row.forEach(function(v,j){s+='<td title="'+esc(t[i])+' &rarr; '+esc(t[j])+': '+
        v.toFixed(3)+'" style="background:rgba(30,30,160,'+(v/top).toFixed(3)+')"></td>';});
      s+='</tr>';});
    grid.innerHTML=s+'</tbody></table><div class="legend">row = query token, column = '+
      'attended token; darker = more attention (the darkest = '+top.toFixed(3)+')</div>';
    head.disabled=layer.value==='rollout';
  }
  layer.onchange=draw; head.onchange=draw; draw();
}
function renderAll(data){
  renderPrediction(data, document.getElementById('prediction'));
  renderTokens(data, document.getElementById('tokens'));
  renderAttention(data, document.getElementById('attention'));
}
"""

BODY = """
<div id="prediction" class="pred"></div>
<h2>Attributions</h2>
<div id="tokens" class="tokens"></div>
<div class="legend">red: pushes towards the explained target, blue: against
(normalised so that the |values| sum to 1; hover for the raw value); outlined: the target's
tokens (a QA answer span, an NER word, an MLM [MASK])</div>
<h2>Attention</h2>
<div id="attention"></div>
"""


def _json_for_script(result: dict[str, Any]) -> str:
    # "</" would close the script element; the JSON stays valid with "<\/".
    return json.dumps(result).replace("</", "<\\/")


def to_html(result: dict[str, Any]) -> str:
    """A self-contained HTML page of an explanation (`explainer.explain`'s result)."""
    inputs = result["inputs"]
    title = html.escape(f"bertjax explain: {(inputs.get('text') or inputs.get('question'))[:60]}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head>
<body><h1>{title}</h1>
<div class="meta">run {html.escape(str(result.get("run", "")))}</div>
{BODY}
<script type="application/json" id="explanation">{_json_for_script(result)}</script>
<script>{SCRIPT}
renderAll(JSON.parse(document.getElementById('explanation').textContent));
</script></body></html>
"""


def to_png(result: dict[str, Any], path: str | os.PathLike, layer: int | None = None) -> None:
    """PNG: the token attributions (bars) and the attention of `layer` (mean of its heads;
    default the last) and the rollout, as heatmaps. matplotlib, Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tokens = result["tokens"]
    scores = np.asarray(result["attributions"]["normalized"])
    att = result.get("attention")
    panels = 1 if att is None else 3
    width = max(6.0, 0.45 * len(tokens) + 2)
    fig, axes = plt.subplots(
        1, panels, figsize=(width * (1 if panels == 1 else 2.2), 4.2), squeeze=False
    )
    ax = axes[0, 0]
    colors = ["#dc2828" if s >= 0 else "#285adc" for s in scores]
    ax.bar(range(len(tokens)), scores, color=colors)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=9)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(f"{result['method']['name']}: {describe(result['target'])}", fontsize=10)
    if att is not None:
        probs = np.asarray(att["probs"])
        index = probs.shape[0] - 1 if layer is None else layer
        if not 0 <= index < probs.shape[0]:
            raise ValueError(f"layer {layer} out of range: the model has {probs.shape[0]} layers")
        for ax, matrix, label in (
            (axes[0, 1], probs[index].mean(axis=0), f"attention, layer {index} (head mean)"),
            (axes[0, 2], np.asarray(att["rollout"]), "attention rollout"),
        ):
            ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1e-9, matrix.max()))
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
            ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
