"""``pyllama train`` and ``pyllama prepare``.

    pyllama train                                   # small preset on the bundled Shakespeare corpus
    pyllama train --max-steps 2000 --hidden-size 256 --out-dir runs/big
    pyllama train --config run.json                 # any field of LlamaConfig / TrainConfig
    pyllama train --resume runs/shakespeare         # continue exactly where it stopped
    mpiexec -n 2 pyllama train ...                  # data parallel over 2 processes (pip install 'pyllama[dist]')
    pyllama prepare corpus.txt --tokenizer tok.json --out data/corpus
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from typing import Any, Dict, Optional, Tuple

from . import distributed as dist
from .config import LlamaConfig
from .data import TOKENIZER_FILE, TokenData, prepare
from .train import STATE_FILE, TrainConfig, Trainer, load_trainer_state, resolve_checkpoint, _step_dirs

BUNDLED_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "shakespeare.txt")
DEFAULT_OUT = os.path.join("runs", "shakespeare")
DEFAULT_TOKENIZER_VOCAB = 1024

# The preset `pyllama train` uses: ~2.2M parameters (vocabulary 1024), about two minutes
# on 2 idle CPU cores (AVX-512).
PRESET_MODEL: Dict[str, Any] = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                                    num_attention_heads=6, num_key_value_heads=None, max_position_embeddings=256,
                                    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
PRESET_TRAIN: Dict[str, Any] = dict(batch_size=16, seq_len=128, grad_accum_steps=1, max_steps=500, lr=3e-3,
                                    warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95),
                                    eps=1e-8, grad_clip=1.0, decay_embeddings=True, eval_interval=50,
                                    eval_steps=8, checkpoint_interval=100, keep_last=2, seed=0, out_dir=DEFAULT_OUT, device="cpu",
                                    dtype="float32", dist_timeout_s=300.0, zero1=False)

_MODEL_FIELDS = {f.name for f in dataclasses.fields(LlamaConfig)}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_DATA_FIELDS = {"corpus", "data", "tokenizer", "tokenizer_vocab_size", "val_fraction", "init_from", "model_seed"}

# flag → (section, field)
_MODEL_FLAGS = {"vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
                "num_attention_heads": int, "num_key_value_heads": int, "max_position_embeddings": int,
                "rms_norm_eps": float, "rope_theta": float}
_TRAIN_FLAGS = {"batch_size": int, "seq_len": int, "grad_accum_steps": int, "max_steps": int, "lr": float,
                "warmup_steps": int, "min_lr_ratio": float, "weight_decay": float, "eps": float,
                "grad_clip": float, "eval_interval": int, "eval_steps": int, "checkpoint_interval": int,
                "keep_last": int, "seed": int, "out_dir": str, "device": str, "dtype": str, "dist_timeout_s": float}


def _load_tokenizer(path: str):
    try:
        from . import Tokenizer  # the tokenizer lives in its own module
    except ImportError:
        raise ValueError("pyllama.Tokenizer is not available in this build") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer file at {path!r}")
    if path.endswith(".tiktoken") and not os.path.isfile(path + ".json"):
        return Tokenizer.from_tiktoken(path)  # a bare .tiktoken file (cl100k pattern)
    return Tokenizer.load(path)


def _train_tokenizer(corpus: str, vocab_size: int):
    try:
        from . import Tokenizer
    except ImportError:
        raise ValueError("pyllama.Tokenizer is not available in this build: pass --data with prepared "
                         "token files instead") from None
    return Tokenizer.train(corpus, vocab_size)


# ---------------------------------------------------------------------- config assembly

def read_config_file(path: str) -> Dict[str, Dict[str, Any]]:
    """A run config: ``{"model": {...}, "train": {...}, "data": {...}}`` or the same keys flat."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file at {path!r}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path!r} must hold a JSON object")
    out: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for key, value in raw.items():
        if key in out and isinstance(value, dict):
            known = {"model": _MODEL_FIELDS, "train": _TRAIN_FIELDS, "data": _DATA_FIELDS}[key]
            bad = sorted(set(value) - known)
            if bad:
                raise ValueError(f"{path!r}: unknown {key} field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
            out[key].update(value)
        elif key in _TRAIN_FIELDS:
            out["train"][key] = value
        elif key in _MODEL_FIELDS:
            out["model"][key] = value
        elif key in _DATA_FIELDS:
            out["data"][key] = value
        else:
            raise ValueError(f"{path!r}: unknown field {key!r} (not a LlamaConfig, TrainConfig or data field)")
    return out


def _flag_values(args) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for name in _MODEL_FLAGS:
        v = getattr(args, name, None)
        if v is not None:
            out["model"][name] = v
    if args.tie_word_embeddings:
        out["model"]["tie_word_embeddings"] = True
    for name in _TRAIN_FLAGS:
        v = getattr(args, name, None)
        if v is not None:
            out["train"][name] = v
    if args.beta1 is not None or args.beta2 is not None:
        out["train"]["betas"] = (args.beta1, args.beta2)  # completed below
    if args.no_decay_embeddings:
        out["train"]["decay_embeddings"] = False
    if getattr(args, "zero1", None):
        out["train"]["zero1"] = True
    for name in _DATA_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            out["data"][name] = v
    return out


def assemble(args) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """(model fields, train fields, data fields): preset < --config file < flags."""
    model, train = dict(PRESET_MODEL), dict(PRESET_TRAIN)
    data: Dict[str, Any] = {"tokenizer_vocab_size": DEFAULT_TOKENIZER_VOCAB, "val_fraction": 0.1, "model_seed": 0}
    layers = [read_config_file(args.config)] if args.config else []
    layers.append(_flag_values(args))
    for layer in layers:
        if "betas" in layer["train"]:
            b = list(layer["train"]["betas"])
            old = train["betas"]
            layer["train"]["betas"] = tuple(old[i] if b[i] is None else b[i] for i in range(2))
        model.update(layer["model"])
        train.update(layer["train"])
        data.update(layer["data"])
    explicit = set().union(*(layer["train"] for layer in layers))
    if "warmup_steps" not in explicit and train["warmup_steps"] > train["max_steps"]:
        train["warmup_steps"] = train["max_steps"] // 10  # the preset's warm-up, scaled to a short run
    return model, train, data


# ---------------------------------------------------------------------- data

def _prepared_dir(data_dir: str):
    train = TokenData.open(os.path.join(data_dir, "train.bin"))
    val_path = os.path.join(data_dir, "val.json")
    val = TokenData.open(val_path) if os.path.isfile(val_path) else None
    if val is not None and len(val) == 0:
        val = None
    tok_path = os.path.join(data_dir, TOKENIZER_FILE)
    tok = _load_tokenizer(tok_path) if os.path.isfile(tok_path) else None
    return train, val, tok


def _data_from_corpus(corpus: str, data_cfg: Dict[str, Any], out_dir: str):
    """Tokenize a corpus into out_dir/data (reused when it matches), training a tokenizer if none is given."""
    data_dir = os.path.join(out_dir, "data")
    want = {"corpus": os.path.abspath(corpus), "tokenizer": data_cfg.get("tokenizer"),
            "tokenizer_vocab_size": None if data_cfg.get("tokenizer") else data_cfg["tokenizer_vocab_size"],
            "val_fraction": data_cfg["val_fraction"]}
    stamp = os.path.join(data_dir, "source.json")
    if os.path.isfile(stamp):
        try:
            with open(stamp, encoding="utf-8") as f:
                if json.load(f) == want:
                    print(f"using prepared data in {data_dir}", file=sys.stderr)
                    return _prepared_dir(data_dir)
        except (OSError, ValueError):
            pass
    if data_cfg.get("tokenizer"):
        tok = _load_tokenizer(data_cfg["tokenizer"])
    else:
        n = data_cfg["tokenizer_vocab_size"]
        print(f"training a {n}-token BPE tokenizer on {corpus} ...", file=sys.stderr, flush=True)
        tok = _train_tokenizer(corpus, n)
    print(f"tokenizing {corpus} into {data_dir} ...", file=sys.stderr, flush=True)
    prepare(corpus, tok, data_dir, val_fraction=data_cfg["val_fraction"])
    from ._io import atomic_write_text

    atomic_write_text(stamp, json.dumps(want) + "\n")
    return _prepared_dir(data_dir)


# ---------------------------------------------------------------------- commands

def _clear_run(out_dir: str) -> None:
    for _, p in _step_dirs(out_dir):
        shutil.rmtree(p)
    for name in ("latest", "metrics.jsonl", "loss.png"):
        p = os.path.join(out_dir, name)
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)


