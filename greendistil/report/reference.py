"""Published reference figures to set a run beside: DistilBERT against BERT-base (Sanh et al. 2019).

These are the paper's figures, not measurements of this package: GLUE dev macro-score and per-task figures
from its Table 1, parameters and CPU inference time from its Table 3.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class PublishedComparison:
    """A teacher/student pair as a paper reports it."""

    citation: str
    teacher_name: str
    student_name: str
    teacher_num_params: int
    student_num_params: int
    score_name: str
    teacher_score: float
    student_score: float
    teacher_inference_s: float
    student_inference_s: float
    inference_setup: str
    speedup_claim: str  # the paper's own wording

    @property
    def param_ratio(self) -> float:
        """student / teacher parameters."""
        return self.student_num_params / self.teacher_num_params

    @property
    def score_retention(self) -> float:
        """student / teacher score."""
        return self.student_score / self.teacher_score

    @property
    def inference_speedup(self) -> float:
        """teacher time / student time."""
        return self.teacher_inference_s / self.student_inference_s


DISTILBERT = PublishedComparison(
    citation="Sanh, Debut, Chaumond and Wolf (2019), DistilBERT, a distilled version of BERT: smaller, "
             "faster, cheaper and lighter. arXiv:1910.01108",
    teacher_name="BERT-base", student_name="DistilBERT",
    teacher_num_params=110_000_000, student_num_params=66_000_000,
    score_name="GLUE dev macro-score", teacher_score=79.5, student_score=77.0,
    teacher_inference_s=668.0, student_inference_s=410.0,
    inference_setup="one full pass over STS-B on CPU, batch size 1",
    speedup_claim="60% faster",
)


@dataclass(frozen=True, kw_only=True)
class PublishedGlueRow:
    """One model's row of a paper's GLUE dev table: one figure per task (×100), as printed."""

    model: str
    citation: str
    score: float  # the paper's own macro score over the tasks it reports
    task_scores: dict[str, float]  # task -> the paper's figure (one per task: the paper gives no split)

    def macro_over(self, tasks: tuple[str, ...]) -> float | None:
        """The unweighted mean of the paper's figures over `tasks`; None if the paper lacks one of them."""
        if not tasks or any(task not in self.task_scores for task in tasks):
            return None
        return sum(self.task_scores[task] for task in tasks) / len(tasks)


_TABLE_1 = ("Sanh et al. (2019), DistilBERT, Table 1: GLUE dev sets, medians of 5 runs with different seeds "
            "(arXiv:1910.01108)")

# Table 1 of the DistilBERT paper. Its BERT-base score is 79.5 while the mean of the nine figures below is 79.7;
# the paper does not say why (DistilBERT's 77.0 is the mean of its own figures). Reports quote the paper's score
# where all nine tasks are compared and the mean of the figures over the same tasks otherwise.
BERT_BASE_GLUE = PublishedGlueRow(
    model="BERT-base", citation=_TABLE_1, score=79.5,
    task_scores={"cola": 56.3, "mnli": 86.7, "mrpc": 88.6, "qnli": 91.8, "qqp": 89.6, "rte": 69.3, "sst2": 92.7,
                 "stsb": 89.0, "wnli": 53.5},
)
DISTILBERT_GLUE = PublishedGlueRow(
    model="DistilBERT", citation=_TABLE_1, score=77.0,
    task_scores={"cola": 51.3, "mnli": 82.2, "mrpc": 87.5, "qnli": 89.2, "qqp": 88.5, "rte": 59.9, "sst2": 91.3,
                 "stsb": 86.9, "wnli": 56.3},
)
PUBLISHED_GLUE_ROWS = (BERT_BASE_GLUE, DISTILBERT_GLUE)
