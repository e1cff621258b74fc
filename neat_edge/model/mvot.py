"""MVoT image-token head: per byte position, logits over the VQ codebook (visual thoughts).

The VQ tokenizer, begin/end-image switching and the token discrepancy loss arrive with the MVoT
issue; the head is already a real output of the step graph so the graph's signature is stable.
"""

from torch import nn


class ImageHead(nn.Module):
    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, codebook_size)

    def forward(self, hidden):
        return self.proj(hidden)