def _say(comm, *a, **kw) -> None:
    """print() on rank 0 only (data parallel: one copy of every message)."""
    if comm.rank == 0:
        print(*a, **kw)


def _set_timeout(comm, tc: TrainConfig) -> None:
    if isinstance(comm, (dist.MPICommunicator, dist.TCPRendezvous)):
        comm.timeout_s = tc.dist_timeout_s or None


def run_train(args) -> int:
    import pyllama

    if args.threads:
        pyllama.set_num_threads(args.threads)
    # mpiexec -n N: the MPI communicator; torchrun-style variables: the TCP rendezvous (GPUs only: the
    # Trainer adds NCCL for device='cuda' and refuses the CPU); else one process
    torchrun = dist.launched_world_size() > 1 and not dist._launched_by_mpi()
    comm = dist.init_host() if torchrun else dist.init("auto")
    try:
        return _run_train(args, comm)
    except dist.DistributedError as e:
        print(f"pyllama train: error: {e}", file=sys.stderr, flush=True)
        comm.mark_failed(str(e))
        return 1
    except BaseException as e:
        # an error on some ranks only would leave the others waiting in a collective: after the
        # message is printed, the job is aborted when this process exits (MPI_Abort)
        comm.mark_failed(f"{type(e).__name__}: {e}")
        raise


