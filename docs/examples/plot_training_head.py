"""
Training a G-CRF head (PyTorch)
===============================

A small segmentation network whose last layer is the Potts G-CRF,
:class:`lowrank_gcrf.adapters.torch.GCRFHead`, trained end to end for a few steps on toy
scenes: a few squares of one class on a noisy background. The class is written in the
squares' colour, too faint to read pixel by pixel; pixels of one square can pool their
evidence through the G-CRF.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_gcrf.adapters.torch import GCRFHead

torch.manual_seed(0)
LABELS, SIZE = 4, 32  # background + 3 classes


def scenes(count, generator):
    """Images (count, 3, SIZE, SIZE) and label maps: squares of one class per scene."""
    images = 0.8 * torch.randn(count, 3, SIZE, SIZE, generator=generator)
    targets = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for i in range(count):
        label = int(torch.randint(1, LABELS, (1,), generator=generator))
        for _ in range(3):
            r, c = torch.randint(0, SIZE - 8, (2,), generator=generator).tolist()
            images[i, :, r : r + 8, c : c + 8] += 0.5  # an object: brighter
            images[i, label - 1, r : r + 8, c : c + 8] += 0.4  # its class: a faint tint
            targets[i, r : r + 8, c : c + 8] = label
    return images, targets


generator = torch.Generator().manual_seed(0)
train_images, train_targets = scenes(64, generator)
test_images, test_targets = scenes(8, generator)

backbone = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
)
model = nn.Sequential(backbone, GCRFHead(16, num_labels=LABELS, embed_dim=8))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

losses = []
for _ in range(40):
    batch = torch.randint(0, 64, (8,))
    loss = F.cross_entropy(model(train_images[batch]), train_targets[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

with torch.no_grad():
    predictions = model(test_images).argmax(dim=1)
accuracy = (predictions == test_targets).float().mean().item()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; test pixel accuracy {accuracy:.3f}")
print(f"λ = {model[1].crf.effective_lam:.3f}, learnt strength {model[1].crf.effective_strength}")

# %%
# The loss and a few test scenes
# ------------------------------

fig, axes = plt.subplots(3, 4, figsize=(8, 6.5))
axes[0, 0].plot(losses)
axes[0, 0].set_title("training loss")
axes[0, 0].set_xlabel("step")
for ax in axes[0, 1:]:
    ax.axis("off")
for j in range(4):
    image = test_images[j].permute(1, 2, 0).numpy()
    axes[1, j].imshow(np.clip(0.5 + image / 4, 0, 1))
    axes[1, j].set_title("image")
    axes[2, j].imshow(predictions[j], vmin=0, vmax=LABELS - 1, cmap="tab10")
    axes[2, j].set_title("prediction")
    for ax in axes[1:, j]:
        ax.set_xticks([])
        ax.set_yticks([])
fig.tight_layout()
