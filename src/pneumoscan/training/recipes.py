"""Which engine trains a :class:`~pneumoscan.config.TrainConfig`, and the entry points that start
and resume a training run (``pneumoscan train``, the walkthrough, the tests).

The two engines are siblings: :class:`pneumoscan.training.engine.Trainer` trains one model on a
patient-level validation split; :class:`pneumoscan.training.ensemble.EnsembleTrainer` builds on it
to train members on one stem. Choosing between them here, above both, keeps ``engine`` free of any
import of ``ensemble``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pneumoscan.config import TrainConfig
from pneumoscan.models.architectures import architecture
from pneumoscan.models.artifacts import RunFolder
from pneumoscan.training.engine import Trainer
from pneumoscan.training.ensemble import EnsembleTrainer


def trainer_for(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, progress: bool = True):
    """The engine for ``cfg``: the cross-fitted ensemble for a pretrained architecture with
    ``members > 1`` (:mod:`pneumoscan.training.ensemble`), else one model on a validation split."""
    if cfg.members > 1 and architecture(cfg.arch).pretrained:
        return EnsembleTrainer(cfg, data_dir, run_dir, progress=progress)
    return Trainer(cfg, data_dir, run_dir, progress=progress)


def train(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Train ``cfg.arch`` on ``data_dir`` into ``run_dir``; returns the validation metrics."""
    return trainer_for(cfg, data_dir, run_dir, progress=progress).run()


def resume(run_dir: str | Path, *, progress: bool = True) -> dict:
    """Continue an interrupted run from its last checkpoint, with the options it was started with."""
    run_dir = Path(run_dir)
    config_path = RunFolder(run_dir).config
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {run_dir} a pneumoscan run folder?")
    record = json.loads(config_path.read_text())
    cfg = TrainConfig.from_dict(record)
    return trainer_for(cfg, record["data_dir"], run_dir, progress=progress).run(resume=True)
