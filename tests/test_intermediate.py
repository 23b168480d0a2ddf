"""Intermediate-layer distillation (TinyBERT, MiniLM, MiniLMv2): each term against a hand computation on tiny
tensors, the recomputed attention against the eager path's, the layer-map validation, the projections'
shapes, taps only where a term reads, and tiny runs end to end (a narrower scratch student on the task; the
corpus objective, then the student's task training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from builders import section_of, stage_record, write_run
from conftest import tiny_config, write_config, write_sst2, write_tiny_config
from greendistil.cli import main
from greendistil.config import DistillStage, load_config
from greendistil.data.batching import EncodedSplit
from greendistil.errors import ConfigError
from greendistil.models.taps import AttentionTaps
from greendistil.report.frame import load_report_frame
from greendistil.report.objectives import objectives_section
from greendistil.stages.corpus_heldout import evaluate_terms
from greendistil.train.intermediate import hidden_mse, relation_kl, relation_log_probs
from greendistil.train.matching import MatchedStudent, Shape, default_hidden_pairs, intermediate_terms, resolve_match

TEACHER = Shape(num_layers=6, hidden_size=8, num_heads=2)


def test_hidden_mse_averages_over_real_tokens_only() -> None:
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2); the last token is padding
    teacher = torch.tensor([[[0.0, 2.0], [3.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_mse(student, teacher, mask).item() == pytest.approx((1 + 0 + 0 + 9) / 4)
    empty = hidden_mse(student.requires_grad_(), teacher, torch.zeros(1, 3))
    assert empty.item() == 0.0 and empty.requires_grad


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exp = [math.exp(x - top) for x in row]
    return [e / sum(exp) for e in exp]


def test_relation_probabilities_and_kl_by_hand() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0]])  # (B=1, T=4): three real tokens
    query, key = torch.randn(1, 4, 4), torch.randn(1, 4, 4)  # two heads of two dims
    log_probs = relation_log_probs(query, key, mask, num_heads=2)  # (1, 2, 4, 4)
    for head in range(2):
        q, k = query[0, :, 2 * head:2 * head + 2].tolist(), key[0, :, 2 * head:2 * head + 2].tolist()
        for i in range(3):
            scores = [sum(a * b for a, b in zip(q[i], k[j])) / math.sqrt(2) for j in range(3)]
            expected = _softmax(scores) + [0.0]  # the padded key gets nothing
            assert log_probs[0, head, i].exp().tolist() == pytest.approx(expected, abs=1e-6)
    other = relation_log_probs(torch.randn(1, 4, 4), key, mask, num_heads=2)
    total = 0.0
    for head in range(2):
        for i in range(3):  # real queries only
            p, q = log_probs[0, head, i, :3].exp().tolist(), other[0, head, i, :3].exp().tolist()
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert relation_kl(log_probs, other, mask).item() == pytest.approx(total / 6, rel=1e-5)
    assert relation_kl(log_probs, log_probs, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_relations_stay_in_fp32_under_a_bf16_autocast() -> None:
    """A KL of near-equal distributions is a difference of log-probabilities: bf16 would round it away."""
    torch.manual_seed(0)
    mask = torch.ones(2, 5)
    query, key = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    reference = relation_kl(relation_log_probs(query, key, mask, 2), relation_log_probs(query * 1.01, key, mask, 2), mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs = relation_log_probs(query, key, mask, 2)
        kl = relation_kl(log_probs, relation_log_probs(query * 1.01, key, mask, 2), mask)
        mse = hidden_mse(query, key, mask)
    assert log_probs.dtype == kl.dtype == mse.dtype == torch.float32
    assert kl.item() == pytest.approx(reference.item(), rel=1e-6) and kl.item() > 0


def test_recomputed_attention_equals_the_eager_paths_distributions() -> None:
    """The taps' queries and keys give exactly the probabilities eager attention returns (eval: no dropout)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    ids, mask = torch.randint(5, 50, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with AttentionTaps(model, [1], ("query", "key")) as taps, torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        tapped = taps.take()
    ours = relation_log_probs(tapped[(1, "query")], tapped[(1, "key")], mask, num_heads=4).exp()
    real = mask.bool()[:, None, :, None].expand_as(ours)  # compare the real queries' rows
    assert torch.allclose(ours[real], out.attentions[1][real], atol=1e-6)


