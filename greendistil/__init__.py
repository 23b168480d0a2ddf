"""greendistil: knowledge distillation of BERT-family models with every run's FLOPs, energy and CO2 measured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greendistil.runlog.frame import load_runs

if TYPE_CHECKING:
    import pandas as pd

__version__ = "0.1.0"
__all__ = ["glue_table", "load_runs", "__version__"]


def glue_table(frame: pd.DataFrame, **options: Any) -> pd.DataFrame:
    """DistilBERT's Table 1 from a `load_runs` frame (see `greendistil.report.glue.glue_table`)."""
    from greendistil.report.glue import glue_table as build  # the report package draws with matplotlib

    return build(frame, **options)
