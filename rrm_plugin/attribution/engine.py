"""Fast edge engine: exact edges of the linearised model, batched over active target latents.

The reference (`tests/attribution/reference.py`, the authors' way) gets each layer's edges from
`torch.func.jacrev` over the whole residual stream, materialising `J = [F_out, T, D]` for every
latent of the upper SAE, active or not. Here we use the structure of the linearised block
instead. With the attention pattern `A`, LayerNorm scales `sigma`, MLP gate `Phi` and SAE std
constant, block l+1 is affine, and every target row is a *target pair* `p = (t', o)`: a latent `o`
active at token `t'` (TopK passes gradient to nothing else). Its cotangent on the block output is
`a_p c_o` at token t' only (`c_o` = centred encoder column, `a_p = ghat[t', o] / (s'_t' + eps)`).
Pulled back through the MLP (per token, so it stays at t'):

    v_p = a_p (c_o + LN2^T(W_in (Phi_t' * (W_out c_o))))      (W_out c_o precomputed per latent)

and through the attention (which mixes tokens only through the constant pattern) onto a source
latent i of layer l at token t, whose stream direction is `s_t dz[t, i] W_dec[i]`:

    A(t, i -> p) = [t = t'] v_p . W_dec[i] s_t dz[t, i]
                   + sum_h A_h[t', t] (W_O^h v_p) . U_h[i] s_t dz[t, i] / sigma1_t,
    U_h[i] = W_V^h^T (w_ln1 * centre(W_dec[i]))                 (precomputed per source latent)

Summing over the target pairs of `o` and over t gives the feature edge `A(i -> o)`; the error
edge uses `de[t]` in place of `s_t dz[t, i] W_dec[i]`. The cost is linear in the number of active
pairs (T * k) rather than in the dictionary size times a full backward pass, there is no
per-target Python loop, and pairs are processed in chunks so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.forward import BlockConstants, LayerTrace
from rrm_plugin.errors import RRMUserError


@dataclass(frozen=True)
class EngineConfig:
    """Chunking of the edge engine.

    Args:
        chunk_elements: Bound on the floats of each batched step's buffers (about 4 bytes
            each); the engine picks how many tokens (or target pairs) a step takes from it.
        max_token_edges: Largest token-level edge matrix (entries) allowed per layer pair; with
            several images per step, of their joint (block-diagonal) matrix too.
        images_per_step: How many images of a batch the engine takes together per layer pair
            (their tokens stacked on one axis, so memory grows about linearly with it; token
            granularity grows the joint edge matrix quadratically and takes fewer images where
            `max_token_edges` requires). 1: one image at a time.
        token_top_k: Token granularity only. None: dense edge matrices (every source of every
            target). An integer k: sparse edge matrices (`torch.sparse_coo_tensor`) keeping, for
            each target node, its k strongest in-edges by |weight| and its error edge. Each
            target's row of edges is computed whole and cut at once, so the kept edges are
            exact and the memory is `chunk_elements` plus about `targets * (k + 1)` stored
            edges, not `sources * targets`: the setting for ViT-B-sized token graphs, whose
            dense matrices would not fit in memory. Images are then taken one at a time.
    """

    chunk_elements: int = 2**24
    max_token_edges: int = 50_000_000
    images_per_step: int = 1
    token_top_k: int | None = None

    def __post_init__(self) -> None:
        if self.images_per_step < 1:
            raise RRMUserError(f"images_per_step must be >= 1, got {self.images_per_step}")
        if self.token_top_k is not None and self.token_top_k < 1:
            raise RRMUserError(f"token_top_k must be None or >= 1, got {self.token_top_k}")
        if self.chunk_elements < 1:
            raise RRMUserError(f"chunk_elements must be >= 1, got {self.chunk_elements}")


DEFAULT_ENGINE = EngineConfig()


class BlockWeights(NamedTuple):
    """The linear maps of a pre-LayerNorm ViT block (HookedViT / TransformerLens layout)."""

    ln1_w: Float[Tensor, " d_model"] | None
    """LayerNorm gain (None: no LayerNorm); `ln1_centred` says whether it centres."""
    ln1_centred: bool
    W_V: Float[Tensor, "head d_model d_head"]
    W_O: Float[Tensor, "head d_head d_model"]
    ln2_w: Float[Tensor, " d_model"] | None
    ln2_centred: bool
    W_in: Float[Tensor, "d_model d_mlp"] | None
    W_out: Float[Tensor, "d_mlp d_model"] | None


def block_weights(model: nn.Module, block: int) -> BlockWeights:
    """Read the weights of block `block`, rejecting block types the engine does not model."""
    cfg = model.cfg
    unsupported = [f for f in ("use_bert_block", "parallel_attn_mlp") if getattr(cfg, f, False)]
    if unsupported:
        raise RRMUserError(
            f"the edge engine models pre-LayerNorm blocks; config sets {unsupported}")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        raise RRMUserError("the edge engine does not support grouped-query attention")
    mod = model.blocks[block]
    norm = getattr(cfg, "normalization_type", "LN")
    if norm not in ("LN", "LNPre", None):
        raise RRMUserError(f"the edge engine supports LN, LNPre or no normalisation, not {norm!r}")

    def ln(module_name: str) -> tuple[Tensor | None, bool]:
        module = getattr(mod, module_name, None)
        if norm is None or module is None:
            return None, False
        w = getattr(module, "w", None)
        if w is not None:
            return w.detach(), True
        # No gain (LNPre): ones on the block's own device and dtype, not the CPU default.
        ref = mod.attn.W_V
        return torch.ones(cfg.d_model, device=ref.device, dtype=ref.dtype), True

    ln1_w, ln1_c = ln("ln1")
    has_mlp = hasattr(mod, "mlp")
    ln2_w, ln2_c = ln("ln2") if has_mlp else (None, False)
    return BlockWeights(
        ln1_w=ln1_w, ln1_centred=ln1_c,
        W_V=mod.attn.W_V.detach(), W_O=mod.attn.W_O.detach(),
        ln2_w=ln2_w, ln2_centred=ln2_c,
        W_in=mod.mlp.W_in.detach() if has_mlp else None,
        W_out=mod.mlp.W_out.detach() if has_mlp else None,
    )


def _centre(x: Tensor, centred: bool) -> Tensor:
    return x - x.mean(-1, keepdim=True) if centred else x


def _ln_forward(x: Tensor, w: Tensor | None, centred: bool, scale: Tensor) -> Tensor:
    """Differential of a LayerNorm with frozen scale: `w * centre(x) / scale`."""
    x = _centre(x, centred)
    return (x * w if w is not None else x) / scale


def _ln_transpose(y: Tensor, w: Tensor | None, centred: bool, scale: Tensor) -> Tensor:
    """Adjoint of `_ln_forward`: `centre(w * y) / scale` (centring is a symmetric projection)."""
    return _centre(y * w if w is not None else y, centred) / scale


class PairInputs(NamedTuple):
    """One image's view of a layer pair (source layer l, target layer l+1, block l+1)."""

    W_dec: Float[Tensor, "d_src d_model"]
    src_scale: Float[Tensor, "pos 1"]
    src_delta: Float[Tensor, "pos d_src"]
    src_error_delta: Float[Tensor, "pos d_model"]
    enc_dirs: Float[Tensor, "d_model d_tgt"]
    """d pre-activation / d (block output): the encoder columns, centred for layer-norm SAEs."""
    tgt_enc_scale: Float[Tensor, "pos 1"]
    tgt_acts: Float[Tensor, "pos d_tgt"]
    tgt_grad: Float[Tensor, "pos d_tgt"]
    block: BlockConstants
    """Constants of block l+1 for this image (batch axis removed)."""