def test_taps_hook_only_the_layers_and_parts_asked_for_and_come_off() -> None:
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                     num_attention_heads=4, intermediate_size=32))

    def hooked() -> set[str]:
        return {name for name, module in model.named_modules() if module._forward_hooks}

    with AttentionTaps(model, [2], ("query", "key")) as taps:
        assert hooked() == {"bert.encoder.layer.2.attention.self.query", "bert.encoder.layer.2.attention.self.key"}
        model(input_ids=torch.randint(5, 50, (1, 5)))
        assert set(taps.take()) == {(2, "query"), (2, "key")} and taps.take() == {}
    assert hooked() == set()


def test_default_layer_maps() -> None:
    student = Shape(num_layers=3, hidden_size=8, num_heads=2)
    assert default_hidden_pairs(student, TEACHER, (0, 2, 4)) == ((0, 0), (1, 2), (2, 4))  # copied from
    assert default_hidden_pairs(student, TEACHER, ()) == ((0, 1), (1, 3), (2, 5))  # uniform, last to last
    match = resolve_match(DistillStage(alpha_attn=1.0), student, TEACHER, (0, 2, 4), "stages.1")
    assert match.relation_pairs == ((2, 5),) and match.weights == {"loss_attn": 1.0}
    assert match.tapped_parts() == ("query", "key") and match.relation_heads == 2


@pytest.mark.parametrize(("stage", "student", "message"), [
    (DistillStage(alpha_hidden=1.0, hidden_layer_map=((0, 6),)), Shape(num_layers=3, hidden_size=8, num_heads=2),
     "stages.1.hidden_layer_map: teacher layer 6 in [[0, 6]] is out of range; the teacher has 6 layers, valid 0..5"),
    (DistillStage(alpha_qkv=1.0, relation_layer_map=((3, 5),)), Shape(num_layers=3, hidden_size=8, num_heads=2),
     "stages.1.relation_layer_map: student layer 3 in [[3, 5]] is out of range; the student has 3 layers, valid 0..2"),
    (DistillStage(alpha_attn=1.0, alpha_cos=0.0), Shape(num_layers=3, hidden_size=8, num_heads=4),
     "stages.1.alpha_attn: MiniLM's attention KL compares head by head, and the student has 4 heads, the teacher 2"),
    (DistillStage(alpha_qkv=1.0, relation_heads=3, alpha_cos=0.0), Shape(num_layers=3, hidden_size=4, num_heads=2),
     "stages.1.relation_heads: 3 relation heads must divide both widths (student 4, teacher 8)"),
    (DistillStage(alpha_hidden=1.0), Shape(num_layers=3, hidden_size=4, num_heads=2),
     "stages.1.alpha_cos: 1 compares the last hidden states, which needs equal widths (student 4, teacher 8)"),
])
def test_layer_map_and_term_validation(stage: DistillStage, student: Shape, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_match(stage, student, TEACHER, (), "stages.1")
    assert str(caught.value).startswith(message)


def test_config_refuses_malformed_maps_and_terms_the_objective_cannot_use(tmp_path: Path) -> None:
    for stage, fragment in (({"hidden_layer_map": [[0, 1, 2]]}, "stages.1.hidden_layer_map"),
                            ({"hidden_layer_map": [[0, 1], [0, 2]]}, "each student layer at most once"),
                            ({"objective": "mlm", "alpha_qkv": 1.0}, "stages.1.objective")):
        raw = tiny_config(tmp_path / "glue", tmp_path / "runs")
        raw["stages"][1].update(stage)
        with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
            load_config(write_config(tmp_path / "bad.toml", raw))


def test_projection_shapes_for_a_narrower_student() -> None:
    student_shape = Shape(num_layers=2, hidden_size=4, num_heads=2)
    stage = DistillStage(alpha_hidden=1.0, alpha_qkv=1.0, relation_heads=2, alpha_cos=0.0, hidden_embeddings=True)
    match = resolve_match(stage, student_shape, TEACHER, (), "stages.1")
    student = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=4, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=8))
    wrapped = MatchedStudent(student, match)
    assert tuple(wrapped.projection.weight.shape) == (8, 4) and tuple(wrapped.embedding_projection.weight.shape) == (8, 4)
    out, projected = wrapped(input_ids=torch.randint(5, 50, (3, 5)), attention_mask=torch.ones(3, 5, dtype=torch.long))
    assert [tuple(p.shape) for p in projected] == [(3, 5, 8)] * 3  # embeddings + two mapped layers
    teacher_hidden = tuple(torch.randn(3, 5, 8) for _ in range(7))
    mask = torch.ones(3, 5)
    student_taps = {(1, p): torch.randn(3, 5, 4, requires_grad=True) for p in ("query", "key", "value")}
    teacher_taps = {(5, p): torch.randn(3, 5, 8) for p in ("query", "key", "value")}
    terms = intermediate_terms(match, projected, teacher_hidden, student_taps, teacher_taps, mask)
    assert set(terms) == {"loss_hidden", "loss_qkv"}
    expected = sum(hidden_mse(s, teacher_hidden[t], mask) for s, t in zip(projected, (0, 3, 6)))
    assert terms["loss_hidden"].item() == pytest.approx(expected.item())
    sum(terms.values()).backward()
    assert wrapped.projection.weight.grad is not None and student_taps[(1, "query")].grad is not None


