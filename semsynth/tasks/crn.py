"""The `crn` task: layout -> k images, perceptual (or per-class min-over-k diversity) loss against
the photo (SPEC A.4), plus the optional adversarial term `loss.adversarial` (not part of CRN;
see `losses.AdversarialLoss`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..labels import LabelSpace, colorize, one_hot
from ..losses import build_adversarial, build_loss
from ..models import build_model, model_config
from .base import Task, register_task


@register_task("crn")
class CRNTask(Task):
    def __init__(self, cfg: dict, space: LabelSpace, device: torch.device):
        self.space = space
        self.model_config = model_config(cfg["model"], num_classes=space.num_classes, **cfg.get("model_overrides", {}))
        self.model = build_model(self.model_config)
        loss_cfg = cfg.get("loss", {})
        self.loss_fn = build_loss(
            {k: v for k, v in loss_cfg.items() if k not in ("backbone_path", "adversarial")},
            loss_cfg.get("backbone_path"),
        ).to(device)
        self.critic = build_adversarial(loss_cfg.get("adversarial"), space.num_classes + 1)
        if self.critic is not None:
            self.critic.to(device)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The generator's loss (with a critic: judged by the discriminator as the trainer has
        just updated it on this batch)."""
        label = one_hot(batch["label"], self.space.num_classes)
        fake = model(label)
        loss, logs = self.loss_fn(fake, batch["image"], label)
        if self.critic is not None:
            adv, adv_logs = self.critic.generator_loss(fake, batch["image"], label)
            logs.update(adv_logs, **{"loss/perceptual": loss.detach()})
            loss = loss + adv
        return loss, logs

    def discriminator_loss(self, model: nn.Module, disc: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The critic's hinge loss on the photo vs every one of the k outputs of the generator as
        it is before this step's update (the same outputs `loss` then computes, pix2pix's order)."""
        label = one_hot(batch["label"], self.space.num_classes)
        with torch.no_grad():
            fake = model(label)
        return self.critic.discriminator_loss(fake, batch["image"], label, disc)

    def state_dict(self) -> dict:
        """The discriminator's weights (its optimiser is the trainer's) for resume."""
        return {"adversarial": self.critic.state_dict()} if self.critic is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.critic is not None:
            if "adversarial" not in state:
                raise ConfigError(
                    "this run has loss.adversarial but its checkpoint holds no discriminator; "
                    "start a new run folder (init_from the old one) instead of resuming"
                )
            self.critic.load_state_dict(state["adversarial"])

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """One row per example: layout colours | photo | k outputs."""
        label = one_hot(batch["label"], self.space.num_classes)
        fake = model(label).clamp(0, 1)
        rows = []
        for b in range(fake.shape[0]):
            lay = torch.from_numpy(colorize(batch["label"][b], self.space)).permute(2, 0, 1).float() / 255
            tiles = [lay.to(fake.device), batch["image"][b]] + list(fake[b])
            rows.append(torch.cat(tiles, dim=2))
        return torch.cat(rows, dim=1)
