"""The aggregators' modules: feature map (N, C, H, W) [+ class token (N, C)] -> descriptors (N, D).

Written from the papers and from what each reference implementation computes (named in
`AGGREGATORS[name].reference`); tests/model/test_aggregators.py checks each against outputs
saved from its reference (tests/fixtures/aggregators/make_fixtures.py). Parameter names follow
the reference's where the structure is the same, so that released checkpoints load by a prefix
change (`REFERENCE_RENAMES`); every module returns L2-normalised descriptors and has `out_dim`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.model.aggregators import aggregator_entry


class GeM(nn.Module):
    """Generalized mean pooling over the spatial dimensions, with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class GeMHead(nn.Module):
    """CosPlace's head: L2 norm over channels, GeM, a linear layer to `fc_output_dim`, L2 norm."""

    def __init__(self, in_channels: int, fc_output_dim: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.gem = GeM(p, eps)
        self.fc = nn.Linear(in_channels, fc_output_dim)
        self.out_dim = fc_output_dim

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.gem(F.normalize(x, p=2.0, dim=1)).flatten(1)
        return F.normalize(self.fc(pooled), p=2.0, dim=1)


class NetVLAD(nn.Module):
    """NetVLAD (Arandjelovic et al., 2016): soft-assigned residuals to K centroids, intra- then L2-normalised.

    The soft assignment is a 1x1 convolution without bias (on L2-normalised local features
    when `normalize_input`); the centroids start uniform in [0, 1) as in the dVGL benchmark,
    which then sets them by k-means of local features: here they are learnt from that start.
    """

    def __init__(self, in_channels: int, clusters: int = 64, normalize_input: bool = True):
        super().__init__()
        self.normalize_input = normalize_input
        self.conv = nn.Conv2d(in_channels, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, in_channels))
        self.out_dim = clusters * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            x = F.normalize(x, p=2.0, dim=1)
        assignment = self.conv(x).flatten(2).softmax(dim=1)  # (N, K, HW)
        # sum_i a_k(x_i) (x_i - c_k) = sum_i a_k(x_i) x_i - c_k sum_i a_k(x_i), all clusters at once
        residuals = assignment @ x.flatten(2).transpose(1, 2) - assignment.sum(dim=2, keepdim=True) * self.centroids
        return F.normalize(F.normalize(residuals, p=2.0, dim=2).flatten(1), p=2.0, dim=1)


class NetVLADHead(nn.Module):
    """NetVLAD then, as the dVGL benchmark's and CosPlace-style heads do, a linear layer to
    `fc_output_dim` and an L2 norm (the raw NetVLAD vector, K x C, is far larger)."""

    def __init__(self, in_channels: int, fc_output_dim: int, clusters: int = 64, normalize_input: bool = True):
        super().__init__()
        self.netvlad = NetVLAD(in_channels, clusters, normalize_input)
        self.fc = nn.Linear(self.netvlad.out_dim, fc_output_dim)
        self.out_dim = fc_output_dim

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.fc(self.netvlad(x)), p=2.0, dim=1)


class ConvAP(nn.Module):
    """ConvAP (Ali-bey et al., GSV-Cities 2022): a 1x1 convolution, adaptive average pooling to s1 x s2, L2 norm."""

    def __init__(self, in_channels: int, out_channels: int = 1024, s1: int = 2, s2: int = 2):
        super().__init__()
        self.channel_pool = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.grid = (s1, s2)
        self.out_dim = out_channels * s1 * s2

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.channel_pool(x), self.grid)
        return F.normalize(pooled.flatten(1), p=2.0, dim=1)