# --- tiny runs end to end ------------------------------------------------------------------------------------

def test_held_out_terms_are_means_over_sequences_in_eval_mode_by_hand() -> None:
    """evaluate_terms on 5 sequences of lengths 3, 1, 2, 5, 4 in batches of 2 (sorted by length: [1, 2],
    [3, 4], [5]): a term that is a batch's mean real length averages to the mean length, 3.0; one that is
    the batch's padded length weighs each batch by its sequences: (2*2 + 4*2 + 5) / 5 = 3.4."""
    lengths = [3, 1, 2, 5, 4]
    split = EncodedSplit(input_ids=[[7] * n for n in lengths], token_type_ids=[[0] * n for n in lengths],
                         labels=torch.zeros(5, dtype=torch.long))
    module, seen_modes = torch.nn.Linear(2, 2), []

    def student(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        seen_modes.append((module.training, torch.is_inference_mode_enabled()))
        return batch["attention_mask"].sum(dim=1).float().mean()

    def teacher(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tensor(float(batch["attention_mask"].shape[1]))

    result = evaluate_terms(split, teacher_forward=teacher, student_forward=student,
                            terms=lambda s, t, mask: {"loss_hidden": s, "loss_cos": t},
                            weights={"loss_hidden": 2.0, "loss_cos": 0.5}, modules=(module,), batch_size=2,
                            pad_token_id=0, device=torch.device("cpu"))
    assert result.terms == pytest.approx({"loss_hidden": 3.0, "loss_cos": 3.4})
    assert result.loss == pytest.approx(2.0 * 3.0 + 0.5 * 3.4) and result.num_sequences == 5
    assert [tokens for _, tokens in result.student_flop_counts] == [2 * 2, 2 * 4, 1 * 5]
    assert seen_modes == [(False, True)] * 3 and module.training  # eval inside, train mode given back
    assert result.as_metrics("general_student", "_after") == {
        "general_student.heldout_loss_after": result.loss, "general_student.heldout_loss_hidden_after": 3.0,
        "general_student.heldout_loss_cos_after": pytest.approx(3.4)}


@pytest.mark.parametrize("heldout", [False, True])
def test_the_objectives_section_shows_held_out_terms_where_recorded(tmp_path: Path, heldout: bool) -> None:
    metrics = ({"student.heldout_loss_before": 2.5, "student.heldout_loss_after": 1.25,
                "student.heldout_loss_hidden_before": 2.5, "student.heldout_loss_hidden_after": 1.25}
               if heldout else {})
    record = stage_record("r", "distill", "distill", "student", cpu=0.1, gpu=None, ram=0.1, flops=1e12,
                          num_examples=10, task=None, metrics=metrics,
                          details={"objective": "corpus", "alpha_hidden": 1.0, "mean_loss": {"loss_hidden": 0.5},
                                   "heldout": {"num_sequences": 4}})
    section = objectives_section(load_report_frame([write_run(tmp_path, "r", "sst2", [record])]))
    assert section.startswith("## Distillation objectives") and "\n\n\n" not in section
    assert ("hidden MSE: 2.5 → 1.25" in section) is heldout
    assert ("### The corpus objective on held-out lines" in section) is heldout


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_a_narrower_scratch_student_distils_with_hidden_and_relation_terms(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue")
    config = write_tiny_config(tmp_path, glue, {
        "student": {"layers": None, "init": "scratch", "hidden_size": 16, "num_layers": 1, "num_heads": 4,
                    "intermediate_size": 32},
        "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
                   {"kind": "distill", "batch_size": 16, "epochs": 2, "alpha_cos": 0.0, "alpha_hidden": 1.0,
                    "alpha_qkv": 1.0, "relation_heads": 2, "log_every_steps": 1},
                   {"kind": "evaluate", "roles": ["teacher", "student"]}]})
    assert main(["run", str(config), "--no-progress", "--run-id", "narrow"]) == 0
    distill = _records(tmp_path / "runs" / "narrow")[1]
    details = distill["details"]
    assert details["student_shape"] == "1 layers, hidden 16, 4 heads, FFN 32"
    assert distill["model"].startswith("student(scratch: 1 layers, hidden 16")
    inner = details["intermediate"]
    assert inner["terms"] == {"loss_hidden": 1.0, "loss_qkv": 1.0} and inner["projection"] == "linear 16 -> 32"
    assert inner["hidden_layer_map"] == [[0, 1]] and inner["relation_layer_map"] == [[0, 1]]
    assert inner["attention_taps"] == {"student_layers": [0], "teacher_layers": [1], "parts": ["query", "key", "value"]}
    assert {"loss_hidden", "loss_qkv"} <= set(details["mean_loss"]) and "loss_cos" not in details["mean_loss"]
    cache = details["teacher_cache"]  # 2 epochs: the second is served, with the parts the terms read
    assert cache["used"] is True and cache["parts"] == ["hidden:2", "query:1", "key:1", "value:1"]
    assert cache["num_batches_stored"] == cache["num_batches_served"] == 4
    assert distill["flops"] > 0 and set(distill["flops_by_component"]) == {"teacher_forward", "student_train"}
    report = (tmp_path / "runs" / "narrow" / "report" / "report.md").read_text(encoding="utf-8")
    objectives = section_of(report, "## Distillation objectives")
    assert "1 layers, hidden 16, 4 heads, FFN 32" in objectives and "hidden MSE ×1: " in objectives
    assert "Q/K/V-relation KL ×1: " in objectives and "relations [[0, 1]]" in objectives
    assert "student (task distillation) [task: soft-target KL + task loss + hidden MSE + Q/K/V-relation KL]" in report


@pytest.mark.slow
def test_the_corpus_objective_needs_no_mlm_head_and_feeds_the_students_finetune(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the {a} was {b} and {c}" for a in ("film", "play", "show", "story")
                                for b in ("good", "bad", "long") for c in ("fun", "dull", "slow")) + "\n")
    config = write_tiny_config(tmp_path, glue, {
        "corpus": {"source": "files", "paths": [str(corpus)], "heldout_examples": 4, "max_seq_length": 16},
        "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
                   {"kind": "distill", "objective": "corpus", "batch_size": 8, "epochs": 1, "alpha_hidden": 1.0,
                    "alpha_attn": 1.0, "alpha_value": 1.0},
                   {"kind": "finetune", "name": "finetune-student", "role": "student", "batch_size": 16},
                   {"kind": "evaluate", "roles": ["teacher", "student"]}]})
    assert main(["run", str(config), "--no-progress", "--run-id", "corpus"]) == 0
    records = _records(tmp_path / "runs" / "corpus")
    assert [(r["stage"], r["status"]) for r in records] == [
        ("finetune", "ok"), ("distill", "ok"), ("finetune-student", "ok"), ("evaluate", "ok")]
    distill = records[1]["details"]
    assert distill["objective"] == "corpus" and distill["mlm_head"].startswith("not trained")
    assert set(distill["mean_loss"]) >= {"loss_cos", "loss_hidden", "loss_attn", "loss_value"}
    assert distill["intermediate"]["attention_taps"]["parts"] == ["query", "key", "value"]
    assert records[2]["model"].startswith("checkpoint:") and records[3]["metrics"]["student.accuracy"] >= 0
    # the terms on the 4 held-out lines, before and after: the weighted loss is their sum (all weights 1)
    metrics, terms = records[1]["metrics"], ("loss_cos", "loss_hidden", "loss_attn", "loss_value")
    assert distill["heldout"] == {"num_sequences": 4}
    for when in ("before", "after"):
        assert metrics[f"student.heldout_loss_{when}"] == pytest.approx(
            sum(metrics[f"student.heldout_{t}_{when}"] for t in terms))
    assert metrics["student.heldout_loss_before"] != metrics["student.heldout_loss_after"]
    flops = records[1]["flops_by_component"]
    assert flops["teacher_heldout_forward"] > 0 and flops["student_heldout_forward"] > 0
    assert records[1]["flops"] == pytest.approx(sum(flops.values()))
    report = (tmp_path / "runs" / "corpus" / "report" / "report.md").read_text(encoding="utf-8")
    heldout = section_of(report, "### The corpus objective on held-out lines")
    assert "hidden MSE: " in heldout and " → " in heldout