def encoder_directions(sae: SAE) -> Float[Tensor, "d_in d_sae"]:
    """Derivative of the pre-activation w.r.t. the standardised-input numerator."""
    W_enc = sae.W_enc.detach()
    if sae.cfg.normalize_activations == "layer_norm":
        return W_enc - W_enc.mean(0, keepdim=True)
    return W_enc


def pair_inputs(
    src: LayerTrace, tgt: LayerTrace, block: BlockConstants, src_sae: SAE, tgt_sae: SAE, b: int
) -> PairInputs:
    """Slice image `b` out of batched traces."""
    return PairInputs(
        W_dec=src_sae.W_dec.detach(), src_scale=src.scale[b], src_delta=src.delta[b],
        src_error_delta=src.error_delta[b], enc_dirs=encoder_directions(tgt_sae),
        tgt_enc_scale=tgt.enc_scale[b], tgt_acts=tgt.acts[b], tgt_grad=tgt.grad_acts[b],
        block=BlockConstants(*(None if c is None else c[b] for c in block)),
    )


class _Targets(NamedTuple):
    token: Int[Tensor, " pairs"]
    latent: Int[Tensor, " pairs"]
    column: Int[Tensor, " pairs"]


class _Directions(NamedTuple):
    enc: Float[Tensor, "d_model n"]
    """Encoder directions of the target latents in use."""
    mlp: Float[Tensor, "d_mlp n"] | None
    """Their image under W_out (the first half of the MLP pull-back, shared by all tokens)."""


