"""Train: classifier heads on cached features, evaluation, optional end-to-end fine-tuning."""
from vidfeat.training._train import TrainResult, evaluate, train
from vidfeat.training.dataset import FeatureDataset
from vidfeat.training.heads import LinearHead, MLPHead

__all__ = ["FeatureDataset", "LinearHead", "MLPHead", "TrainResult", "evaluate", "train"]
