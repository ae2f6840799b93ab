"""A Llama-3.2-1B-shaped checkpoint as transformers writes it (bf16, tied embeddings, rope
llama3 factor 32; random weights), loaded and decoded by pyllama and by transformers.

    python bench/checkpoint_1b.py [--dir /tmp/llama-1b] [--new-tokens 16] [--prompt 32]

Prints, for each library: load time and peak RSS (each load in its own process, so the
peaks do not mix), and greedy decode tokens/s (pyllama with float32 and bfloat16 inference
weights; transformers with float32 weights, its `generate`). Then the ratios. One run each:
the machine is shared, so quote the ratios, not the times. Needs torch and transformers.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

SHAPE = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
             rope_theta=500000.0, tie_word_embeddings=True, head_dim=64,
             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192},
             bos_token_id=128000, eos_token_id=128001)


def make(path):
    import torch
    import transformers

    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, ".complete-v2")):
        return
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SHAPE)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()  # to_empty gave lm_head its own storage: tie it to the embedding again
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in n else torch.randn_like(p) * 0.02)
    model.save_pretrained(path)
    open(os.path.join(path, ".complete-v2"), "w").close()


def child(which, path, prompt_len, new_tokens):
    """One library in this process: load, then decode; prints a JSON line."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], size=prompt_len).tolist()
    out = {}
    if which == "pyllama":
        t0 = time.perf_counter()
        import pyllama

        out["import_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = pyllama.Llama.from_pretrained(path)
        out["load_s"] = time.perf_counter() - t0
        np.save(os.path.join(os.environ.get("TMPDIR", "/tmp"), "ckpt1b_pyllama_logits.npy"),
                model(np.array([ids]), ).logits[0, -1])
        out["rss_after_load_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        for dt in ("float32", "bfloat16"):
            model.set_inference_dtype(dt)
            model.generate([ids[:4]], max_new_tokens=2, do_sample=False, eos_token_id=[])  # warm
            t0 = time.perf_counter()
            toks = model.generate([ids], max_new_tokens=new_tokens, do_sample=False, eos_token_id=[])
            out[f"decode_{dt}_s"] = time.perf_counter() - t0
            out[f"tokens_{dt}"] = [int(t) for t in toks[0]]
    else:
        t0 = time.perf_counter()
        import torch
        import transformers

        out["import_s"] = time.perf_counter() - t0
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        model = transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        out["load_s"] = time.perf_counter() - t0
        with torch.no_grad():
            np.save(os.path.join(os.environ.get("TMPDIR", "/tmp"), "ckpt1b_hf_logits.npy"),
                    model(torch.tensor([ids])).logits[0, -1].numpy())
        out["rss_after_load_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        x = torch.tensor([ids])
        with torch.no_grad():
            model.generate(x[:, :4], max_new_tokens=2, do_sample=False, pad_token_id=0)
            t0 = time.perf_counter()
            seq = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            out["decode_float32_s"] = time.perf_counter() - t0
        out["tokens_float32"] = seq[0, prompt_len:].tolist()
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/pyllama-llama-1b")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--child", choices=["pyllama", "transformers"])
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.dir, a.prompt, a.new_tokens)
    make(a.dir)
    size = sum(os.path.getsize(os.path.join(a.dir, f)) for f in os.listdir(a.dir)) / 1e9
    res = {}
    for which in ("pyllama", "transformers"):
        r = subprocess.run([sys.executable, __file__, "--child", which, "--dir", a.dir, "--prompt", str(a.prompt),
                            "--new-tokens", str(a.new_tokens)], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{which} failed:\n{r.stderr[-3000:]}")
        res[which] = json.loads(r.stdout.strip().splitlines()[-1])
    p, h = res["pyllama"], res["transformers"]
    n = a.new_tokens
    print(f"Llama-3.2-1B shape, bf16 safetensors ({size:.2f} GB), prompt {a.prompt}, {n} new tokens, greedy")
    print(f"import: pyllama {p['import_s']:.1f} s | torch + transformers {h['import_s']:.1f} s")
    print(f"load:  pyllama {p['load_s']:.1f} s, peak RSS {p['rss_after_load_gb']:.2f} GB | transformers "
          f"{h['load_s']:.1f} s, peak RSS {h['rss_after_load_gb']:.2f} GB | load time ratio "
          f"{h['load_s'] / p['load_s']:.2f}x, RSS ratio {h['rss_after_load_gb'] / p['rss_after_load_gb']:.2f}x")
    hf_tps = n / h["decode_float32_s"]
    for dt in ("float32", "bfloat16"):
        tps = n / p[f"decode_{dt}_s"]
        print(f"decode {dt:8s}: pyllama {tps:.2f} tok/s | transformers float32 {hf_tps:.2f} tok/s | ratio "
              f"{tps / hf_tps:.2f}x")
    import numpy as np

    tmp = os.environ.get("TMPDIR", "/tmp")
    lp, lh = np.load(os.path.join(tmp, "ckpt1b_pyllama_logits.npy")), np.load(os.path.join(tmp, "ckpt1b_hf_logits.npy"))
    print(f"prompt's last logits: max |pyllama - transformers| = {np.abs(lp - lh).max():.2e} "
          f"(max |logit| {np.abs(lh).max():.2f})")
    same = sum(a == b for a, b in zip(p["tokens_float32"], h["tokens_float32"]))
    print(f"greedy tokens equal transformers' (float32): {same}/{n} (random weights: the top logits are nearly "
          f"tied, so float rounding may pick another token)")
    print(f"peak RSS whole run: pyllama {p['peak_rss_gb']:.2f} GB, transformers {h['peak_rss_gb']:.2f} GB")
    print(f"a training step (float32 weights, gradients, 2 AdamW moments = 16 B/param): "
          f"{16 * 1.2358e9 / 1e9:.1f} GB + activations, on a machine of "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