def _pair_vectors(
    w: BlockWeights, x: PairInputs, t: Tensor, o: Tensor, dirs: _Directions, idx: Tensor
) -> tuple[Float[Tensor, "pairs d_model"], Float[Tensor, "pairs head d_head"]]:
    """Cotangents of target pairs on the block input side of the MLP (v) and at the values (q)."""
    a = x.tgt_grad[t, o] / x.tgt_enc_scale[t, 0]
    v = dirs.enc[:, idx].T
    if w.W_in is not None:
        hidden = dirs.mlp[:, idx].T * x.block.gate[t]  # [pairs, d_mlp]
        v = v + _ln_transpose(hidden @ w.W_in.T, w.ln2_w, w.ln2_centred, x.block.ln2_scale[t])
    v = v * a[:, None]
    return v, (v @ w.W_O.flatten(0, 1).T).view(len(v), *w.W_O.shape[:2])


def _directions(w: BlockWeights, x: PairInputs, latents: Tensor) -> _Directions:
    enc = x.enc_dirs[:, latents]
    return _Directions(enc, w.W_out @ enc if w.W_out is not None else None)


def _error_terms(w: BlockWeights, x: PairInputs) -> Float[Tensor, "head pos d_head"]:
    """Attention-path image of the source error: sum_t A_h[t', t] W_V^h^T LN1_t(de[t])."""
    return _error_terms_stacked(w, x.src_error_delta[None], x.block.ln1_scale[None],
                                x.block.pattern[None])[0]


def _error_terms_stacked(
    w: BlockWeights,
    error_delta: Float[Tensor, "img pos d_model"],
    ln1_scale: Float[Tensor, "img pos 1"],
    pattern: Float[Tensor, "img head pos pos"],
) -> Float[Tensor, "img head pos d_head"]:
    """`_error_terms` of several images at once."""
    de = _ln_forward(error_delta, w.ln1_w, w.ln1_centred, ln1_scale)
    values = torch.einsum("btd,hde->bhte", de, w.W_V)
    return torch.einsum("bhqk,bhke->bhqe", pattern, values)


