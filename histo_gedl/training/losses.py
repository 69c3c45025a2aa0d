"""Dice plus cross-entropy for targets in which some nucleus pixels have no interior/boundary class.

With only definite classes (0 background, 1 interior, 2 boundary) the loss
equals MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``: soft Dice per
image and class, averaged, plus the mean cross-entropy. Pixels labelled
:data:`~histo_gedl.training.targets.UNKNOWN_FOREGROUND` (3) count as nucleus:
their cross-entropy is ``-log(p_interior + p_boundary)``, they take part in the
background channel's Dice, and they are left out of the interior and boundary
channels' Dice.

``contact_weight`` raises the cross-entropy of boundary pixels where two
nuclei touch, because those pixels decide whether the watershed splits them.
This is a simpler form of the weight map of Ronneberger et al. (U-Net, 2015).
A contact pixel is a boundary pixel none of whose four neighbours is
background. In targets from ``three_class_target``, every rim pixel of a
nucleus that touches only background has a background neighbour.
"""

from __future__ import annotations

import math

import torch

from histo_gedl.training.targets import BACKGROUND, BOUNDARY, UNKNOWN_FOREGROUND, check_boundary_width

SMOOTH = 1e-5  # MONAI's default smoothing of the Dice numerator and denominator


def contact_pixels(target: torch.Tensor, boundary_width: int = 1) -> torch.Tensor:
    """Return a bool mask (B, H, W) of boundary pixels farther than ``boundary_width`` steps from background.

    Steps go to the four neighbours (city-block distance). With a rim one
    pixel thick, these are the boundary pixels with no background neighbour,
    which lie where two nuclei touch. A thicker rim (``boundary_width`` of
    :func:`~histo_gedl.training.targets.three_class_target`) needs the same
    width here, or its inner layers count as contacts. Pixels outside the
    patch count as background, so a nucleus cut by the patch edge does not
    make contacts there.

    NOTE: the loss receives augmented targets. Rotations by angles other than
    quarter turns (``arbitrary_rotation``) and elastic deformation resample
    the target by nearest neighbour, which can leave a rim pixel without a
    background neighbour, so some rims of lone nuclei then count as contacts.

    Args:
        target: (B, H, W) integer classes, 2 for boundary.
        boundary_width: thickness of the boundary rim in pixels.
    """
    near = (target == BACKGROUND).to(torch.float32)[:, None]
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=target.device)
    for _ in range(boundary_width):
        padded = torch.nn.functional.pad(near, (1, 1, 1, 1), value=1.0)
        near = (torch.nn.functional.conv2d(padded, cross[None, None]) > 0).to(torch.float32)
    return (target == BOUNDARY) & (near[:, 0] == 0)


class PartialDiceCELoss(torch.nn.Module):
    """Soft Dice + cross-entropy over three classes, with a fourth target value for "nucleus, class unknown".

    Args:
        contact_weight: extra cross-entropy weight of contact pixels (see
            :func:`contact_pixels`): their weight is ``1 + contact_weight``.
            0 gives the plain loss. The weighted sum is divided by the pixel
            count, not by the sum of weights, so a larger weight also raises
            the loss as a whole.
        boundary_width: thickness of the boundary rim in the targets, which
            :func:`contact_pixels` needs to tell contacts from inner rim layers.
    """

    def __init__(self, contact_weight: float = 0.0, boundary_width: int = 1) -> None:
        super().__init__()
        if not 0.0 <= contact_weight < math.inf:
            raise ValueError(f"contact_weight must be a finite number >= 0, got {contact_weight!r}")
        self.contact_weight = float(contact_weight)
        self.boundary_width = check_boundary_width(boundary_width)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss.

        Args:
            logits: (B, 3, H, W) raw scores for background, interior, boundary.
            target: (B, H, W) or (B, 1, H, W) integers in 0..3.
        """
        if target.ndim == 4:
            target = target[:, 0]
        if logits.shape[1] != 3:
            raise ValueError(f"PartialDiceCELoss needs 3 classes, got logits of shape {tuple(logits.shape)}")
        target = target.long()
        known = target != UNKNOWN_FOREGROUND
        definite = torch.where(known, target, torch.zeros_like(target))
        log_p = torch.log_softmax(logits, dim=1)

        nll_known = -log_p.gather(1, definite[:, None])[:, 0]
        nll_unknown = -torch.logsumexp(log_p[:, 1:], dim=1)
        nll = torch.where(known, nll_known, nll_unknown)
        if self.contact_weight:
            nll = nll * (1.0 + self.contact_weight * contact_pixels(target, self.boundary_width))
        cross_entropy = nll.mean()

        p = log_p.exp()
        onehot = torch.nn.functional.one_hot(definite, 3).permute(0, 3, 1, 2).to(p.dtype)
        onehot = onehot * known[:, None]  # unknown pixels: background target 0, others masked below
        mask = torch.ones_like(p)
        mask[:, 1:] = known[:, None].to(p.dtype)
        intersection = (p * onehot * mask).sum(dim=(2, 3))
        denominator = (p * mask).sum(dim=(2, 3)) + (onehot * mask).sum(dim=(2, 3))
        dice = 1.0 - (2.0 * intersection + SMOOTH) / (denominator + SMOOTH)
        return dice.mean() + cross_entropy