def _run_train(args, comm) -> int:
    import pyllama

    if args.resume is not None:
        return _run_resume(args, comm)
    model_f, train_f, data_f = assemble(args)
    out_dir = train_f["out_dir"]
    if _step_dirs(out_dir) and not args.overwrite:
        raise ValueError(f"{out_dir!r} already holds a run ({os.path.basename(_step_dirs(out_dir)[-1][1])}): pass "
                         "--resume to continue it, --overwrite to start over, or another --out-dir")
    tc = TrainConfig.from_dict(train_f)  # validated before any work
    _set_timeout(comm, tc)
    if data_f.get("data"):
        train_data, val_data, tok = _prepared_dir(data_f["data"])
        tok_ref = os.path.abspath(os.path.join(data_f["data"], TOKENIZER_FILE)) if tok is not None else None
    else:
        corpus = data_f.get("corpus") or BUNDLED_CORPUS
        if comm.rank == 0:  # one rank trains the tokenizer and tokenizes; the others wait, then open the files
            train_data, val_data, tok = _data_from_corpus(corpus, data_f, out_dir)
        comm.barrier(what="waiting for rank 0 to prepare the data", timeout_s=24 * 3600.0)
        if comm.rank != 0:
            train_data, val_data, tok = _prepared_dir(os.path.join(out_dir, "data"))
        tok_ref = os.path.abspath(os.path.join(out_dir, "data", TOKENIZER_FILE))
    if data_f.get("init_from"):
        model = pyllama.Llama.from_pretrained(data_f["init_from"])
    else:
        if "vocab_size" not in model_f:
            n_vocab = tok.n_vocab if tok is not None else train_data.n_vocab
            if n_vocab is None:
                raise ValueError("cannot tell the vocabulary size: pass --vocab-size")
            model_f["vocab_size"] = int(n_vocab)
        model = pyllama.Llama(LlamaConfig(**model_f), seed=data_f["model_seed"])
    if args.overwrite and comm.rank == 0:
        _clear_run(out_dir)
    model.options = pyllama.BackendOptions.from_env()  # the CLI translates PYLLAMA_CUDA_* (the library reads none)
    trainer = Trainer(model, tc, train_data, val_data, tokenizer=tok, tokenizer_ref=tok_ref,
                      progress=False if args.no_progress else None, comm=comm)
    return _train_and_report(trainer, model, train_data, val_data)


def _run_dir_of(where: str) -> str:
    """The run folder of what ``--resume`` named, taken from the path as given (not from a
    recorded out_dir, nor by following ``latest``): a checkpoint folder's or ``latest``'s
    parent, else the named folder itself."""
    p = os.path.abspath(where)
    if os.path.basename(p) == "latest" or os.path.isfile(os.path.join(p, STATE_FILE)):
        return os.path.dirname(p)
    return p


