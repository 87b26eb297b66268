"""Token-granularity edges of the edge engine (`attribution.engine`): one node per (token,
latent), dense or as each target's strongest in-edges (`EngineConfig.token_top_k`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.attribution.engine import (
    DEFAULT_ENGINE,
    BlockWeights,
    EngineConfig,
    PairInputs,
    _directions,
    _error_terms,
    _ln_forward,
    _pair_vectors,
    _stack,
    _Targets,
)
from rrm_plugin.attribution.forward import BlockConstants
from rrm_plugin.errors import RRMUserError


def token_edges(
    w: BlockWeights,
    x: PairInputs,
    *,
    sources: Int[Tensor, "n_src 2"],
    targets: Int[Tensor, "n_tgt 2"],
    config: EngineConfig = DEFAULT_ENGINE,
) -> Float[Tensor, "n_src_plus_error n_tgt"]:
    """Edges between (token, latent) nodes; last row: the source layer's error node.

    `sources` / `targets` hold `(token, latent)` rows. Dense, or with `config.token_top_k` a
    sparse COO matrix of the same shape holding each target's strongest in-edges.
    """
    _check_token_edges(len(sources), len(targets), config)
    return _token_edges(w, x, sources, targets, config)


def _check_token_edges(n_src: int, n_tgt: int, config: EngineConfig) -> None:
    if config.token_top_k is not None:
        stored = (min(config.token_top_k, n_src) + 1) * n_tgt
        if stored > config.max_token_edges:
            raise RRMUserError(
                f"token-level top-{config.token_top_k} edges would store {stored:,} entries "
                f"(limit max_token_edges={config.max_token_edges:,}); lower token_top_k or "
                "raise max_token_edges")
        return
    if (n_src + 1) * n_tgt > config.max_token_edges:
        raise RRMUserError(
            f"token-level edge matrix would have {(n_src + 1) * n_tgt:,} entries (limit "
            f"max_token_edges={config.max_token_edges:,}); use feature granularity, keep each "
            "target's strongest edges (EngineConfig(token_top_k=...)) or raise max_token_edges"
        )


def token_edges_batch(
    w: BlockWeights,
    xs: Sequence[PairInputs],
    *,
    sources: Sequence[Int[Tensor, "n_src 2"]],
    targets: Sequence[Int[Tensor, "n_tgt 2"]],
    config: EngineConfig = DEFAULT_ENGINE,
) -> list[Float[Tensor, "n_src_plus_error n_tgt"]]:
    """`token_edges` of several images (same layer pair) in one pass of the engine.

    The images become one sequence of `img * pos` tokens whose attention pattern is block
    diagonal (no token attends across images), so no target pair reaches another image's
    sources; each image's block of the joint edge matrix (and its own error row: the error
    terms go through the block-diagonal pattern too) is its `token_edges`. The joint matrix must
    fit `config.max_token_edges`. With `config.token_top_k` the images are taken one at a time
    (a joint top-k would rank other images' exact zeros among an image's edges).
    """
    if config.token_top_k is not None:
        return [token_edges(w, x, sources=s, targets=t, config=config)
                for x, s, t in zip(xs, sources, targets, strict=True)]
    n_img, n_pos = len(xs), xs[0].tgt_acts.shape[0]
    n_src = torch.tensor([0] + [len(s) for s in sources]).cumsum(0).tolist()
    n_tgt = torch.tensor([0] + [len(t) for t in targets]).cumsum(0).tolist()
    for b in range(n_img):
        _check_token_edges(n_src[b + 1] - n_src[b], n_tgt[b + 1] - n_tgt[b], config)
    _check_token_edges(n_src[-1], n_tgt[-1], config)

    def stacked(nodes: Sequence[Tensor]) -> Tensor:
        shift = torch.tensor([n_pos, 0], device=nodes[0].device)
        return torch.cat([s + b * shift for b, s in enumerate(nodes)])

    def cat(field: str) -> Tensor | None:
        first = getattr(xs[0], field) if field in PairInputs._fields else \
            getattr(xs[0].block, field)
        return None if first is None else _stack(xs, field).flatten(0, 1)

    pattern = _stack(xs, "pattern")  # [img, head, pos, pos] -> [head, img * pos, img * pos]
    joint = pattern.new_zeros(pattern.shape[1], n_img, n_pos, n_img, n_pos)
    image = torch.arange(n_img, device=pattern.device)
    joint[:, image, :, image, :] = pattern  # (mixed indexing puts the image axis first)
    x = PairInputs(
        W_dec=xs[0].W_dec, src_scale=cat("src_scale"), src_delta=cat("src_delta"),
        src_error_delta=cat("src_error_delta"), enc_dirs=xs[0].enc_dirs,
        tgt_enc_scale=cat("tgt_enc_scale"), tgt_acts=cat("tgt_acts"), tgt_grad=cat("tgt_grad"),
        block=BlockConstants(ln1_scale=cat("ln1_scale"), pattern=joint.flatten(3).flatten(1, 2),
                             ln2_scale=cat("ln2_scale"), gate=cat("gate")),
    )
    out = _token_edges(w, x, stacked(sources), stacked(targets), config)
    return [torch.cat([out[n_src[b]:n_src[b + 1]], out[-1:]])[:, n_tgt[b]:n_tgt[b + 1]]
            .contiguous() for b in range(n_img)]


def _token_edges(
    w: BlockWeights,
    x: PairInputs,
    sources: Int[Tensor, "n_src 2"],
    targets: Int[Tensor, "n_tgt 2"],
    config: EngineConfig,
) -> Float[Tensor, "n_src_plus_error n_tgt"]:
    n_src, n_tgt = len(sources), len(targets)
    device = x.W_dec.device
    n_pos, d_tgt = x.tgt_acts.shape
    columns = torch.full((n_pos * d_tgt,), -1, dtype=torch.long, device=device)
    columns[targets[:, 0] * d_tgt + targets[:, 1]] = torch.arange(n_tgt, device=device)
    t_all, o_all = torch.nonzero(x.tgt_acts > 0, as_tuple=True)
    col_all = columns[t_all * d_tgt + o_all]
    keep = col_all >= 0
    pairs = _Targets(t_all[keep], o_all[keep], col_all[keep])
    store = _TokenEdgeStore(n_src, n_tgt, config.token_top_k, device, x.W_dec.dtype)
    if len(pairs.token) == 0:
        return store.result()
    latents, latent_idx = torch.unique(pairs.latent, return_inverse=True)

    ts, i_s = sources[:, 0], sources[:, 1]
    c_src = x.src_scale[ts, 0] * x.src_delta[ts, i_s]  # [n_src]
    W_src = x.W_dec[i_s]
    U = torch.einsum("sd,hde->hse", _ln_forward(W_src, w.ln1_w, w.ln1_centred, 1.0), w.W_V)
    coeff = c_src / x.block.ln1_scale[ts, 0]
    err_attn = _error_terms(w, x)
    dirs = _directions(w, x, latents)
    # The residual path joins a target pair only to the sources of its own token; a chunk holds
    # the pairs of one token, so it meets those sources (`by_token[starts[t]:][:counts[t]]`) only.
    # Host-side copies, read once: indexing with device scalars inside the loop would sync the
    # device with the host at every chunk.
    by_token = torch.argsort(ts, stable=True)
    counts = torch.bincount(ts, minlength=n_pos).tolist()
    starts = [0, *itertools.accumulate(counts)][:-1]

    d_model = x.W_dec.shape[1]
    d_mlp = w.W_in.shape[1] if w.W_in is not None else 0
    # Attention path, one target token t' at a time: A(t, i -> p) = q_p . U~[s] with
    # U~[s] = (A_h[t', t_s] coeff_s U_h[s])_h flattened over heads, so the pairs of t' meet a
    # block of sources in one GEMM and no [head, pairs, sources] tensor is formed.
    U_heads = U.transpose(0, 1)  # [s, head, d_head]
    d_q = U_heads.shape[1] * U_heads.shape[2]
    per_pair = n_src + 1 + d_mlp + 4 * d_model + d_q
    pair_step = max(1, config.chunk_elements // per_pair)
    src_step = max(1, config.chunk_elements // (2 * d_q))
    token_ids, token_counts = torch.unique_consecutive(pairs.token, return_counts=True)
    token_ends = token_counts.cumsum(0).tolist()
    chunks = [(a, min(a + pair_step, end), tok)
              for begin, end, tok in zip([0, *token_ends[:-1]], token_ends, token_ids.tolist(),
                                         strict=True)
              for a in range(begin, end, pair_step)]
    for start, stop, tok in chunks:
        t = pairs.token[start:stop]  # one token: `tok`
        o = pairs.latent[start:stop]
        v, q = _pair_vectors(w, x, t, o, dirs, latent_idx[start:stop])
        q_flat = q.flatten(1)
        rows = torch.empty(len(t), n_src, device=device, dtype=q_flat.dtype)
        for s0 in range(0, n_src, src_step):
            block = slice(s0, s0 + src_step)
            weight = (x.block.pattern[:, tok, ts[block]] * coeff[block]).T  # [s, head]
            torch.mm(q_flat, (U_heads[block] * weight[:, :, None]).flatten(1).T,
                     out=rows[:, block])
        own = by_token[starts[tok] : starts[tok] + counts[tok]]  # distinct source indices
        rows[:, own] += (v @ W_src[own].T) * c_src[own]
        err = (v * x.src_error_delta[t]).sum(-1) + (q * err_attn[:, t].transpose(0, 1)).sum((1, 2))
        store.add(pairs.column[start:stop], rows, err)
    return store.result()


class _TokenEdgeStore:
    """Token-edge columns as they are computed: a dense `[n_tgt, n_src + 1]` buffer, or (top-k)
    each column's k strongest source rows plus its error row, kept in fixed-width buffers."""

    def __init__(self, n_src: int, n_tgt: int, top_k: int | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.n_src, self.n_tgt, self.top_k = n_src, n_tgt, top_k
        if top_k is None:
            self.dense = torch.zeros(n_tgt, n_src + 1, device=device, dtype=dtype)
        else:
            self.k = min(top_k, n_src)
            self.rows = torch.zeros(n_tgt, self.k + 1, dtype=torch.long, device=device)
            self.values = torch.zeros(n_tgt, self.k + 1, device=device, dtype=dtype)

    def add(self, col: Tensor, rows: Tensor, err: Tensor) -> None:
        if self.top_k is None:
            self.dense.index_add_(0, col, torch.cat([rows, err[:, None]], dim=1))
            return
        # In token granularity every target pair is its own column: plain assignment.
        strongest = rows.abs().topk(self.k, dim=1).indices
        self.rows[col, : self.k] = strongest
        self.rows[col, self.k] = self.n_src
        self.values[col, : self.k] = rows.gather(1, strongest)
        self.values[col, self.k] = err

    def result(self) -> Tensor:
        if self.top_k is None:
            return self.dense.T.contiguous()
        cols = torch.arange(self.n_tgt, device=self.rows.device)[:, None].expand_as(self.rows)
        nonzero = self.values != 0
        index = torch.stack([self.rows[nonzero], cols[nonzero]])
        return torch.sparse_coo_tensor(index, self.values[nonzero], (self.n_src + 1, self.n_tgt),
                                       check_invariants=False).coalesce()  # built in range