def feature_edges(
    w: BlockWeights,
    x: PairInputs,
    *,
    sources: Int[Tensor, " n_src"],
    targets: Int[Tensor, " n_tgt"],
    config: EngineConfig = DEFAULT_ENGINE,
) -> Float[Tensor, "n_src_plus_error n_tgt"]:
    """Edges `A(i -> o)` between latent nodes (summed over tokens); last row: the error node.

    Target pairs are grouped by token (padded to the widest token): the pairs at token t' meet
    the sources through `W_dec^T` scaled by `C[t'] = s_t' dz[t']` (residual path) and through one
    per-token matrix `U * B[t']` (value path), so a chunk of tokens costs a few batched GEMMs.

    Args:
        w: Weights of the block joining the two layers.
        x: The image's traces for the pair.
        sources: Latent indices of the source layer's nodes.
        targets: Latent indices of the target layer's nodes.
        config: Chunking.
    """
    return feature_edges_batch(w, [x], sources=[sources], targets=[targets], config=config)[0]


def _stack(xs: Sequence[PairInputs], field: str) -> Tensor:
    """One per-image field of the pair inputs (or of their block constants), stacked."""
    return torch.stack([getattr(x, field) if field in PairInputs._fields
                        else getattr(x.block, field) for x in xs])


def _positions(union: Tensor, subset: Tensor) -> Tensor:
    """Index of each entry of `subset` in the sorted, duplicate-free `union`."""
    return torch.searchsorted(union, subset)


def feature_edges_batch(
    w: BlockWeights,
    xs: Sequence[PairInputs],
    *,
    sources: Sequence[Int[Tensor, " n_src"]],
    targets: Sequence[Int[Tensor, " n_tgt"]],
    config: EngineConfig = DEFAULT_ENGINE,
) -> list[Float[Tensor, "n_src_plus_error n_tgt"]]:
    """`feature_edges` of several images (same layer pair) in one pass of the engine.

    The images' tokens are stacked on one axis and walked in chunks as one image's would be.
    Sources and targets are the union of the images' nodes: each image's target pairs add into
    its own block of columns, and a source or target column that is not a node of an image is
    computed for it but not read back, so every image's edges are those of `feature_edges`
    (up to the order of floating-point sums inside the larger matrix products).
    """
    x0 = xs[0]
    device = x0.W_dec.device
    n_img = len(xs)
    d_tgt = x0.tgt_acts.shape[1]
    src_all = torch.unique(torch.cat(list(sources)))
    tgt_all = torch.unique(torch.cat(list(targets)))
    n_src, n_tgt = len(src_all), len(tgt_all)
    columns = torch.full((d_tgt,), -1, dtype=torch.long, device=device)
    columns[tgt_all] = torch.arange(n_tgt, device=device)
    acts = _stack(xs, "tgt_acts")  # [img, pos, d_tgt]
    active = (acts > 0) & (columns >= 0)  # the target pairs
    out = torch.zeros(n_img * n_tgt, n_src + 1, device=device, dtype=x0.W_dec.dtype)
    width = int(active.sum(-1).max()) if active.numel() else 0
    if width > 0:
        _feature_chunks(w, xs, active, columns, src_all, tgt_all, width, out, config)
    out = out.view(n_img, n_tgt, n_src + 1)
    error_row = torch.tensor([n_src], device=device)
    return [out[b][_positions(tgt_all, targets[b])][
        :, torch.cat([_positions(src_all, sources[b]), error_row])].T.contiguous()
        for b in range(n_img)]


