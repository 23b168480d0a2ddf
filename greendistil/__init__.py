"""greendistil: knowledge distillation of BERT-family models with every run's FLOPs, energy and CO2 measured."""

from greendistil.runlog.frame import load_runs

__version__ = "0.1.0"
__all__ = ["load_runs", "__version__"]
