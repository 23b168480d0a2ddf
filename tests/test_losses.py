"""Each distillation loss term against values computed by hand (plain `math`, no torch losses)."""

from __future__ import annotations

import math

import pytest
import torch

from greendistil.train.losses import (hidden_cosine, masked_token_accuracy, mlm_cross_entropy, soft_target_kl, soft_target_mse, task_loss)


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- soft_target_kl -------------------------------------------------------------------------------------------

def test_kl_1x2_at_t1_closed_form() -> None:
    # teacher [1, 0] -> p = (e/(e+1), 1/(e+1)); student [0, 0] -> q = (1/2, 1/2)
    # KL(p || q) = p1 log(2 p1) + p2 log(2 p2); T^2 = 1
    p1 = math.e / (math.e + 1)
    p2 = 1 / (math.e + 1)
    expected = p1 * math.log(2 * p1) + p2 * math.log(2 * p2)
    assert expected == pytest.approx(0.1109440717, abs=1e-9)
    got = soft_target_kl(t([[0.0, 0.0]]), t([[1.0, 0.0]]), temperature=1.0)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_1x2_at_t2_includes_t_squared() -> None:
    # at T = 2 the teacher logits become [0.5, 0]: p1 = e^0.5 / (e^0.5 + 1); student stays uniform.
    # The loss is T^2 = 4 times the KL of the softened distributions.
    p1 = math.exp(0.5) / (math.exp(0.5) + 1)
    p2 = 1 - p1
    softened_kl = p1 * math.log(2 * p1) + p2 * math.log(2 * p2)
    expected = 4 * softened_kl
    assert expected == pytest.approx(0.1211994479, abs=1e-9)
    got = soft_target_kl(t([[0.0, 0.0]]), t([[1.0, 0.0]]), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # without the T^2 factor the value would be 4x smaller: make sure it is there
    assert got.item() != pytest.approx(softened_kl, rel=1e-2)


STUDENT_2x3 = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
TEACHER_2x3 = [[3.0, 2.0, 1.0], [0.0, 2.0, 0.0]]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_2x3_mean_over_rows_times_t_squared(temperature: float) -> None:
    per_row = [kl(softmax(teacher, temperature), softmax(student, temperature))
               for student, teacher in zip(STUDENT_2x3, TEACHER_2x3)]
    expected = (per_row[0] + per_row[1]) / 2 * temperature**2  # mean over the N = 2 rows, not the sum
    got = soft_target_kl(t(STUDENT_2x3), t(TEACHER_2x3), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_2x3_at_t1_by_hand() -> None:
    # Row 1: teacher [3,2,1] and student [1,2,3] are mirror images, so with Z = e^3 + e^2 + e:
    #   p = (e^3, e^2, e)/Z, q = (e, e^2, e^3)/Z, log(p_i/q_i) = (2, 0, -2)
    #   KL_1 = 2 (e^3 - e) / Z
    # Row 2: teacher [0,2,0] -> p = (1, e^2, 1)/(e^2 + 2); student uniform q_i = 1/3
    #   KL_2 = sum p_i log(3 p_i) = log 3 + sum p_i log p_i
    e = math.e
    z = e**3 + e**2 + e
    kl_1 = 2 * (e**3 - e) / z
    z2 = e**2 + 2
    p = [1 / z2, e**2 / z2, 1 / z2]
    kl_2 = math.log(3) + sum(pi * math.log(pi) for pi in p)
    expected = (kl_1 + kl_2) / 2
    got = soft_target_kl(t(STUDENT_2x3), t(TEACHER_2x3), temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_direction_teacher_to_student() -> None:
    # KL(p_teacher || q_student), not the reverse: swapping the arguments changes the value here.
    forward = kl(softmax(TEACHER_2x3[1]), softmax(STUDENT_2x3[1]))
    reverse = kl(softmax(STUDENT_2x3[1]), softmax(TEACHER_2x3[1]))
    assert forward != pytest.approx(reverse, rel=1e-2)
    got = soft_target_kl(t([STUDENT_2x3[1]]), t([TEACHER_2x3[1]]), temperature=1.0)
    assert got.item() == pytest.approx(forward, rel=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 8.0])
def test_kl_is_zero_when_student_equals_teacher(temperature: float) -> None:
    logits = t([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0], [0.0, 0.0, 0.0]])
    got = soft_target_kl(logits, logits.clone(), temperature)
    assert got.item() == pytest.approx(0.0, abs=1e-6)


def test_kl_ignores_a_constant_shift_of_the_logits() -> None:
    student = t(STUDENT_2x3)
    teacher = t(TEACHER_2x3)
    assert soft_target_kl(student + 10.0, teacher - 3.0, 2.0).item() == pytest.approx(
        soft_target_kl(student, teacher, 2.0).item(), rel=1e-5)


def test_kl_gradient_reaches_the_student_only() -> None:
    student = t(STUDENT_2x3).requires_grad_()
    teacher = t(TEACHER_2x3)
    soft_target_kl(student, teacher, 2.0).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


# --- task_loss ------------------------------------------------------------------------------------------------

def test_task_loss_cross_entropy_by_hand() -> None:
    # logits [[2, 0], [0, 1]], labels [0, 0]
    # row 1: -log(e^2 / (e^2 + 1)) = log(1 + e^-2); row 2: -log(1 / (1 + e)) = log(1 + e); mean of the two
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    got = task_loss(t([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), is_regression=False)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_task_loss_cross_entropy_three_classes() -> None:
    # logits [1, 2, 3], label 2: -log(e^3 / (e + e^2 + e^3))
    expected = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    got = task_loss(t([[1.0, 2.0, 3.0]]), torch.tensor([2]), is_regression=False)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_task_loss_regression_mse_by_hand() -> None:
    # predictions (N, 1) [1, 2, 4] vs labels [1.5, 2, 3]: ((-0.5)^2 + 0^2 + 1^2) / 3 = 1.25 / 3
    got = task_loss(t([[1.0], [2.0], [4.0]]), t([1.5, 2.0, 3.0]), is_regression=True)
    assert got.item() == pytest.approx(1.25 / 3, rel=1e-6)


def test_task_loss_regression_accepts_integer_labels() -> None:
    got = task_loss(t([[1.0], [3.0]]), torch.tensor([0, 5]), is_regression=True)
    assert got.item() == pytest.approx((1 + 4) / 2, rel=1e-6)


# --- soft_target_mse ------------------------------------------------------------------------------------------

def test_soft_target_mse_by_hand() -> None:
    # student (N, 1) [1, 2, 3] vs teacher (N,) [2, 2, 5]: (1 + 0 + 4) / 3
    got = soft_target_mse(t([[1.0], [2.0], [3.0]]), t([2.0, 2.0, 5.0]))
    assert got.item() == pytest.approx(5 / 3, rel=1e-6)


def test_soft_target_mse_zero_for_equal_predictions() -> None:
    x = t([[0.3], [-1.2], [4.0]])
    assert soft_target_mse(x, x.clone()).item() == 0.0


# --- hidden_cosine --------------------------------------------------------------------------------------------

def test_hidden_cosine_identical_is_zero() -> None:
    hidden = t([[[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]])
    mask = torch.ones(1, 2, dtype=torch.long)
    assert hidden_cosine(hidden, hidden.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_same_direction_any_length_is_zero() -> None:
    teacher = t([[[1.0, 2.0, 3.0]]])
    assert hidden_cosine(teacher * 5.0, teacher, torch.ones(1, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_opposite_is_two() -> None:
    teacher = t([[[1.0, 2.0, 3.0], [0.0, -4.0, 1.0]]])
    assert hidden_cosine(-teacher, teacher, torch.ones(1, 2)).item() == pytest.approx(2.0, abs=1e-6)


def test_hidden_cosine_orthogonal_is_one() -> None:
    student = t([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    teacher = t([[[0.0, 3.0, 0.0], [1.0, -1.0, 5.0]]])  # dot products 0 and 0
    assert hidden_cosine(student, teacher, torch.ones(1, 2)).item() == pytest.approx(1.0, abs=1e-6)


def test_hidden_cosine_mean_over_real_tokens_by_hand() -> None:
    # B=2, T=3; real tokens: (0,0) identical -> 0, (0,1) 60 degrees apart -> 1 - 1/2, (1,0) opposite -> 2
    # mean over the 3 real tokens = (0 + 0.5 + 2) / 3
    student = t([[[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]],
                 [[1.0, 1.0], [5.0, -5.0], [7.0, 0.0]]])
    teacher = t([[[2.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 3.0]],
                 [[-1.0, -1.0], [1.0, 2.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert hidden_cosine(student, teacher, mask).item() == pytest.approx(2.5 / 3, rel=1e-5)


def test_hidden_cosine_ignores_padded_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 8, generator=generator)
    teacher = torch.randn(2, 4, 8, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    before = hidden_cosine(student, teacher, mask).item()
    student2, teacher2 = student.clone(), teacher.clone()
    student2[0, 3] = torch.randn(8, generator=generator) * 100
    teacher2[1, 2:] = -student2[1, 2:]  # would be 1 - cos = 2 at these positions if they counted
    after = hidden_cosine(student2, teacher2, mask).item()
    assert after == pytest.approx(before, rel=1e-6)
    # ... while changing a real position does change it
    student2[0, 0] = -teacher2[0, 0]
    assert hidden_cosine(student2, teacher2, mask).item() != pytest.approx(before, rel=1e-3)


def test_hidden_cosine_weights_tokens_not_sequences() -> None:
    # Sequence 0 has 3 real tokens with loss 0, sequence 1 has 1 real token with loss 2:
    # the per-token mean is 2 / 4 = 0.5 (a per-sequence mean would give 1.0).
    teacher = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    student = teacher.clone()
    student[1, 0] = -teacher[1, 0]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert hidden_cosine(student, teacher, mask).item() == pytest.approx(0.5, rel=1e-6)


def test_hidden_cosine_accepts_a_bool_mask() -> None:
    teacher = t([[[1.0, 0.0], [0.0, 1.0]]])
    student = t([[[-1.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    assert hidden_cosine(student, teacher, mask).item() == pytest.approx(2.0, abs=1e-6)


# --- MLM terms of general distillation ---------------------------------------------------------------------------

VOCAB_LOGITS = [[2.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]]  # N = 3 positions, V = 4


def test_mlm_cross_entropy_by_hand_skips_minus_100() -> None:
    # labels [0, -100, 1]: row 1 predicts token 0, row 2 is not masked, row 3 predicts token 1.
    # row 1: -log(e^2 / (e^2 + 1 + e + e^-1)); row 3: -log(e^3 / (e + e^3 + 2)); the mean over the 2 rows.
    e = math.e
    row_1 = -math.log(e**2 / (e**2 + 1 + e + 1 / e))
    row_3 = -math.log(e**3 / (e + e**3 + 2))
    got = mlm_cross_entropy(t(VOCAB_LOGITS), torch.tensor([0, -100, 1]))
    assert got.item() == pytest.approx((row_1 + row_3) / 2, rel=1e-6)


def test_mlm_cross_entropy_of_a_batch_without_masked_tokens_is_zero_with_a_gradient() -> None:
    logits = t(VOCAB_LOGITS).requires_grad_()
    loss = mlm_cross_entropy(logits, torch.tensor([-100, -100, -100]))
    assert loss.item() == 0.0
    loss.backward()  # no NaN, and the step can still run
    assert logits.grad is not None and (logits.grad == 0).all()


def test_masked_token_accuracy_counts_masked_positions_only() -> None:
    # argmax per row: 0, 0 (a tie: the first), 1. Labels [0, -100, 2]: row 1 right, row 3 wrong.
    assert masked_token_accuracy(t(VOCAB_LOGITS), torch.tensor([0, -100, 2])) == (1, 2)
    assert masked_token_accuracy(t(VOCAB_LOGITS), torch.tensor([-100, -100, -100])) == (0, 0)


def test_vocabulary_kl_over_masked_positions_by_hand() -> None:
    """L_ce restricted to the masked positions: the KL over the vocabulary of the selected rows only,
    averaged over them, times T^2 (what `ce_on_masked_only` computes)."""
    student = t([VOCAB_LOGITS])  # (B=1, T=3, V=4)
    teacher = t([[[0.0, 2.0, 1.0, -1.0], [5.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]]])
    masked = torch.tensor([[True, False, True]])
    temperature = 2.0
    rows = [kl(softmax(teacher[0, i].tolist(), temperature), softmax(student[0, i].tolist(), temperature))
            for i in (0, 2)]
    expected = sum(rows) / 2 * temperature**2  # row 3 is identical: KL 0, but it still counts in the mean
    assert rows[1] == pytest.approx(0.0, abs=1e-9)
    got = soft_target_kl(student[masked], teacher[masked], temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    every = soft_target_kl(student.view(3, 4), teacher.view(3, 4), temperature)
    assert every.item() != pytest.approx(got.item(), rel=1e-2)  # the unmasked row 2 differs a lot


def test_soft_target_kl_over_no_positions_is_zero_not_nan() -> None:
    """MLM distillation restricted to masked positions: a batch of short lines can have none masked. The
    mean over zero rows was NaN and stopped a real run at step 611; it must be a 0 that backpropagates."""
    student = torch.zeros(0, 7, requires_grad=True)
    loss = soft_target_kl(student, torch.zeros(0, 7), temperature=2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 7)
