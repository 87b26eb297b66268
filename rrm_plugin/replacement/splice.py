"""Residual-replacement hook mode: SAEs spliced into a host model through its own hook points.

While spliced, the host hook point `H` (e.g. `blocks.3.hook_resid_post`) gets child hook points of
the host's own `HookPoint` class, named as in SAELens (`H.hook_sae_input`, `H.hook_sae_acts_pre`,
`H.hook_sae_acts_post`, `H.hook_sae_recons`, `H.hook_sae_error`, `H.hook_sae_output`), so they
appear in the host's `hook_dict`, `run_with_hooks` and `run_with_cache`. A forward hook on `H`
(prepended, so users' hooks on `H` see the spliced stream) replaces its output by the SAE
reconstruction, plus the error when it is kept. The SAE's own encode/decode do the maths; its
internal hook points relay to the host's. Everything is undone on exit, also on exceptions.

As in SAELens, the error term is computed without gradient: it is a constant (a leaf).

An SAE trained on some token positions only (SAELens's `seqpos_slice`, e.g. a class-token SAE)
has its latents zeroed at the other positions; there the stream is carried by the error term,
which is kept there even when `keep_error=False`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.errors import RRMUserError, UnknownNameError
from rrm_plugin.hosts.prisma import input_check_for
from rrm_plugin.saes.positions import covers_every_position, sae_positions

SAE_HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)
# Hook points fired inside SAE encode/decode; a hook on any of them may change the reconstruction.
_RELAYED = SAE_HOOK_NAMES[:4]


class _Relay:
    """Routes one SAELens-internal hook point through the host's hook point of the same name.

    For an SAE that covers only some token positions (`seqpos_slice`), the relay of the latents
    zeroes them elsewhere, so those positions are reconstructed from no feature at all.
    """

    def __init__(self, host_hook: nn.Module, positions: slice | None = None) -> None:
        self.host_hook = host_hook
        self.positions = positions
        self.active = True

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if self.positions is not None:
            output = output * _mask_like(output, self.positions).unsqueeze(-1)
        return self.host_hook(output) if self.active else output


def _mask_like(x: Tensor, positions: slice) -> Tensor:
    """`[pos]` mask (x's dtype) of the covered positions; the token axis is x's second last."""
    mask = torch.zeros(x.shape[-2], dtype=x.dtype, device=x.device)
    mask[positions] = 1
    return mask


@dataclass
class _Splice:
    sae: SAE
    keep_error: bool
    host_hooks: dict[str, nn.Module]
    relays: list[_Relay]
    positions: slice | None = None
    """Covered token positions, None for all; elsewhere the error is kept even if dropped."""
    fixed_error: Tensor | None = None
    """The error term to use instead of x minus the clean reconstruction (`splice_saes`)."""

    def has_user_hooks(self) -> bool:
        return any(getattr(self.host_hooks[n], "fwd_hooks", None) for n in _RELAYED)

    def set_relay(self, active: bool) -> None:
        for relay in self.relays:
            relay.active = active

    def __call__(self, module: nn.Module, args: tuple, x: Tensor) -> Tensor:
        if x.shape[-1] != self.sae.cfg.d_in:
            raise RRMUserError(
                f"activation at {module.name or 'hook'} has width {x.shape[-1]}, but the SAE "
                f"spliced there has d_in={self.sae.cfg.d_in}"
            )
        sae = self.sae
        if self.fixed_error is not None:
            try:
                raw_error = self.fixed_error.detach().expand_as(x)
            except RuntimeError as e:
                raise RRMUserError(
                    f"fixed error at {module.name or 'hook'} has shape "
                    f"{list(self.fixed_error.shape)}, the activation there {list(x.shape)}"
                ) from e
            # The clean reconstruction would only serve the error: one SAE pass, not two.
            recon = sae.decode(sae.encode(x))
        elif self.has_user_hooks():
            # Hooks may edit features: the error must still be that of the clean reconstruction.
            self.set_relay(False)
            with torch.no_grad():
                clean_recon = sae.decode(sae.encode(x))
            self.set_relay(True)
            recon = sae.decode(sae.encode(x))
            raw_error = (x - clean_recon).detach()
        else:
            recon = sae.decode(sae.encode(x))
            raw_error = (x - recon).detach()
        error = self.host_hooks["hook_sae_error"](raw_error)
        if self.keep_error:
            out = recon + error
        elif self.positions is None:
            out = recon
        else:
            out = recon + error * (1 - _mask_like(x, self.positions)).unsqueeze(-1)
        return self.host_hooks["hook_sae_output"](out.to(x.dtype))


def check_sae_for_hook(model: nn.Module, hook_name: str, sae: SAE) -> None:
    """Reject an SAE that cannot sit at `hook_name` of `model`, naming the mismatch."""
    hook_dict = model.hook_dict
    if hook_name not in hook_dict:
        resid = [n for n in hook_dict if "resid" in n]
        raise UnknownNameError(
            f"model has no hook point {hook_name!r}; residual hook points are {resid}"
        )
    meta_hook = getattr(sae.cfg.metadata, "hook_name", None)
    if meta_hook is not None and meta_hook != hook_name:
        raise RRMUserError(
            f"SAE was trained at {meta_hook!r} but is being spliced at {hook_name!r}")
    d_model = getattr(model.cfg, "d_model", None)
    if "resid" in hook_name and d_model is not None and sae.cfg.d_in != d_model:
        raise RRMUserError(
            f"SAE for {hook_name!r} has d_in={sae.cfg.d_in}, but the residual stream there has "
            f"width d_model={d_model}"
        )


@contextmanager
def _attach(model: nn.Module, hook_name: str, sae: SAE, keep_error: bool,
            fixed_error: Tensor | None = None) -> Iterator[None]:
    hook_point = model.hook_dict[hook_name]
    host_cls = type(hook_point)
    host_hooks = {name: host_cls() for name in SAE_HOOK_NAMES}
    clashes = [n for n in SAE_HOOK_NAMES if hasattr(hook_point, n)]
    if clashes:
        raise RuntimeError(f"{hook_name!r} already has SAE hook points {clashes}; nested splice?")
    positions = None if covers_every_position(sae) else sae_positions(sae)
    relays = [_Relay(host_hooks[name], positions if name == "hook_sae_acts_post" else None)
              for name in _RELAYED]
    splice = _Splice(sae, keep_error, host_hooks, relays, positions, fixed_error)
    handles = []
    try:
        for name, module in host_hooks.items():
            hook_point.add_module(name, module)
        for name, relay in zip(_RELAYED, relays, strict=True):
            handles.append(getattr(sae, name).register_forward_hook(relay))
        handles.append(hook_point.register_forward_hook(splice, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name in SAE_HOOK_NAMES:
            if name in hook_point._modules:
                del hook_point._modules[name]


@contextmanager
def splice_saes(
    model: nn.Module,
    saes: Mapping[str, SAE],
    *,
    keep_error: bool = False,
    hook_names: Sequence[str] | None = None,
    fixed_errors: Mapping[str, Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Splice SAEs into `model` for the duration of the block.

    Args:
        model: A ViT-Prisma `HookedViT` or a TransformerLens `HookedRootModule`.
        saes: `{hook_name: SAE}`, e.g. from `load_saes`.
        keep_error: Add each SAE's error back (output equals the clean model), or drop it (the
            pure residual replacement model).
        hook_names: Splice only these hook points (default: all of `saes`).
        fixed_errors: `{hook_name: [batch, pos, d_in]}` error terms used instead of the input
            minus the clean reconstruction, which is then not computed: for runs that know the
            error already (e.g. a hook on `hook_sae_error` replaces it), one SAE pass instead of
            two when hooks edit the latents.

    For a host with an input check (a HookedViT: image size, channels, dtype, finite values), the
    check runs before every forward pass while spliced. Yields the model itself; use its
    `run_with_cache` / `run_with_hooks` as usual.
    """
    chosen = list(saes) if hook_names is None else list(hook_names)
    missing = [h for h in chosen if h not in saes]
    if missing:
        raise UnknownNameError(
            f"no SAE given for hook(s) {missing}; SAEs are available for {list(saes)}")
    for hook_name in chosen:
        check_sae_for_hook(model, hook_name, saes[hook_name])
    with ExitStack() as stack:
        stack.callback(model.setup)  # runs last on exit: hook_dict without the SAE hook points
        for hook_name in chosen:
            stack.enter_context(_attach(model, hook_name, saes[hook_name], keep_error,
                                        (fixed_errors or {}).get(hook_name)))
        check_input = input_check_for(model)
        if check_input is not None:
            handle = model.register_forward_pre_hook(lambda mod, args: check_input(args[0]))
            stack.callback(handle.remove)
        model.setup()
        yield model
