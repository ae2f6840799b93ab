"""pyllama's benchmarks, in one package.

- :mod:`pyllama.bench.cpu`: the CPU suite, each benchmark beside its reference
  (``python -m pyllama.bench``, ``pyllama bench``); its names are exported here.
- :mod:`pyllama.bench.gpu`: the CUDA backend beside PyTorch on the same GPU
  (``python -m pyllama.bench.gpu``; ``bench/gpu.py`` wraps it).
- :mod:`pyllama.bench.references`: the PyTorch / Hugging Face reference models.
- :mod:`pyllama.bench.common`: timing, machine description and JSON shared by both.
- :mod:`pyllama.bench.scripts`: the command lines of the single-benchmark scripts in ``bench/``.
"""
from .common import _cpu_name, _loadavg, _stats, best_ratio, log, paired_ratio, race, timed, write_json
from .cpu import (BENCHMARKS, CONFIG_15M, CONFIG_124M, CONFIG_DECODE, CONFIG_TINY, MATMUL_SHAPES,
                  MATMUL_SHAPES_QUICK, VOCAB_SPECIALS, _fix_peak_rows, _fmt, _row, _sample_peak, _scale_point,
                  _scale_row, _tiktoken_from, add_arguments, bench_bpe, bench_decode, bench_encode, bench_machine,
                  bench_matmul, bench_prefill, bench_scale_t, bench_scale_width, bench_train, bench_train_step,
                  decode_weight_bytes, default_text_path, find_vocab_file, format_table, load_encode_pair, main,
                  measure_bandwidth, measure_peak, plot_scaling, read_text, register, run_from_args, run_suite,
                  set_blas_threads, set_threads, summary)
from .references import (_import_torch, _import_transformers, _state_dict_of, build_plain_llama, hf_llama_config,
                         hf_llama_from, hf_model, plain_llama_from, torch_ok)

__all__ = [
    # common
    "_cpu_name", "_loadavg", "_stats", "best_ratio", "log", "paired_ratio", "race", "timed", "write_json",
    # cpu
    "BENCHMARKS", "CONFIG_15M", "CONFIG_124M", "CONFIG_DECODE", "CONFIG_TINY", "MATMUL_SHAPES",
    "MATMUL_SHAPES_QUICK", "VOCAB_SPECIALS", "_fix_peak_rows", "_fmt", "_row", "_sample_peak", "_scale_point",
    "_scale_row", "_tiktoken_from", "add_arguments", "bench_bpe", "bench_decode", "bench_encode", "bench_machine",
    "bench_matmul", "bench_prefill", "bench_scale_t", "bench_scale_width", "bench_train", "bench_train_step",
    "decode_weight_bytes", "default_text_path", "find_vocab_file", "format_table", "load_encode_pair", "main",
    "measure_bandwidth", "measure_peak", "plot_scaling", "read_text", "register", "run_from_args", "run_suite",
    "set_blas_threads", "set_threads", "summary",
    # references
    "_import_torch", "_import_transformers", "_state_dict_of", "build_plain_llama", "hf_llama_config",
    "hf_llama_from", "hf_model", "plain_llama_from", "torch_ok",
]