def test_bad_intermediate_input_exits_2_before_anything_is_written(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    glue = write_sst2(tmp_path / "glue")
    config = write_tiny_config(tmp_path, glue, {"stages": [
        {"kind": "finetune", "role": "teacher"}, {"kind": "distill", "alpha_hidden": 1.0, "hidden_layer_map": [[0, 2]]}]})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("greendistil: error: stages.1.hidden_layer_map: teacher layer 2 in [[0, 2]] is out of range; the "
                   "teacher has 2 layers, valid 0..1")
    assert not (tmp_path / "runs").exists()
    narrow = write_tiny_config(tmp_path, glue, {"student": {"layers": None, "init": "scratch", "hidden_size": 16}},
                               name="narrow.toml")
    assert main(["run", str(narrow), "--no-progress"]) == 2
    assert "stages.1.alpha_cos: 1 compares the last hidden states, which needs equal widths (student 16, teacher 32)" \
        in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_run_with_projections_resumed_mid_stage_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    """The projections are trained state: the step checkpoint holds them, so a distillation stopped by a real
    SIGINT and resumed ends bit for bit where the uninterrupted run ends (the student and its loss)."""
    import subprocess
    import sys

    from builders import student_weights, subprocess_env

    glue = write_sst2(tmp_path / "glue")
    config = write_tiny_config(tmp_path, glue, {
        "student": {"layers": None, "init": "scratch", "hidden_size": 16, "num_layers": 1, "num_heads": 4},
        "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
                   {"kind": "distill", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3, "alpha_cos": 0.0,
                    "alpha_hidden": 1.0, "hidden_embeddings": True, "alpha_qkv": 1.0, "relation_heads": 2}]})

    def run(run_id: str, signal_at: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "greendistil", "run", str(config), "--no-progress", "--run-id",
                               run_id], cwd=tmp_path, env=subprocess_env(signal_at), capture_output=True, text=True,
                              timeout=300)

    assert run("reference", None).returncode == 0
    assert run("stopped", "step:distill:5:SIGINT").returncode == 130
    assert main(["run", "--resume", str(tmp_path / "runs" / "stopped"), "--no-progress"]) == 0
    reference, resumed = _records(tmp_path / "runs" / "reference"), _records(tmp_path / "runs" / "stopped")
    assert [r["status"] for r in resumed if r["stage"] == "distill"] == ["interrupted", "ok"]
    assert resumed[-1]["resumed_from_step"] == 4
    assert resumed[-1]["details"]["final_loss"] == reference[-1]["details"]["final_loss"]
    expected, weights = student_weights(tmp_path / "runs" / "reference"), student_weights(tmp_path / "runs" / "stopped")
    assert expected.keys() == weights.keys() and not any(".projection" in key for key in weights)
    assert all(torch.equal(expected[key], weights[key]) for key in expected)
