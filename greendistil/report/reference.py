"""Published reference figures to set a run beside: DistilBERT against BERT-base (Sanh et al. 2019).

These are the paper's figures, not measurements of this package: GLUE dev macro-score from its Table 1,
parameters and CPU inference time from its Table 3.
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