def _feature_chunks(
    w: BlockWeights,
    xs: Sequence[PairInputs],
    active: Bool[Tensor, "img pos d_tgt"],
    columns: Int[Tensor, " d_tgt"],
    sources: Int[Tensor, " n_src"],
    targets: Int[Tensor, " n_tgt"],
    width: int,
    out: Float[Tensor, "img_n_tgt n_src_plus_error"],
    config: EngineConfig,
) -> None:
    """Add every target pair's edges into `out` (rows: image-major target columns)."""
    x0 = xs[0]
    device = x0.W_dec.device
    n_img, n_pos, _ = active.shape
    n_tgt = len(targets)
    # Each token's active targets, padded to the same width (padding has coefficient 0).
    latent = torch.sort(active.int(), dim=-1, descending=True, stable=True).indices[..., :width]
    valid = active.gather(-1, latent)
    offset = (torch.arange(n_img, device=device) * n_tgt)[:, None, None]
    column = torch.where(valid, columns[latent] + offset, 0).flatten(0, 1)  # [img * pos, width]
    a_all = ((_stack(xs, "tgt_grad").gather(-1, latent) * valid)
             / _stack(xs, "tgt_enc_scale")).flatten(0, 1)  # [img * pos, width]

    n_src, d_model = len(sources), x0.W_dec.shape[1]
    src_scale, ln1_scale = _stack(xs, "src_scale"), _stack(xs, "ln1_scale")
    c_img = src_scale * _stack(xs, "src_delta")[..., sources]  # [img, pos, n_src]: s_t dz[t, i]
    W_src_T = x0.W_dec[sources].T.contiguous()  # [d_model, n_src]
    # Value-path image of each source direction per head, and its attention-weighted coefficient.
    U = torch.einsum("id,hde->hei", _ln_forward(W_src_T.T, w.ln1_w, w.ln1_centred, 1.0), w.W_V)
    pattern = _stack(xs, "pattern")
    B = torch.einsum("bhqk,bki->bqhi", pattern, c_img / ln1_scale).flatten(0, 1)
    src_error_delta = _stack(xs, "src_error_delta")
    err_attn = _error_terms_stacked(w, src_error_delta, ln1_scale, pattern)
    err_attn = err_attn.transpose(1, 2).flatten(2).flatten(0, 1)  # [img * pos, head * d_head]
    c_src, src_error_delta = c_img.flatten(0, 1), src_error_delta.flatten(0, 1)
    W_O_T = w.W_O.flatten(0, 1).T  # [d_model, head * d_head]
    enc = x0.enc_dirs[:, targets].T.contiguous()  # [n_tgt, d_model]
    mlp = (enc @ w.W_out.T).contiguous() if w.W_out is not None else None  # [n_tgt, d_mlp]
    d_mlp = mlp.shape[1] if mlp is not None else 0
    if mlp is not None:
        gate = _stack(xs, "gate").flatten(0, 1)
        ln2_scale = _stack(xs, "ln2_scale").flatten(0, 1)
    per_token = d_model * n_src + width * (d_mlp + 3 * d_model + 2 * n_src)
    step = max(1, config.chunk_elements // per_token)
    local = column % n_tgt  # the column within the image (its row of `enc` / `mlp`)

    for start in range(0, n_img * n_pos, step):
        t = torch.arange(start, min(start + step, n_img * n_pos), device=device)
        n_t, col, row = len(t), column[t].reshape(-1), local[t].reshape(-1)
        v = enc[row].view(n_t, width, d_model)
        if mlp is not None:  # pull back through the MLP of the pair's own token
            hidden = mlp[row].view(n_t, width, d_mlp) * gate[t][:, None, :]
            back = (hidden @ w.W_in.T) * (w.ln2_w if w.ln2_w is not None else 1.0)
            v = v + _centre(back, w.ln2_centred) / ln2_scale[t][:, None, :]
        v = v * a_all[t][..., None]
        q = v @ W_O_T  # [tok, width, head * d_head]
        # Same token: the residual path; other tokens: the attention's value path.
        rows = (v @ W_src_T) * c_src[t][:, None, :]
        values = (U[None] * B[t][:, :, None, :]).flatten(1, 2)  # [tok, head * d_head, n_src]
        rows += torch.bmm(q, values)
        err = (v * src_error_delta[t][:, None, :]).sum(-1) + (q * err_attn[t][:, None, :]).sum(-1)
        # Padding rows are exactly zero (a = 0), so they can be added to column 0 harmlessly.
        out[:, :n_src].index_add_(0, col, rows.view(-1, n_src))
        out[:, n_src].index_add_(0, col, err.view(-1))