def _run_resume(args, comm) -> int:
    import pyllama

    from_file = read_config_file(args.config) if args.config else {"model": {}, "train": {}, "data": {}}
    train_f, data_f = from_file["train"], from_file["data"]
    flags = _flag_values(args)
    changed = sorted(set(flags["model"]) | set(from_file["model"]))
    if changed:
        raise ValueError(f"--resume continues the checkpoint's model; these model options cannot change: "
                         f"{', '.join(changed)}")
    where = args.resume if isinstance(args.resume, str) else (flags["train"].get("out_dir") or DEFAULT_OUT)
    ckpt = resolve_checkpoint(where)
    state = load_trainer_state(ckpt)
    tc_fields = dict(state["train_config"])
    tc_fields.update(train_f)
    betas = flags["train"].pop("betas", None)
    tc_fields.update(flags["train"])
    if betas is not None:
        tc_fields["betas"] = tuple(tc_fields["betas"][i] if betas[i] is None else betas[i] for i in range(2))
    # The run goes on in the folder that holds the checkpoint (a copied or moved run writes
    # into the copy), never in the out_dir recorded in it; --out-dir (or the config file's
    # out_dir) continues it in another folder instead.
    explicit_out = flags["train"].get("out_dir") or train_f.get("out_dir")
    tc_fields["out_dir"] = os.path.abspath(explicit_out) if explicit_out else _run_dir_of(where)
    # Another number of ranks: keep the micro-batches per step (ranks x grad_accum_steps), so the
    # run continues exactly, unless grad_accum_steps was given.
    saved_w = int(state.get("world_size", 1))
    if saved_w != comm.world_size and "grad_accum_steps" not in train_f and "grad_accum_steps" not in flags["train"]:
        total = int(tc_fields.get("grad_accum_steps", 1)) * saved_w
        if total % comm.world_size == 0:
            tc_fields["grad_accum_steps"] = total // comm.world_size
            _say(comm, f"checkpoint trained on {saved_w} rank(s); {comm.world_size} rank(s) now: grad_accum_steps="
                       f"{tc_fields['grad_accum_steps']} keeps {total} micro-batches per step", file=sys.stderr)
    tc = TrainConfig.from_dict(tc_fields)
    _set_timeout(comm, tc)
    model = pyllama.Llama(LlamaConfig.from_dict(state["model_config"]), seed=None)
    data_dir = flags["data"].get("data") or data_f.get("data")
    if data_dir:
        train_data, val_data, _ = _prepared_dir(data_dir)
    else:
        td = (state.get("train_data") or {}).get("path")
        if not td:
            raise ValueError(f"checkpoint {ckpt!r} does not say where its training data is: pass --data")
        train_data = TokenData.open(td)
        vd = (state.get("val_data") or {}).get("path")
        val_data = TokenData.open(vd) if vd else None
    tok_path = os.path.join(ckpt, TOKENIZER_FILE)
    tok = _load_tokenizer(tok_path) if os.path.isfile(tok_path) else None
    model.options = pyllama.BackendOptions.from_env()  # the CLI translates PYLLAMA_CUDA_* (the library reads none)
    trainer = Trainer(model, tc, train_data, val_data, tokenizer=tok, tokenizer_ref=state.get("tokenizer"),
                      progress=False if args.no_progress else None, comm=comm)
    trainer.resume(ckpt)
    _say(comm, f"resumed from {ckpt} at step {trainer.step}", file=sys.stderr)
    return _train_and_report(trainer, model, train_data, val_data)


def _train_and_report(trainer: Trainer, model, train_data, val_data) -> int:
    tc = trainer.config
    comm = trainer.comm
    nt = pyllama_threads()
    if getattr(comm, "backend", "") == "nccl":
        ranks = f" on {comm.world_size} rank(s) (NCCL, one GPU each)"
    else:
        ranks = (f" on {comm.world_size} ranks (MPI, {nt} thread{'s' if nt != 1 else ''} each)"
                 if comm.world_size > 1 else "")
    _say(comm, f"model: {model!r}\ndata: {len(train_data):,} training tokens"
         + (f", {len(val_data):,} validation tokens" if val_data is not None else "")
         + f"\ntraining: {tc.max_steps} steps x {tc.tokens_per_step * comm.world_size:,} tokens{ranks} -> {tc.out_dir}",
         file=sys.stderr)
    r = trainer.train()
    if comm.rank != 0:
        return 0
    out = tc.out_dir
    lines = [f"{'stopped' if r['interrupted'] else 'finished'} at step {r['step']} in {r['seconds']:.1f}s"
             + (f": loss {r['loss']:.4f}" if r["loss"] is not None else "")
             + (f", validation loss {r['val_loss']:.4f}" if r["val_loss"] is not None else "")]
    if r["checkpoint"]:
        lines.append(f"checkpoint: {r['checkpoint']}")
        lines.append(f"latest:     {os.path.join(out, 'latest')}")
    lines.append(f"metrics:    {os.path.join(out, 'metrics.jsonl')}")
    if os.path.isfile(os.path.join(out, "loss.png")):
        lines.append(f"loss plot:  {os.path.join(out, 'loss.png')}")
    if r["checkpoint"]:
        lines.append(f"try:        pyllama generate --checkpoint {os.path.join(out, 'latest')} --prompt \"ROMEO:\"")
    if r["interrupted"]:
        lines.append(f"continue:   pyllama train --resume {out}")
    print("\n".join(lines))
    return 0


def pyllama_threads() -> int:
    from . import num_threads

    return int(num_threads())


