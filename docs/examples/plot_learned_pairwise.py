"""
The learned pairwise terms
==========================

The Potts G-CRF couples two pixels p and q by the inner product of their embeddings,
⟨Â_p, Â_q⟩ (Eq. 11): pixels with aligned embeddings pool their class evidence. This example
trains a small Potts network and shows, for a reference pixel, the affinity ⟨Â_p, Â_p*⟩ of every
pixel p before and after training — the paper's Figs. 3–4 on toy scenes. As in the paper,
the embeddings are trained with the segmentation loss through the layer plus a pairwise
objective: pixels of one ground-truth label should have similar embeddings, all other pairs
not.

Each scene holds a few discs that share one class, written faintly in their colour; the
background is noise.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import nn

from lowrank_gcrf.adapters.torch import DenseGCRF

torch.manual_seed(0)
LABELS, SIZE, EMBED = 3, 24, 8
rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")


def disc_scenes(count, generator):
    """Images (count, 3, SIZE, SIZE) and label maps: 2–4 discs of one class per scene."""
    images = 0.7 * torch.randn(count, 3, SIZE, SIZE, generator=generator)
    targets = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for i in range(count):
        label = int(torch.randint(1, LABELS, (1,), generator=generator))
        for _ in range(int(torch.randint(2, 5, (1,), generator=generator))):
            r, c = torch.randint(4, SIZE - 4, (2,), generator=generator).tolist()
            disc = (rows - r) ** 2 + (cols - c) ** 2 <= 12
            images[i, 2][disc] += 1.5  # an object
            images[i, label - 1][disc] += 0.3  # its class, faintly
            targets[i][disc] = label
    return images, targets


class PottsSegmenter(nn.Module):
    """Unary and embedding branches, then the Potts G-CRF on unit embeddings.

    Unit embeddings scaled by 0.9·√(λ/P) give ‖Â‖₂² ≤ ‖Â‖_F² = 0.81·λ: the system is
    positive definite, and ⟨Â_p, Â_q⟩ is the cosine of the two embeddings times 0.81·λ/P.
    """

    def __init__(self, lam=1.0):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.unary = nn.Conv2d(16, LABELS, 1)
        self.embed = nn.Conv2d(16, EMBED, 1)
        # strength=None: the embeddings are scaled here, as the docstring says
        self.crf = DenseGCRF(lam=lam, model="potts", strength=None)
        self.lam = lam

    def embeddings(self, features):
        unit = F.normalize(self.embed(features), dim=1)
        return unit * (0.9 * (self.lam / (SIZE * SIZE)) ** 0.5)

    def forward(self, images):
        features = self.backbone(images)
        return self.crf(self.unary(features), self.embeddings(features)), features


def pairwise_objective(Ahat, labels):
    """Least-squares fit of the embeddings' cosines to the same-label indicator."""
    unit = F.normalize(Ahat.flatten(2), dim=1)  # (B, D, P)
    same = labels.flatten(1)[:, :, None] == labels.flatten(1)[:, None, :]  # (B, P, P)
    return ((unit.mT @ unit - same.float()) ** 2).mean()


generator = torch.Generator().manual_seed(1)
images, targets = disc_scenes(48, generator)
model = PottsSegmenter()


def affinity(index, pixel):
    """⟨Â_p, Â_p*⟩ for every pixel p of scene ``index``."""
    with torch.no_grad():
        Ahat = model.embeddings(model.backbone(images[index : index + 1])).reshape(EMBED, -1)
        return (Ahat.T @ Ahat[:, pixel]).reshape(SIZE, SIZE).numpy()


scene = 0
# The reference: the object pixel farthest from the background.
depth = distance_transform_edt(targets[scene].numpy() > 0)
inside = int(depth.argmax())
before = affinity(scene, inside)

optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(30):
    batch = torch.randint(0, 48, (8,))
    scores, features = model(images[batch])
    pairwise = pairwise_objective(model.embeddings(features), targets[batch])
    loss = F.cross_entropy(scores, targets[batch]) + pairwise
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}: loss {loss.item():.3f} (pairwise {pairwise.item():.3f})")

after = affinity(scene, inside)
objects = targets[scene].numpy() > 0
for name, a in (("before", before), ("after", after)):
    print(
        f"{name:6s} training: mean affinity to the reference, objects {a[objects].mean():.2e},"
        f" background {a[~objects].mean():.2e}"
    )

# %%
# Affinities of every pixel to the reference pixel (white cross)
# --------------------------------------------------------------

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(targets[scene], cmap="tab10", vmin=0, vmax=9)
axes[0].set_title("ground truth")
for ax, a, title in ((axes[1], before, "before training"), (axes[2], after, "after training")):
    shown = ax.imshow(a, cmap="viridis")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(f"⟨Â_p, Â_p*⟩ {title}")
for ax in axes:
    ax.plot(inside % SIZE, inside // SIZE, "w+", markersize=12, mew=2)
    ax.axis("off")
fig.tight_layout()
