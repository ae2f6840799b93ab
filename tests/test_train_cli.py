"""`pyllama train` and `pyllama prepare` end to end (tiny sizes)."""
import json
import os

import numpy as np
import pytest

import pyllama
from pyllama.cli import main
from pyllama.data import prepare

TINY = ["--hidden-size", "32", "--intermediate-size", "64", "--layers", "1", "--heads", "2",
        "--max-position-embeddings", "64", "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "2",
        "--eval-interval", "3", "--eval-steps", "2", "--no-progress", "--threads", "1"]


class ByteTokenizer:
    n_vocab = 256

    def encode_ordinary(self, text):
        return list(text.encode("utf-8"))


@pytest.fixture
def data_dir(tmp_path):
    text = "".join(f"To be, or not to be, that is question {i}.\n" for i in range(300))
    (tmp_path / "c.txt").write_text(text)
    prepare(tmp_path / "c.txt", ByteTokenizer(), tmp_path / "data")
    return str(tmp_path / "data")


def test_train_then_resume_from_cli(tmp_path, data_dir, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", data_dir, "--out-dir", out, "--max-steps", "4", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint:" in printed and os.path.join(out, "latest") in printed
    assert os.path.isdir(os.path.join(out, "latest")) and os.path.isfile(os.path.join(out, "latest", "config.json"))
    cfg = json.load(open(os.path.join(out, "latest", "config.json")))
    assert cfg["vocab_size"] == 256 and cfg["hidden_size"] == 32
    # a second fresh run in the same folder is refused with advice
    assert main(["train", "--data", data_dir, "--out-dir", out, "--max-steps", "4", *TINY]) == 1
    assert "--resume" in capsys.readouterr().err
    # resume with a longer schedule continues at step 4
    assert main(["train", "--resume", out, "--max-steps", "6", "--no-progress"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "val_loss" in rows[2] and "val_loss" in rows[5]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(rows[0])
    assert os.path.realpath(os.path.join(out, "latest")).endswith("step-6")


def test_config_file_and_bad_values(tmp_path, data_dir, capsys):
    conf = tmp_path / "run.json"
    conf.write_text(json.dumps({"model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "max_position_embeddings": 64},
                                "train": {"batch_size": 2, "seq_len": 16, "max_steps": 2, "warmup_steps": 1,
                                          "eval_interval": 0, "out_dir": str(tmp_path / "r")},
                                "data": {"data": data_dir}}))
    assert main(["train", "--config", str(conf), "--no-progress"]) == 0
    assert os.path.isdir(tmp_path / "r" / "step-2")
    assert main(["train", "--config", str(conf), "--lr", "-1", "--overwrite"]) == 1
    assert "TrainConfig.lr" in capsys.readouterr().err
    assert main(["train", "--config", str(conf), "--seq-len", "128", "--overwrite"]) == 1
    assert "max_position_embeddings" in capsys.readouterr().err
    assert main(["train", "--config", str(conf), "--vocab-size", "100", "--overwrite"]) == 1
    assert "vocab_size" in capsys.readouterr().err
    conf.write_text(json.dumps({"learning_rate": 1}))
    assert main(["train", "--config", str(conf)]) == 1
    assert "learning_rate" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(pyllama, "Tokenizer"), reason="needs pyllama.Tokenizer")
def test_prepare_command_with_a_trained_tokenizer(tmp_path, capsys):
    text = "".join(f"ROMEO: what light through yonder window {i} breaks?\n" for i in range(200))
    (tmp_path / "c.txt").write_text(text)
    assert main(["prepare", str(tmp_path / "c.txt"), "--vocab-size", "300", "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 0
    tok = pyllama.Tokenizer.load(str(tmp_path / "d" / "tokenizer.tiktoken"))
    from pyllama.data import TokenData

    train, val = TokenData.open(tmp_path / "d" / "train.bin"), TokenData.open(tmp_path / "d" / "val.bin")
    ids = np.concatenate([train.tokens, val.tokens]).tolist()
    assert ids == tok.encode_ordinary(text)  # pieces encode exactly like the whole text
    assert main(["prepare", str(tmp_path / "c.txt"), "--tokenizer", str(tmp_path / "d" / "tokenizer.tiktoken"),
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert np.array_equal(TokenData.open(tmp_path / "e" / "train.bin").tokens, train.tokens)


class FakeTokenizer:
    """The pyllama.Tokenizer API on bytes (for the CLI path that trains a tokenizer)."""

    trained = 0

    def __init__(self, n_vocab=256):
        self.n_vocab = n_vocab

    @classmethod
    def train(cls, texts_or_path, vocab_size, pattern="cl100k"):
        cls.trained += 1
        return cls(vocab_size)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f)["n_vocab"])

    def save(self, path):  # as Tokenizer.save: the vocabulary at path, metadata at path + ".json"
        with open(path, "w") as f:
            json.dump({"n_vocab": self.n_vocab}, f)
        with open(path + ".json", "w") as f:
            json.dump({"n_vocab": self.n_vocab}, f)

    def encode_ordinary(self, text):
        return list(text.encode("utf-8"))


def test_corpus_run_trains_tokenizer_once_and_saves_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pyllama, "Tokenizer", FakeTokenizer, raising=False)
    FakeTokenizer.trained = 0
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"Now is the winter of our discontent {i}.\n" for i in range(300)))
    out = str(tmp_path / "run")
    args = ["train", "--corpus", str(corpus), "--tokenizer-vocab-size", "300", "--out-dir", out,
            "--max-steps", "3", *TINY]
    assert main(args) == 0
    assert FakeTokenizer.trained == 1
    assert json.load(open(os.path.join(out, "latest", "config.json")))["vocab_size"] == 300
    assert os.path.isfile(os.path.join(out, "latest", "tokenizer.tiktoken"))
    state = json.load(open(os.path.join(out, "latest", "trainer_state.json")))
    assert state["tokenizer"].endswith(os.path.join("data", "tokenizer.tiktoken"))
    assert main(args + ["--overwrite"]) == 0  # prepared data reused
    assert FakeTokenizer.trained == 1
    assert "using prepared data" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(pyllama, "Tokenizer"), reason="needs pyllama.Tokenizer")
def test_default_run_on_the_bundled_corpus(tmp_path, capsys):
    # `pyllama train` with the preset, cut to two small steps
    out = str(tmp_path / "shakespeare")
    assert main(["train", "--out-dir", out, "--max-steps", "2", "--batch-size", "2", "--eval-steps", "1",
                 "--no-progress"]) == 0
    ck = os.path.join(out, "latest")
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json",
            "tokenizer.tiktoken", "tokenizer.tiktoken.json", "tokenizer.json"} <= set(os.listdir(ck))
    tok = pyllama.Tokenizer.load(os.path.join(ck, "tokenizer.tiktoken"))
    cfg = json.load(open(os.path.join(ck, "config.json")))
    assert cfg["vocab_size"] == tok.n_vocab == 1024 and cfg["hidden_size"] == 192
    assert "pyllama generate --checkpoint" in capsys.readouterr().out
    # the checkpoint generates text through the generate command
    assert main(["generate", "--checkpoint", ck, "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
