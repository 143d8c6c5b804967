"""The positive control: the ResNet18 pretrained on labels."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import MethodConfigError
from benchmark.method import PretrainingContext, SSLMethod
from benchmark.registry import register_method

LABEL_SOURCES = ("pool", "fold")


@register_method("supervised")
class Supervised(SSLMethod):
    """Supervised pretraining: the ResNet18 and a head classify volumes as normal or anomalous.

    The positive control and upper bound of every table, never a competitor: it deliberately
    uses labels beyond the cell being evaluated. With ``labels: pool`` it trains on the labels
    of the pretraining pool (the cohort's ``unlabelled_truth.csv``, volumes without one
    skipped), once per run; with ``labels: fold`` on the labelled training volumes of each
    fold, once per seed and fold. Class-weighted cross-entropy (w_j = n / (2 n_j)), as in
    fine-tuning; the views, optimiser and schedule of every other method. Supervised
    pretraining is the reference point that SSL is measured against since Doersch et al.,
    "Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015.
    """

    reference = "supervised pretraining as the upper bound (e.g. Chen et al., ICML 2020, Table 8)"
    role = "positive_control"

    @classmethod
    def scope(cls, settings) -> str:
        """``labels: fold`` pretrains once per (seed, fold) on that fold's training labels."""
        cls._check_labels(settings.labels)
        return "fold" if settings.labels == "fold" else "run"

    @staticmethod
    def _check_labels(labels: str) -> None:
        if labels not in LABEL_SOURCES:
            raise MethodConfigError(
                f"method.supervised.labels must be one of {', '.join(LABEL_SOURCES)}, "
                f"got {labels!r}"
            )

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self._check_labels(settings.labels)
        self.head = nn.Sequential(
            nn.Linear(backbone.feature_dim, settings.head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(settings.head_hidden, 2),
        )
        self.row_labels: Tensor | None = None  # [cohort] long, -1 = not trained on
        self.class_weights: Tensor | None = None  # [2]
        self._rows: tuple[np.ndarray, np.ndarray] | None = None

    def check_settings(self, batch_size: int) -> None:
        self.require_batches_of(batch_size, 2, "BatchNorm normalises over the batch")

    def prepare(self, context: PretrainingContext) -> None:
        """Which volumes it trains on and their labels; the class weights of those labels."""
        row_labels = torch.full((context.cohort_size,), -1, dtype=torch.long)
        if self.settings.labels == "fold":
            train, val = context.labelled_training_rows(), context.validation_rows()
            row_labels[train] = context.labels(train)
            row_labels[val] = context.labels(val)
        else:
            truth = context.pool_labels(context.pretraining_pool_rows)
            if truth is None:
                raise MethodConfigError(
                    f"method.supervised.labels=pool needs the labels of the pretraining pool in "
                    f"{context.manifest.parent / 'unlabelled_truth.csv'} (subject_id, side, "
                    "label), which this cohort lacks; set method.supervised.labels=fold to "
                    "train on each fold's labelled training volumes instead"
                )
            row_labels[context.pretraining_pool_rows] = truth
            known = row_labels.numpy() >= 0
            train = context.pool_rows[known[context.pool_rows]]
            val = context.pool_val_rows[known[context.pool_val_rows]]
        counts = torch.bincount(row_labels[train], minlength=2)
        if (counts == 0).any():
            raise MethodConfigError(
                f"{context.unit.title}: its {len(train)} labelled training volumes hold "
                f"{counts[0]} normal and {counts[1]} anomalous ones; supervised pretraining "
                "needs both classes (more labels, or method.supervised.labels=fold)"
            )
        self.row_labels = row_labels
        self.class_weights = counts.sum() / (2 * counts.float())
        self._rows = (train, val)
        context.notes["supervised_volumes"] = {"train": len(train), "val": len(val)}
        context.log(
            f"{context.unit.title}: supervised on {len(train)} labelled volumes "
            f"({counts[1]} anomalous) from the {self.settings.labels}, {len(val)} for validation"
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Once on the training device: a step then gathers labels there (no host copy per step).
        self.row_labels = self.row_labels.to(self.device)
        self.class_weights = self.class_weights.to(self.device)

    def pretraining_rows(self, context: PretrainingContext) -> tuple[np.ndarray, np.ndarray]:
        """The labelled volumes ``prepare`` chose, not the unlabelled pool."""
        return self._rows

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        view, _ = self.augment(batch["image"])
        labels = self.row_labels[batch["row"]]
        logits = self.head(self.backbone(view)).float()
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy}
