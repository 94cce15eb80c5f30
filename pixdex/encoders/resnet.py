"""CLIP ModifiedResNet with OpenAI's parameter names.

Differences from torchvision's ResNet: a 3-convolution stem with an average pool, anti-aliased strided
blocks (an average pool before the stride instead of a strided convolution) and an attention pool whose
query is the mean of the spatial tokens.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from pixdex.encoders.config import VisionConfig
from pixdex.encoders.layers import init_, initial


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean token over ``[mean, tokens...]``; returns the mean token's output."""

    def __init__(self, spacial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        tokens = spacial_dim**2 + 1
        self.positional_embedding = initial(
            (tokens, embed_dim), lambda: torch.randn(tokens, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        hd = c // self.heads
        # only the mean token's output is used, so only its query is computed
        q = self.q_proj(x[:, :1]).view(n, 1, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, self.heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, self.heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, 1, hd)
        return self.c_proj(out.reshape(n, c))


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        layers = tuple(cfg.layers) if isinstance(cfg.layers, (tuple, list)) else None
        if layers is None or len(layers) != 4:
            raise ValueError("a resnet vision tower needs 4 stage depths in `layers`")
        width = cfg.width
        self.image_size = cfg.image_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(
            cfg.image_size // 32, embed_dim, embed_dim // cfg.head_width, output_dim
        )
        std = embed_dim**-0.5
        for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            init_(nn.init.normal_, lin.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for name, p in stage.named_parameters():
                if name.endswith("bn3.weight"):
                    nn.init.zeros_(p)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