class FeatureMixer(nn.Module):
    """One MixVPR feature mixer: a residual MLP across the H*W positions of each channel."""

    def __init__(self, positions: int, mlp_ratio: float):
        super().__init__()
        hidden = int(positions * mlp_ratio)
        self.mix = nn.Sequential(
            nn.LayerNorm(positions), nn.Linear(positions, hidden), nn.ReLU(), nn.Linear(hidden, positions)
        )
        for layer in (self.mix[1], self.mix[3]):  # the reference's initialisation
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """MixVPR (Ali-bey et al., WACV 2023): feature mixers over the flattened map, then a channel
    projection to `out_channels` and a row projection of the positions to `out_rows`.

    Built for one feature-map size (in_h x in_w): the network resizes its images to the size
    this map came from (`GeoLocNet.input_size`).
    """

    def __init__(
        self,
        in_channels: int,
        in_h: int,
        in_w: int,
        out_channels: int = 1024,
        mix_depth: int = 4,
        mlp_ratio: float = 1,
        out_rows: int = 4,
    ):
        super().__init__()
        positions = in_h * in_w
        self.mix = nn.Sequential(*(FeatureMixer(positions, mlp_ratio) for _ in range(mix_depth)))
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(positions, out_rows)
        self.out_dim = out_channels * out_rows

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        mixed = self.mix(x.flatten(2))  # (N, C, HW)
        channels = self.channel_proj(mixed.transpose(1, 2))  # (N, HW, out_channels)
        rows = self.row_proj(channels.transpose(1, 2))  # (N, out_channels, out_rows)
        return F.normalize(rows.flatten(1), p=2.0, dim=1)