def run_prepare(args) -> int:
    if args.tokenizer:
        tok = _load_tokenizer(args.tokenizer)
        ref = os.path.abspath(args.tokenizer)
    else:
        print(f"training a {args.vocab_size}-token BPE tokenizer on {args.input} ...", file=sys.stderr, flush=True)
        tok = _train_tokenizer(args.input, args.vocab_size)
        ref = None
    metas = prepare(args.input, tok, args.out, val_fraction=args.val_fraction, tokenizer_ref=ref,
                    progress=not args.no_progress and sys.stderr.isatty())
    for split in ("train", "val"):
        m = metas[split]
        print(f"{split}: {m['count']:,} tokens ({m['dtype']}) -> {os.path.join(args.out, split + '.bin')}")
    print(f"tokenizer: {os.path.join(args.out, TOKENIZER_FILE)}")
    return 0


# ---------------------------------------------------------------------- parsers

def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (default: a small preset on the bundled Shakespeare corpus)",
        description="Train a LLaMA model. With no arguments: trains a tokenizer and a ~2M-parameter model on the "
                    "Shakespeare corpus shipped with pyllama, into runs/shakespeare. Settings come from the preset, "
                    "then --config FILE.json (keys of LlamaConfig, TrainConfig and the data options, flat or under "
                    "\"model\"/\"train\"/\"data\"), then flags. [Values in brackets are the preset's.]")
    p.add_argument("--config", help="JSON run config")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue a run exactly: a step-N folder, a run folder or its 'latest' (default: --out-dir)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out-dir that already holds a run")
    p.add_argument("--threads", type=int, help="CPU threads for the core")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("data")
    d.add_argument("--corpus", help="text file or folder to train on (default: the bundled shakespeare.txt)")
    d.add_argument("--data", help="folder written by `pyllama prepare` (train.bin, val.bin, tokenizer.tiktoken)")
    d.add_argument("--tokenizer", help="tokenizer file for --corpus (default: train one)")
    d.add_argument("--tokenizer-vocab-size", type=int, help=f"vocabulary of a trained tokenizer [{DEFAULT_TOKENIZER_VOCAB}]")
    d.add_argument("--val-fraction", type=float, help="share of the corpus held out for validation [0.1]")
    m = p.add_argument_group("model (LlamaConfig)")
    m.add_argument("--init-from", help="start from a Hugging Face model folder instead of fresh weights")
    m.add_argument("--model-seed", type=int, help="seed of the fresh weights [0]")
    for name, typ in _MODEL_FLAGS.items():
        flag = {"num_hidden_layers": "layers", "num_attention_heads": "heads", "num_key_value_heads": "kv_heads"}.get(name, name)
        m.add_argument("--" + flag.replace("_", "-"), dest=name, type=typ, metavar="N" if typ is int else "X",
                       help=f"[{PRESET_MODEL.get(name, 'from the tokenizer' if name == 'vocab_size' else None)}]")
    m.add_argument("--tie-word-embeddings", action="store_true", help="share the embedding and output matrices")
    t = p.add_argument_group("training (TrainConfig)")
    for name, typ in _TRAIN_FLAGS.items():
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=typ,
                       metavar={int: "N", float: "X"}.get(typ, "DIR" if name == "out_dir" else "NAME"), help=f"[{PRESET_TRAIN[name]}]")
    t.add_argument("--no-decay-embeddings", action="store_true", help="no weight decay on the token embedding")
    t.add_argument("--zero1", action="store_true", default=None,
                   help="data parallel (mpiexec): shard the AdamW moments over the ranks (ZeRO-1)")
    t.add_argument("--beta1", type=float, help=f"[{PRESET_TRAIN['betas'][0]}]")
    t.add_argument("--beta2", type=float, help=f"[{PRESET_TRAIN['betas'][1]}]")
    p.set_defaults(func=run_train)

    q = sub.add_parser("prepare", help="tokenize a text file or folder into train/val token files",
                       description="Tokenize INPUT (a UTF-8 text file, or every file in a folder) into OUT/train.bin "
                                   "and OUT/val.bin (uint16 when the vocabulary fits, else uint32) with JSON sidecars; "
                                   "the tokenizer is saved there too (tokenizer.tiktoken + .json, and a Hugging Face tokenizer.json).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("input", help="text file or folder")
    q.add_argument("--tokenizer", help="tokenizer file (Tokenizer.save or .tiktoken); default: train one on INPUT")
    q.add_argument("--vocab-size", type=int, default=DEFAULT_TOKENIZER_VOCAB, help="vocabulary of a trained tokenizer")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--val-fraction", type=float, default=0.1, help="share held out for validation (end of each file)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_prepare)
