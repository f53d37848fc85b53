#!/usr/bin/env python3
"""Writes the TorchScript files the serving comparison uses: the architectures of the built-in
models `small-mlp` and `transformer` (crates/tch-streams/src/models/builtin.rs), seeded weights.
Both servers load the same files, so they run the same function.

usage: models.py OUT_DIR [DEVICE]

  small-mlp.pt    float32 [N, 512] -> [N, 512]: Linear 512-1024-1024-512, ReLU between
  transformer.pt  float32 [N, 64, 256] -> same: a post-norm encoder layer, d_model 256, 4 heads,
                  feed-forward 1024, ReLU, no dropout (scaled dot-product attention)
  identity.pt     float32 [N, 512] -> a copy: the small MLP's tensors with no model work, so a
                  server's figures on it are what the protocol, the server and the client cost
"""
import os
import sys

import torch


class SmallMlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        dims = [512, 1024, 1024, 512]
        self.layers = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class EncoderLayer(torch.nn.Module):
    def __init__(self, d_model: int = 256, heads: int = 4, ff: int = 1024):
        super().__init__()
        self.heads = heads
        self.in_proj = torch.nn.Linear(d_model, 3 * d_model)
        self.out_proj = torch.nn.Linear(d_model, d_model)
        self.ff1 = torch.nn.Linear(d_model, ff)
        self.ff2 = torch.nn.Linear(ff, d_model)
        self.norm1 = torch.nn.LayerNorm(d_model)
        self.norm2 = torch.nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape[0], x.shape[1], x.shape[2]
        dh = d // self.heads
        qkv = self.in_proj(x).view(b, s, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        att = self.out_proj(att.transpose(1, 2).reshape(b, s, d))
        x = self.norm1(x + att)
        return self.norm2(x + self.ff2(torch.relu(self.ff1(x))))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    device = sys.argv[2] if len(sys.argv) == 3 else "cpu"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name, module, example in [
        ("small-mlp", SmallMlp(), torch.zeros(2, 512)),
        ("transformer", EncoderLayer(), torch.zeros(2, 64, 256)),
        ("identity", Identity(), torch.zeros(2, 512)),
    ]:
        scripted = torch.jit.script(module.eval().to(device))
        with torch.no_grad():
            y = scripted(example.to(device))
        assert y.shape == example.shape, (name, y.shape)
        path = os.path.join(out, f"{name}.pt")
        scripted.save(path)
        print(path)


if __name__ == "__main__":
    main()