def sinkhorn_log_plan(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Log of the optimal-transport plan from K clusters plus a dustbin to n positions (SALAD).

    `scores` (N, K, n); the dustbin row scores `dustbin` everywhere. Every position carries a
    mass of 1 and every cluster 1; the dustbin takes the rest, n - K (clamped to at least 1,
    so that a map with no more positions than clusters, as tiny test images give, stays finite;
    the reference would give NaN there). Log-domain Sinkhorn, regularisation 1.
    """
    batch, clusters, positions = scores.shape
    cost = torch.cat([scores, dustbin.expand(batch, 1, positions).to(scores.dtype)], dim=1)
    log_total = math.log(positions + clusters)
    row_mass = torch.full((clusters + 1,), -log_total, dtype=scores.dtype, device=scores.device)
    row_mass[-1] += math.log(max(positions - clusters, 1))
    column_mass = torch.full((positions,), -log_total, dtype=scores.dtype, device=scores.device)
    u = torch.zeros(batch, clusters + 1, dtype=scores.dtype, device=scores.device)
    v = torch.zeros(batch, positions, dtype=scores.dtype, device=scores.device)
    for _ in range(iterations):
        u = row_mass - torch.logsumexp(cost + v.unsqueeze(1), dim=2)
        v = column_mass - torch.logsumexp(cost + u.unsqueeze(2), dim=1)
    return cost + u.unsqueeze(2) + v.unsqueeze(1) + log_total


class SALAD(nn.Module):
    """SALAD (Izquierdo and Civera, CVPR 2024): local features assigned to clusters by optimal
    transport with a dustbin, aggregated per cluster, beside a global token from the class token.

    Descriptor: [L2(token MLP(class token)), L2 per channel of the (cluster_dim x clusters)
    aggregate], L2-normalised. On a CNN, which has no class token, the feature map's mean stands in.
    """

    def __init__(
        self,
        in_channels: int,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
    ):
        super().__init__()

        def local_mlp(out_channels: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, 512, 1),
                nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                nn.ReLU(),
                nn.Conv2d(512, out_channels, 1),
            )

        self.token_features = nn.Sequential(nn.Linear(in_channels, 512), nn.ReLU(), nn.Linear(512, token_dim))
        self.cluster_features = local_mlp(cluster_dim)
        self.score = local_mlp(num_clusters)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))
        self.out_dim = token_dim + num_clusters * cluster_dim

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        if token is None:
            token = x.mean(dim=(2, 3))
        local = self.cluster_features(x).flatten(2)  # (N, l, n)
        plan = sinkhorn_log_plan(self.score(x).flatten(2), self.dust_bin)[:, :-1].exp()  # (N, K, n)
        clusters = F.normalize(local @ plan.transpose(1, 2), p=2.0, dim=1)  # (N, l, K)
        scene = F.normalize(self.token_features(token), p=2.0, dim=-1)
        return F.normalize(torch.cat([scene, clusters.flatten(1)], dim=-1), p=2.0, dim=-1)


class BoQBlock(nn.Module):
    """One Bag-of-Queries block: a transformer encoder layer on the tokens, then learnt queries
    (self-attended, normalised) cross-attend to them."""

    def __init__(self, dim: int, num_queries: int, heads: int):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder(tokens)
        # A copy, not an expanded view: a view of a parameter made under no_grad claims to need
        # gradients without having a gradient function, which FLOP counting's hooks refuse.
        queries = self.queries.repeat(tokens.shape[0], 1, 1)
        queries = self.norm_q(queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        return tokens, self.norm_out(self.cross_attn(queries, tokens, tokens, need_weights=False)[0])


class BoQ(nn.Module):
    """Bag-of-Queries (Ali-bey et al., CVPR 2024): a 3x3 projection to `proj_channels`, then
    `num_layers` BoQ blocks whose query outputs are concatenated and mixed to `row_dim` rows.
    One attention head per 64 channels. The reference drops DINOv2's class token: so does this.
    """

    def __init__(
        self, in_channels: int, proj_channels: int = 512, num_queries: int = 64, num_layers: int = 2, row_dim: int = 32
    ):
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList(BoQBlock(proj_channels, num_queries, proj_channels // 64) for _ in range(num_layers))
        self.fc = nn.Linear(num_layers * num_queries, row_dim)
        self.out_dim = proj_channels * row_dim

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2))  # (N, HW, proj)
        answers = []
        for block in self.boqs:
            tokens, answer = block(tokens)
            answers.append(answer)
        rows = self.fc(torch.cat(answers, dim=1).transpose(1, 2))  # (N, proj, row_dim)
        return F.normalize(rows.flatten(1), p=2.0, dim=-1)


# How a reference implementation's head names its tensors -> this module's names (prefix
# renames, first match wins); the others use the reference's own names.
REFERENCE_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    # CosPlace: aggregation = Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)
    "gem": (("1.", "gem."), ("3.", "fc.")),
    # dVGL: aggregation = Sequential(NetVLAD, Linear, L2Norm)
    "netvlad": (("0.", "netvlad."), ("1.", "fc.")),
}


def from_reference(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference head's state dict (keys relative to its head) under this module's names."""
    renames = REFERENCE_RENAMES.get(name, ())

    def renamed(key: str) -> str:
        for old, new in renames:
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    return {renamed(key): value for key, value in state.items()}


def resolve_hyperparameters(
    name: str, in_channels: int, *, fc_output_dim: int, feature_hw: tuple[int, int], vit: bool
) -> dict[str, Any]:
    """The full keyword arguments of aggregator `name`'s module: its reference defaults, completed
    by what the backbone decides (channels, the feature map's size, CNN or ViT)."""
    entry = aggregator_entry(name)
    params: dict[str, Any] = {"in_channels": in_channels, **entry.defaults}
    if entry.uses_fc_output_dim:
        params["fc_output_dim"] = fc_output_dim
    if entry.fixed_feature_map:
        params["in_h"], params["in_w"] = feature_hw
    if name == "boq" and params["proj_channels"] is None:
        params["proj_channels"] = 384 if vit else 512  # the released DINOv2 and ResNet-50 models
    return params


def build_aggregator(name: str, params: dict[str, Any]) -> nn.Module:
    """Aggregator `name`'s module with the complete hyperparameters `params` (as model.pt records them)."""
    return globals()[aggregator_entry(name).constructor](**params)
