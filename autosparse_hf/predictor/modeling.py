"""``AutoSModel``: the AutoS predictor as a transformers ``PreTrainedModel``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import AutoSConfig
from .losses import pairwise_ranking_loss


@dataclass
class AutoSOutput(ModelOutput):
    """Predicted scores (higher = keep) and, with labels, the loss."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _paper_fc(num_features: int) -> nn.Sequential:
    sizes = [num_features, 16, 64, 1024, 1024, 64]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 1))
    return nn.Sequential(*layers)


class _PaperResNet18(nn.Module):
    """The paper's default predictor: features lifted to a 3x32x32 tensor, then a ResNet-18 with one output."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.lift = nn.Sequential(nn.Linear(num_features, 256), nn.ReLU(), nn.Linear(256, 3 * 32 * 32))
        self.backbone = resnet18(num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.lift(x).view(-1, 3, 32, 32))


class AutoSModel(PreTrainedModel):
    r"""AutoS: predicts a weight's IRP surviving score from its features at initialization.

    AutoSparse (Liu et al. 2024, arXiv 2408.14757): train once on the surviving scores of one IRP run, then prune
    new networks before training by keeping the weights with the highest predictions. Inputs are raw feature vectors
    (``autosparse_hf.features.layer_feature_matrix``); the standardization fitted at training time is part of the
    config and applied here.

    Example:
        ```python
        >>> predictor = AutoSModel.from_pretrained("outputs/autos")
        >>> masks = autosparse_hf.prune_at_init(model, "autos", 0.95, loader,
        ...                                     criterion_options={"predictor": predictor})
        ```
    """

    config_class = AutoSConfig
    base_model_prefix = "autos"
    main_input_name = "features"

    def __init__(self, config: AutoSConfig) -> None:
        super().__init__(config)
        f = config.num_inputs
        if config.architecture == "mlp":
            self.net = _mlp([f, *config.hidden_sizes, 1])
        elif config.architecture == "paper_fc":
            self.net = _paper_fc(f)
        else:
            self.net = _PaperResNet18(f)
        self.register_buffer("feature_mean", torch.tensor(config.feature_mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(config.feature_std, dtype=torch.float32))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Keep torch's default initializations; they suit these small networks.
        return

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the standardization of the training features, in the buffers and in the config (so it saves)."""
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.config.feature_mean = [float(v) for v in mean]
        self.config.feature_std = [float(v) for v in std]

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        group: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        **kwargs,  # noqa: ANN003 - the Trainer may pass extra keys
    ) -> AutoSOutput:
        """Scores of the rows of ``features`` (``(n, num_inputs)``); with ``labels``, the loss.

        ``group`` (tensor id per row) restricts ranking pairs to one tensor; ``weight`` weights rows in the loss
        (e.g. so that every tensor counts alike).
        """
        x = (features.float() - self.feature_mean) / self.feature_std
        scores = self.net(x).squeeze(-1)
        loss = None
        if labels is not None:
            labels = labels.float()
            if self.config.loss == "ranking":
                loss = pairwise_ranking_loss(scores, labels, group)
            else:
                if self.config.loss == "mse":
                    per_row = (scores - labels) ** 2
                else:
                    per_row = nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none")
                loss = (per_row * weight).sum() / weight.sum() if weight is not None else per_row.mean()
        return AutoSOutput(loss=loss, scores=scores)

    @torch.no_grad()
    def fold_inputs(self, constants: dict[int, float]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The MLP's first layer with the input standardization and the constant input columns folded in.

        For rows whose columns ``constants`` (index -> value) hold the same value, ``predict`` equals
        :meth:`predict_folded` on the remaining columns with the returned weight and bias, up to float32 rounding
        (the sums are associated differently). Scoring a tensor this way skips the standardization and the layer's
        constant columns (layer context, the membership density). Only the ``mlp`` architecture folds.

        Returns:
            ``(variable_columns, weight, bias)``.
        """
        if self.config.architecture != "mlp":
            raise ValueError(f"only the mlp architecture folds its inputs, not {self.config.architecture!r}")
        first = self.net[0]
        weight = first.weight / self.feature_std  # x_std = (x - mean) / std, so W x_std = (W / std) x - (W / std) mean
        bias = first.bias - weight @ self.feature_mean
        columns = [j for j in range(weight.shape[1]) if j not in constants]
        if constants:
            index = torch.tensor(list(constants), dtype=torch.long)
            values = torch.tensor(list(constants.values()), dtype=torch.float32)
            bias = bias + weight[:, index] @ values
        return columns, weight[:, columns].t().contiguous(), bias

    @torch.no_grad()
    def predict_folded(self, features: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Scores of the variable columns of rows, with a first layer from :meth:`fold_inputs` (eval mode); returns
        a CPU tensor, like :meth:`predict`."""
        hidden = torch.addmm(bias, features.to(weight_t.device), weight_t)
        for module in list(self.net)[1:]:
            if isinstance(module, nn.ReLU):
                hidden.relu_()
            else:
                hidden = torch.addmm(module.bias, hidden, module.weight.t())
        return hidden.squeeze(-1).float().cpu()

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        """Scores for a feature matrix ``(n, F)``, in chunks (bounded memory), in eval mode; returns a CPU tensor."""
        was_training = self.training
        self.eval()
        device = self.feature_mean.device
        out = torch.empty(features.shape[0], dtype=torch.float32)
        for start in range(0, features.shape[0], batch_size):
            chunk = features[start : start + batch_size].to(device)
            out[start : start + chunk.shape[0]] = self(chunk).scores.float().cpu()
        self.train(was_training)
        return out


# AutoModel.from_pretrained loads an AutoS predictor folder once this module is imported (it imports the config's).
AutoModel.register(AutoSConfig, AutoSModel, exist_ok=True)
