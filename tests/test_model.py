"""The saved bi-encoder loads with transformers.AutoModel and with sentence-transformers, and
both give the embeddings BiEncoder.encode gives."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_bert_dir
from hybrid_dist.models.biencoder import BiEncoder

TEXTS = ["How many points did the defense give up?", "Wie viele Punkte gab die Verteidigung ab?",
         "黑豹队的防守丢了多少分？", "short", "ทีมรับของแพนเธอร์สเสียไปกี่แต้ม"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = tmp_path_factory.mktemp("model")
    model = BiEncoder.from_pretrained(tiny_bert_dir(base / "init", seed=3), query_prefix="q> ", passage_prefix="p> ",
                                      max_length=24)
    with torch.no_grad():  # move off the init so a reload that ignored the weights would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.save_pretrained(base / "saved")
    return model, out


def test_settings_round_trip(saved):
    model, path = saved
    again = BiEncoder.from_pretrained(path)
    assert (again.pooling, again.normalize, again.prefixes, again.max_length) == (
        "mean", True, {"query": "q> ", "passage": "p> "}, 24)
    torch.testing.assert_close(again.encode(TEXTS, "query"), model.encode(TEXTS, "query"), atol=1e-6, rtol=0)


def test_automodel_mean_pooling_matches(saved):
    from transformers import AutoModel, AutoTokenizer

    model, path = saved
    encoder, tokenizer = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["p> " + t for t in TEXTS], padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(emb, model.encode(TEXTS, "passage"), atol=1e-5, rtol=0)


def test_sentence_transformers_matches(saved):
    from sentence_transformers import SentenceTransformer

    model, path = saved
    st = SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 24
    for kind in ("query", "passage"):
        got = st.encode(TEXTS, prompt_name=kind, convert_to_tensor=True)
        torch.testing.assert_close(got.cpu(), model.encode(TEXTS, kind), atol=1e-5, rtol=0)
    assert json.loads((path / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"


def test_cls_pooling_and_no_normalisation(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = BiEncoder.from_pretrained(tiny_bert_dir(tmp_path / "init"), pooling="cls", normalize=False)
    emb = model.encode(TEXTS, "query")
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(len(TEXTS)))
    path = model.save_pretrained(tmp_path / "saved")
    st = SentenceTransformer(str(path), device="cpu")
    torch.testing.assert_close(st.encode(TEXTS, prompt_name="query", convert_to_tensor=True).cpu(), emb, atol=1e-5, rtol=0)
    assert BiEncoder.from_pretrained(path).pooling == "cls"


def test_save_replaces_atomically(saved, tmp_path):
    model, _ = saved
    target = tmp_path / "m"
    model.save_pretrained(target)
    (target / "marker").write_text("old")
    model.save_pretrained(target)
    assert not (target / "marker").exists() and (target / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or old directories left


def test_bad_pooling():
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(None, None, pooling="max")  # type: ignore[arg-type]
